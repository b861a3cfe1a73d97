"""Picks the best finished training run by a metric and registers its model; reads runs, writes registry versions and aliases.

`python -m train promote --experiment medimg --registered-model chest-classifier` finds the
FINISHED runs of the experiment(s) that logged a model (tag `medimg.model_uri`), keeps only those
trained on the same data as the current champion (dataset name, task and content digest; without a
champion, the newest run's data), and ranks them by a metric: by default the test-set AUROC when every
such run has one, else `best_val_auroc`. It registers the best run's logged model (or reuses the version
that already holds it), tags the version with the metric and its source run, and moves the alias
`champion` to it only when it beats the current champion on that metric (the old champion becomes
`previous`); otherwise the alias `challenger` points at it. `--rollback NAME` moves `champion` back to
`previous`. Registry aliases only, never stages. Running it again with nothing new changes nothing.
The eval-and-deploy flow with a paired test on one frozen test split is `python -m train pipeline`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from serve.common import CommandFailed, ConfigError, first_line
from train.settings import PromoteSettings
from train.tracking import names
from train.tracking.experiments import medimg_run
from train.tracking.lineage import DataIdentity
from train.tracking.names import CHALLENGER, CHAMPION, PREVIOUS

# Without --metric: the first of these that every comparable run has.
AUTOMATIC_METRICS = ("test_mean_auroc", "test_auroc", "best_val_auroc")


@dataclass(frozen=True)
class Candidate:
    run_id: str
    model_uri: str
    value: float
    start_time: int
    # The run's training data (dataset, task, content digest).
    data: DataIdentity = DataIdentity()
    metrics: dict | None = None


@dataclass(frozen=True)
class PromotionResult:
    """What promote did: the chosen run and version, and which alias (if any) it moved."""

    registered_model: str
    metric: str
    run_id: str
    # The chosen run's metric value (None for a rollback, which compares nothing).
    value: float | None
    version: str
    new_version: bool
    # "champion": the alias moved to this version; "challenger": the champion stayed; "unchanged": nothing moved;
    # "rollback": champion moved back to the previous version.
    action: str
    champion_version: str
    champion_value: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def experiment_ids(client, names: list[str]) -> list[str]:
    """IDs of the named experiments; with no names, the active one (MLFLOW_EXPERIMENT_ID/_NAME) or Default."""
    if not names:
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return [os.environ["MLFLOW_EXPERIMENT_ID"]]
        names = [os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"]
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            known = sorted(item.name for item in client.search_experiments(max_results=100))
            raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(known) or 'none'}")
        ids.append(experiment.experiment_id)
    return ids


def is_better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def candidates(client, ids: list[str]) -> list[Candidate]:
    """FINISHED runs that logged a model, with their metrics and training data (value filled in later)."""
    found = []
    page_token = None
    while True:
        page = client.search_runs(
            ids, filter_string="attributes.status = 'FINISHED'", max_results=1000, page_token=page_token
        )
        for run in page:
            model_uri = run.data.tags.get(names.MODEL_URI_TAG, "")
            if model_uri:
                metrics = {key: value for key, value in run.data.metrics.items() if math.isfinite(value)}
                start = int(run.info.start_time or 0)
                data = DataIdentity.from_tags(run.data.tags)
                found.append(Candidate(run.info.run_id, model_uri, math.nan, start, data, metrics))
        page_token = page.token
        if not page_token:
            return found


def comparable(found: list[Candidate], reference: DataIdentity | None) -> list[Candidate]:
    """The candidates trained on the reference data (the champion's, else the newest run's); one line on the rest."""
    if not found:
        return []
    if reference is None:
        reference = max(found, key=lambda candidate: candidate.start_time).data
    kept = [candidate for candidate in found if candidate.data.same_as(reference)]
    excluded = [candidate for candidate in found if not candidate.data.same_as(reference)]
    if excluded:
        kinds = sorted({candidate.data.describe() for candidate in excluded})
        print(
            f"promote compares runs on {reference.describe()} only; excluded {len(excluded)} run(s) trained on "
            f"other data: {', '.join(kinds)}",
            flush=True,
        )
    return kept


def with_metric(found: list[Candidate], metric: str) -> tuple[str, list[Candidate]]:
    """The metric to rank by (given, or the first automatic one all candidates have) and the candidates having it."""
    if not metric:
        metric = next(
            (name for name in AUTOMATIC_METRICS if found and all(name in candidate.metrics for candidate in found)),
            AUTOMATIC_METRICS[-1],
        )
    ranked = [
        Candidate(item.run_id, item.model_uri, float(item.metrics[metric]), item.start_time, item.data, item.metrics)
        for item in found
        if metric in item.metrics
    ]
    return metric, ranked


def best_candidate(found: list[Candidate], mode: str) -> Candidate:
    """The best value; ties go to the earliest run, so repeated promotions choose the same one."""
    sign = -1.0 if mode == "max" else 1.0
    return min(found, key=lambda candidate: (sign * candidate.value, candidate.start_time, candidate.run_id))


def find_or_register(
    client, name: str, candidate: Candidate, registered_by: str = names.REGISTERED_BY_PROMOTE
) -> tuple[Any, bool]:
    """The version of `name` that holds the candidate's model, registering it (tagged with the registering
    command, `registered_by`) when none does."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        existing = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        existing = []
    for version in existing:
        if version.source == candidate.model_uri or (
            getattr(version, "model_id", None) and candidate.model_uri == f"models:/{version.model_id}"
        ):
            return version, False
    version = mlflow.register_model(candidate.model_uri, name, tags={names.REGISTERED_BY_TAG: registered_by})
    if str(version.status) != "READY":
        raise CommandFailed(f"model version {name}/{version.version} is {version.status}, not READY; try again later")
    return version, True


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def champion_value(client, champion, metric: str) -> float | None:
    """The champion's metric, read from its source run (the version tag is a copy for the UI)."""
    from mlflow.exceptions import MlflowException

    if champion.run_id:
        try:
            value = client.get_run(champion.run_id).data.metrics.get(metric)
        except MlflowException:
            value = None
        if value is not None and math.isfinite(value):
            return float(value)
    tagged = champion.tags.get(names.metric_tag(metric)) if champion.tags else None
    try:
        return float(tagged) if tagged is not None else None
    except ValueError:
        return None


def champion_data(client, champion) -> DataIdentity | None:
    """The training data of the current champion's source run (None when there is no champion or no run)."""
    from mlflow.exceptions import MlflowException

    if champion is None or not champion.run_id:
        return None
    try:
        return DataIdentity.from_tags(client.get_run(champion.run_id).data.tags)
    except MlflowException:
        return None


def move_champion(client, name: str, version: str) -> None:
    """Point `champion` at `version`; the version it leaves becomes `previous`, so one command rolls back."""
    champion = current_champion(client, name)
    if champion is not None and str(champion.version) != str(version):
        client.set_registered_model_alias(name, PREVIOUS, champion.version)
    client.set_registered_model_alias(name, CHAMPION, version)


def promote(config: PromoteSettings) -> PromotionResult:
    """Register the best comparable run's model under config.registered_model and move `champion` if it wins."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if config.rollback:
        return rollback(config.rollback)
    client = MlflowClient()
    name = config.registered_model
    champion = current_champion(client, name)
    found = comparable(
        candidates(client, experiment_ids(client, config.experiment_names)), champion_data(client, champion)
    )
    metric, found = with_metric(found, config.metric)
    if not found:
        raise ConfigError(
            f"no FINISHED run with a logged model and metric {metric!r} in experiment(s) "
            f"{config.experiment or 'the active one'}; train one first or pick another metric"
        )
    best = best_candidate(found, config.mode)
    try:
        version, created = find_or_register(client, name, best)
    except MlflowException as error:
        raise CommandFailed(f"cannot register {best.model_uri} as {name!r}: {first_line(error.message)}") from None
    tags = {
        names.SOURCE_RUN_ID_TAG: best.run_id,
        names.PROMOTION_METRIC_TAG: metric,
        names.metric_tag(metric): repr(best.value),
        names.DATASET_DIGEST_TAG: best.data.digest,
    }
    for key, value in tags.items():
        if value and (version.tags or {}).get(key) != value:
            client.set_model_version_tag(name, version.version, key, value)
    action, champion_version, value_of_champion = decide(
        client, name, version, champion, best.value, metric, config.mode
    )
    result = PromotionResult(
        registered_model=name,
        metric=metric,
        run_id=best.run_id,
        value=best.value,
        version=str(version.version),
        new_version=created,
        action=action,
        champion_version=str(champion_version),
        champion_value=value_of_champion,
    )
    print(json.dumps(result.to_dict()), flush=True)
    log_to_active_run(result)
    return result


def decide(client, name: str, version, champion, best_value: float, metric: str, mode: str):
    """Move `champion` when the version wins, else point `challenger` at it; return (action, champion version, its value)."""
    # Version search results leave `aliases` empty; the registered model lists them (alias -> version).
    aliases = {alias: str(number) for alias, number in client.get_registered_model(name).aliases.items()}
    is_challenger = aliases.get(CHALLENGER) == str(version.version)
    if champion is not None and str(champion.version) == str(version.version):
        return "unchanged", champion.version, best_value
    value_of_champion = champion_value(client, champion, metric) if champion is not None else None
    if champion is None or (value_of_champion is not None and is_better(best_value, value_of_champion, mode)):
        move_champion(client, name, version.version)
        if is_challenger:
            client.delete_registered_model_alias(name, CHALLENGER)
        return CHAMPION, version.version, value_of_champion
    if value_of_champion is None:
        print(
            f"champion {name}/{champion.version} has no {metric}; it stays champion. Move the alias "
            f"yourself if version {version.version} should replace it.",
            file=sys.stderr,
        )
    if is_challenger:
        return "unchanged", champion.version, value_of_champion
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return CHALLENGER, champion.version, value_of_champion


def rollback(name: str) -> PromotionResult:
    """Move `champion` back to `previous`; the demoted version becomes `previous`, so a second rollback undoes it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        previous = client.get_model_version_by_alias(name, PREVIOUS)
    except MlflowException:
        raise ConfigError(
            f"registered model {name!r} has no @previous version to roll back to; it gets one when a champion is replaced"
        ) from None
    champion = current_champion(client, name)
    move_champion(client, name, previous.version)
    client.set_model_version_tag(
        name, previous.version, names.ROLLED_BACK_FROM_TAG, str(getattr(champion, "version", ""))
    )
    result = PromotionResult(
        registered_model=name,
        metric="",
        run_id=previous.run_id or "",
        value=None,
        version=str(previous.version),
        new_version=False,
        action="rollback",
        champion_version=str(previous.version),
        champion_value=None,
    )
    print(json.dumps(result.to_dict()), flush=True)
    log_to_active_run(result)
    return result


def log_to_active_run(result: PromotionResult) -> None:
    """Under `mlflow run -e promote` MLflow made a run for this command; record the decision on it and name it."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    import mlflow

    with medimg_run(f"promote {result.registered_model}", run_id=os.environ["MLFLOW_RUN_ID"]):
        mlflow.set_tags(
            {
                names.KIND_TAG: names.KIND_PROMOTION,
                names.PROMOTED_RUN_ID_TAG: result.run_id,
                names.PROMOTED_VERSION_TAG: f"{result.registered_model}/{result.version}",
                names.PROMOTION_ACTION_TAG: result.action,
            }
        )


def run(settings: PromoteSettings) -> int:
    """`python -m train promote`."""
    promote(settings)
    return 0
