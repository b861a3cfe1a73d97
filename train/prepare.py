"""`python -m train prepare`, the command: reads PrepareSettings, runs the TFRecord writer (train.data.prepare), logs to the MLflow run.

The writer itself lives in `train/data/prepare.py` and knows nothing of settings or tracking; this module
is what sits above it: settings mistakes and unreadable sources become one ConfigError line (exit 2), and
under `mlflow run -e prepare` the manifest and throughput go to the run MLflow started.
"""

from __future__ import annotations

import os
import sys

from serve.common import ConfigError
from train.data.prepare import PrepareResult, prepare
from train.settings import PrepareSettings
from train.tracking import names


def log_to_active_run(result: PrepareResult) -> None:
    """Under `mlflow run -e prepare`, log the manifest and throughput to the run MLflow started."""
    import mlflow

    from train.tracking.experiments import medimg_run

    manifest = result.manifest
    with medimg_run(f"prepare {manifest['dataset']}", run_id=os.environ["MLFLOW_RUN_ID"]):
        mlflow.log_dict(manifest, "prepare/manifest.json")
        mlflow.set_tags(
            {
                names.KIND_TAG: names.KIND_PREPARATION,
                names.DATASET_TAG: manifest["dataset"],
                names.PREPARED_DIR_TAG: str(result.output_dir),
            }
        )
        metrics = {f"prepared_{split}_examples": count for split, count in manifest["counts"].items()}
        metrics.update(
            {
                "prepared_skipped_images": manifest["skipped"]["count"],
                "prepare_seconds": result.seconds,
                "prepare_images_written": result.images_written,
                "prepare_images_per_s": result.images_written / max(result.seconds, 1e-9),
            }
        )
        mlflow.log_metrics(metrics)


def main(config: PrepareSettings) -> int:
    """Entry of `python -m train prepare`: prepare, log to the MLflow run when there is one."""
    try:
        result = prepare(config)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    if os.environ.get("MLFLOW_RUN_ID"):
        log_to_active_run(result)
    sys.stdout.flush()
    return 0
