"""Trains one model on one dataset (`python -m train main`): reads MainSettings; writes an MLflow run with params, metrics, artifacts and the model.

The job is a short composition of the named stages in train/job/stages.py. The run records what
it needs to be reproduced: the resolved config, git commit, dataset digest, package versions
and hardware.
"""

from __future__ import annotations

from train.data.spec import LoadedDataset
from train.job.stages import (
    TrainingResult,
    build,
    calibrate,
    check_monitor,
    finish,
    fit,
    load_data,
    log_fit,
    log_model,
    prepare_runtime,
    record_run,
    score_splits,
    tracked_run,
)
from train.settings import MainSettings


def train(
    settings: MainSettings,
    *,
    callbacks: list | tuple = (),
    data: LoadedDataset | None = None,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
) -> TrainingResult:
    """Run one training job end to end and return its run id, model URI and final metrics.

    `callbacks` run after the built-in ones (they see `val_auroc` in the epoch logs): tuning reports
    and prunes trials with them. `data` is a dataset already loaded for these settings (a tuning
    worker loads it once for all its trials). `parent_run_id` makes the run a child run.
    """
    runtime = prepare_runtime(settings)
    data = data or load_data(settings)
    check_monitor(data, settings)
    with tracked_run(settings, runtime, parent_run_id=parent_run_id, experiment_id=experiment_id) as run:
        run_id = run.info.run_id
        record_run(run_id, settings, data, runtime)
        built = build(settings, data, runtime, run_id)
        fitted = fit(built, data, settings, run_id, callbacks)
        metrics = log_fit(fitted, data.splits["train"].count)
        calibration = calibrate(built.model, data, settings)
        test_scores = score_splits(built.model, data, settings, calibration)
        model_info = log_model(built.model, data, settings, calibration)
        return finish(run_id, runtime, model_info.model_uri, settings, {**metrics, **test_scores})


def run(settings: MainSettings) -> int:
    """`python -m train main`."""
    train(settings)
    return 0
