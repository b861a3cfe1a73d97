"""Where medimg's runs land and what they are called: marks experiments as model training, names runs, prints the UI links; writes experiment tags and run names.

    python -m train.tracking.experiments --ui http://127.0.0.1:5000 [--experiment medimg-demo]

prints the address of each experiment's runs table in the MLflow UI (of the tracking store in effect).

MLflow 3 opens an experiment without a kind in its GenAI workspace (traces, token usage); medimg's
experiments are model training (`mlflow.experimentKind = custom_model_development`), which opens them
on the runs table. A kind a user set is kept. Runs get names a person can compare instead of MLflow's
generated adjective-animal names; a name the user gave (`run_name`, `mlflow run --run-name`) wins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from train.tracking.names import RUN_NAME_TAG

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# The UI's route to an experiment's runs table in the model-training view.
RUNS_ROUTE = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def mark_model_training(experiment_id: str, client=None) -> bool:
    """Tag the experiment as model training unless it has a kind already; True when this call set it.

    Runs that start together in a new experiment race to insert the tag (MLflow's store looks for the row, then
    inserts it); a loser's insert violates the tag's key, and its retry finds the winner's kind and keeps it.
    """
    from train.tracking.resilience import retry_conflicts

    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()

    def mark() -> bool:
        experiment = client.get_experiment(experiment_id)
        if experiment is None or (experiment.tags or {}).get(EXPERIMENT_KIND_TAG):
            return False
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return True

    return retry_conflicts(mark, "mark the experiment as model training")


def runs_link(ui_url: str, experiment_id: str) -> str:
    """The address of the experiment's runs table in the model-training view of the MLflow UI at `ui_url`."""
    return ui_url.rstrip("/") + "/" + RUNS_ROUTE.format(experiment_id=experiment_id)


def is_generated_name(name: str | None) -> bool:
    """Whether a run name is one MLflow made up (predicate-noun-number, cut to 20 characters)."""
    from mlflow.utils.name_utils import _GENERATOR_NOUNS, _GENERATOR_PREDICATES

    parts = (name or "").split("-")
    if len(parts) not in (2, 3) or parts[0] not in {word.lower() for word in _GENERATOR_PREDICATES}:
        return False
    nouns = [word.lower() for word in _GENERATOR_NOUNS]
    if len(parts) == 2:
        return any(noun.startswith(parts[1]) for noun in nouns) and len(name) == 20
    return parts[1] in nouns and parts[2].isdigit()


@contextlib.contextmanager
def medimg_run(
    default_name: str | Callable[[str], str] | None, *, name: str = "", nested: bool = False, **start_arguments: Any
) -> Iterator[Any]:
    """`mlflow.start_run` for medimg: the experiment is marked as model training and the run gets a name.

    `name` (the user's) always wins; otherwise `default_name` (a text, or a function of the run id) names a
    new run, and a run `mlflow run` created with a generated name. Nested under an active run when `nested`.
    """
    import mlflow

    with mlflow.start_run(run_name=name or None, nested=nested, **start_arguments) as run:
        mark_model_training(run.info.experiment_id)
        chosen = name or (default_name(run.info.run_id) if callable(default_name) else default_name)
        current = run.info.run_name
        if name or (chosen and (not current or is_generated_name(current))):
            mlflow.set_tag(RUN_NAME_TAG, chosen)
        yield run


def experiment_links(ui_url: str, experiment: str = "", client=None) -> list[tuple[str, str]]:
    """(experiment name, runs-table link) of `experiment`, or of every experiment with a run, newest first."""
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
    if experiment:
        found = client.get_experiment_by_name(experiment)
        experiments = [found] if found is not None else []
    else:
        experiments = [
            item
            for item in client.search_experiments(order_by=["last_update_time DESC"])
            if client.search_runs([item.experiment_id], max_results=1)
        ]
    return [(item.name, runs_link(ui_url, item.experiment_id)) for item in experiments]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m train.tracking.experiments", description=__doc__.splitlines()[0])
    parser.add_argument("--ui", required=True, help="address of the MLflow UI, e.g. http://127.0.0.1:5000")
    parser.add_argument("--experiment", default="", help="one experiment by name (default: every one with runs)")
    arguments = parser.parse_args(argv)
    links = experiment_links(arguments.ui, arguments.experiment)
    if not links:
        what = f"experiment {arguments.experiment!r}" if arguments.experiment else "any experiment with runs"
        print(f"the tracking store has no {what} yet; run `make demo` first", file=sys.stderr)
        return 1
    for name, link in links:
        print(f"{name}: {link}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
