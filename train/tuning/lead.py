"""Hyperparameter search (`python -m train tune`): reads a search-space YAML and an Optuna storage; writes a parent MLflow run whose children are the trials.

The lead process creates (or joins) the Optuna study, opens the parent run and
starts `n_workers` worker processes (`python -m train tune-worker`, see
train/tuning/worker.py). Each worker loads the study by name from the shared
storage and runs trials until the study holds `n_trials` trials, so workers on
other machines can join the same study through a PostgreSQL storage. When the
workers are done, the lead logs the best value and parameters, the optimisation
history, the parameter importances and, if asked, registers the best model.

This module imports neither TensorFlow nor Optuna at module level, so the
command line and its validation stay fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import yaml

from serve.common import ConfigError
from train.data import DEFAULT_DATASET
from train.settings import TuneSettings
from train.tracking import names
from train.tracking.experiments import medimg_run
from train.tuning.processes import interrupt_on_sigterm, run_workers, worker_settings
from train.tuning.report import TuningFailed, register_best, summarize
from train.tuning.space import SearchSpace
from train.tuning.study import (
    EXPERIMENT_ATTR,
    PARENT_RUN_ATTR,
    SPACE_ATTR,
    _comparable_space,
    lead_heartbeat,
    lead_is_alive,
    open_storage,
    open_study,
    redact_url,
    resolve_storage_url,
    started_trial_count,
    wait_for_running_trials,
)


def _parent_status(parent_run_id: str, study_name: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_run(parent_run_id).info.status
    except MlflowException:
        raise ConfigError(
            f"study {study_name!r} belongs to MLflow run {parent_run_id}, which the tracking store "
            f"{mlflow.get_tracking_uri()} does not know; set MLFLOW_TRACKING_URI to the server the study started with"
        ) from None


def trial_budget(options: TuneSettings, space: SearchSpace) -> int:
    """The number of trials to run: n_trials, or the grid's size when the grid sampler has fewer points."""
    n_trials = options.n_trials
    if options.sampler == "grid":
        grid_size = space.grid_size()
        if n_trials > grid_size:
            print(f"the grid has {grid_size} points; running {grid_size} trials instead of {n_trials}", flush=True)
            n_trials = grid_size
    return n_trials


def record_parent(run_id: str, options: TuneSettings, space: SearchSpace, study, storage_url: str, n_trials: int):
    """Tags, params and the search space on the parent run; the study remembers the run and the space."""
    import mlflow

    from train.tracking.resilience import log_new_params

    mlflow.set_tags(
        {
            names.TUNE_ROLE_TAG: "parent",
            names.TUNE_STUDY_NAME_TAG: study.study_name,
            names.TUNE_STORAGE_TAG: redact_url(storage_url),
            names.DATASET_TAG: str(space.fixed.get("dataset", DEFAULT_DATASET)),
        }
    )
    log_new_params(
        run_id,
        {
            **options.to_dict(),
            # The password stays out of the run; MLflow shows params to everyone who can see the run.
            "storage": redact_url(storage_url),
            "n_trials": n_trials,
            "study_name": study.study_name,
            "metric": space.metric,
            "direction": space.direction,
            **{f"fixed.{key}": value for key, value in space.fixed.items()},
        },
    )
    mlflow.log_text(yaml.safe_dump(space.to_dict(), sort_keys=False), "tuning/search_space.yaml")
    study.set_user_attr(PARENT_RUN_ATTR, run_id)
    study.set_user_attr(EXPERIMENT_ATTR, mlflow.get_run(run_id).info.experiment_id)
    study.set_user_attr(SPACE_ATTR, _comparable_space(space))
    if not study.get_trials(deepcopy=False):
        for params in space.first_trials[:n_trials]:
            study.enqueue_trial(params)


def run_own_workers(options: TuneSettings, study, storage_url: str, n_trials: int, run, started: float) -> None:
    """Start this machine's workers for the trials the study still lacks, seeded per worker."""
    started_trials = started_trial_count(study)
    if started_trials >= n_trials:
        print(f"study {study.study_name!r} already has {started_trials} trials; summarising only", flush=True)
        return
    workers = worker_settings(
        options,
        storage_url=storage_url,
        study_name=study.study_name,
        n_trials=n_trials,
        parent_run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        seeded=True,
        started=started,
        # More workers than trials left would only import TensorFlow to find nothing to do.
        count=min(options.n_workers, n_trials - started_trials),
    )
    for worker, code in zip(workers, run_workers(workers), strict=True):
        if code != 0:
            print(f"worker {worker.worker_index} exited with code {code}; see its output above", flush=True)


def take_over_or_join(options: TuneSettings, study, storage_url: str, n_trials: int, started: float):
    """Join the study's running lead (an outcome dict), take over from a dead one, or return None for a new study."""
    import mlflow

    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent_run_id or _parent_status(parent_run_id, study.study_name) != "RUNNING":
        return None
    if lead_is_alive(study):
        return _join(options, study, storage_url, n_trials, parent_run_id, started)
    print(
        f"the lead of study {study.study_name!r} stopped without summing up; this command takes over with a new "
        f"parent run and marks run {parent_run_id} KILLED",
        flush=True,
    )
    mlflow.MlflowClient().set_terminated(parent_run_id, status="KILLED")
    return None


def tune(options: TuneSettings) -> dict[str, Any]:
    """Run the search: create or join the study, run the workers, summarise on the parent run; return the outcome."""
    started = time.monotonic()
    space = SearchSpace.load(options.space, data_dir=options.data_dir)
    n_trials = trial_budget(options, space)
    storage_url = resolve_storage_url(options.storage)
    if storage_url.startswith("sqlite") and options.n_workers > 1:
        print(
            "note: SQLite lets one worker write at a time; for many workers or machines use a PostgreSQL "
            "storage (postgresql+psycopg2://...), see docs/TUNING.md",
            flush=True,
        )

    study_name = options.study_name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    study = open_study(open_storage(storage_url), study_name, space)
    joined = take_over_or_join(options, study, storage_url, n_trials, started)
    if joined is not None:
        return joined
    print(f"study {study_name!r} in {redact_url(storage_url)}: {n_trials} trials", flush=True)
    # A continued study stays in its experiment unless the environment (or `mlflow run`) chooses one.
    chosen = any(os.environ.get(name) for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"))
    experiment_id = None if chosen else study.user_attrs.get(EXPERIMENT_ATTR)
    with medimg_run(f"tune-{study_name}", experiment_id=experiment_id) as run, lead_heartbeat(study):
        record_parent(run.info.run_id, options, space, study, storage_url, n_trials)
        run_own_workers(options, study, storage_url, n_trials, run, started)
        wait_for_running_trials(study)
        best = summarize(study, space, run.info.run_id)
        if best is None:
            raise TuningFailed(
                f"study {study_name!r} has no completed trial; see the worker output and the failed child runs"
            )
        registered = register_best(best, options.register_best_as, study_name) if options.register_best_as else None
    outcome = {
        "parent_run_id": run.info.run_id,
        "study_name": study_name,
        f"best_{space.metric}": round(best["value"], 4),
        "best_params": best["params"],
        "best_trial": best["trial"],
        "best_run_id": best["run_id"],
        "registered_as": f"{options.register_best_as}/{registered}" if registered else None,
    }
    print(json.dumps(outcome), flush=True)
    return outcome


def _join(options: TuneSettings, study, storage_url: str, n_trials: int, parent_run_id: str, started: float):
    """Add this machine's workers to a study whose lead is still running; their trials become its children."""
    import mlflow

    left = n_trials - started_trial_count(study)
    if left <= 0:
        print(f"study {study.study_name!r} already has its {n_trials} trials; nothing to join", flush=True)
        return {"parent_run_id": parent_run_id, "study_name": study.study_name, "joined": False}
    count = min(options.n_workers, left)
    print(
        f"joining study {study.study_name!r}: its lead run {parent_run_id} is still running and sums up; "
        f"{count} worker(s) here add child runs to it",
        flush=True,
    )
    # `mlflow run` opened a run for this command; it records that it only added workers.
    joined_name = f"tune-{study.study_name} (joined)"
    own_run = medimg_run(joined_name) if os.environ.get("MLFLOW_RUN_ID") else contextlib.nullcontext()
    with own_run:
        if os.environ.get("MLFLOW_RUN_ID"):
            mlflow.set_tags({names.TUNE_ROLE_TAG: "joined", names.TUNE_PARENT_RUN_ID_TAG: parent_run_id})
        workers = worker_settings(
            options,
            storage_url=storage_url,
            study_name=study.study_name,
            n_trials=n_trials,
            parent_run_id=parent_run_id,
            experiment_id=str(study.user_attrs.get(EXPERIMENT_ATTR, "")),
            # Unseeded: a joining machine would otherwise replay the lead's first samples.
            seeded=False,
            started=started,
            count=count,
        )
        codes = run_workers(workers)
    outcome = {"parent_run_id": parent_run_id, "study_name": study.study_name, "joined": True, "exit_codes": codes}
    print(json.dumps(outcome), flush=True)
    return outcome


def run(options: TuneSettings) -> int:
    """`python -m train tune`: ConfigError propagates (exit 2); a search without a usable result exits 1."""
    # Validate the search space before anything heavy is imported.
    space = SearchSpace.load(options.space, data_dir=options.data_dir)
    if options.sampler == "grid":
        space.grid()
    # A lead stopped with SIGTERM (a scheduler, `kill`) stops its workers too instead of orphaning them.
    interrupt_on_sigterm()
    try:
        tune(options)
    except TuningFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; running trials are marked FAIL and their runs FAILED", file=sys.stderr)
        return 130
    return 0
