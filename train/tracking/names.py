"""The names medimg gives things in MLflow, defined once: run and model-version tags, artifact paths, registry aliases; reads and writes nothing.

Searches in the MLflow UI and the code that reads runs back (promote, pipeline, evaluate, batch,
the model card) rely on these names; every module that writes or reads one imports it from here.
"""

from __future__ import annotations

from serve.model_uri import CHAMPION_ALIAS

# Registry aliases: served, candidate, rollback target.
CHAMPION = CHAMPION_ALIAS
CHALLENGER = "challenger"
PREVIOUS = "previous"

# What a run is (training runs have no kind tag; every other run of medimg has one of KINDS).
KIND_TAG = "medimg.kind"
KIND_EVALUATION = "evaluation"
KIND_PIPELINE = "pipeline"
KIND_PROMOTION = "promotion"
KIND_BATCH = "batch"
KIND_PREPARATION = "preparation"

# The data a model was trained or scored on: the same-data checks compare these three.
DATASET_TAG = "medimg.dataset"
TASK_TAG = "medimg.task"
DATASET_DIGEST_TAG = "medimg.dataset_digest"
MODEL_FAMILY_TAG = "medimg.model"
# The logged model of a training run (runs:/... or models:/m-...).
MODEL_URI_TAG = "medimg.model_uri"
PREPARED_DIR_TAG = "medimg.prepared_dir"
SPLIT_TAG = "medimg.split"
VERSION_TAG_PREFIX = "medimg.version."
GIT_COMMIT_TAG = "medimg.git_commit"
GIT_DIRTY_TAG = "medimg.git_dirty"
# A mistake in the settings that stopped the command (set on the run `mlflow run` created for it).
CONFIG_ERROR_TAG = "medimg.config_error"
# A failure while the command ran (not a settings mistake).
FAILURE_TAG = "medimg.failure"

# Evaluation and batch runs: the model scored and where it came from.
EVALUATED_MODEL_URI_TAG = "medimg.evaluated_model_uri"
EVALUATED_MODEL_ID_TAG = "medimg.evaluated_model_id"
REGISTERED_MODEL_VERSION_TAG = "medimg.registered_model_version"
SOURCE_RUN_ID_TAG = "medimg.source_run_id"
ALLOW_DIFFERENT_DATA_TAG = "medimg.allow_different_data"
GRADCAM_TAG = "medimg.gradcam"

# Promotion and the pipeline's decision (run tags and model-version tags).
DECISION_TAG = "medimg.decision"
DECISION_REASON_TAG = "medimg.decision_reason"
DECISION_METRIC_TAG = "medimg.decision_metric"
METRIC_TAG_PREFIX = "medimg.metric."
COMPARED_CHAMPION_VERSION_TAG = "medimg.compared_champion_version"
CHAMPION_METRIC_TAG = "medimg.champion_metric"
DIFFERENCE_TAG = "medimg.difference"
P_VALUE_TAG = "medimg.p_value"
COMPARISON_METHOD_TAG = "medimg.comparison_method"
REGISTERED_VERSION_TAG = "medimg.registered_version"
SERVING_IMAGE_TAG = "medimg.serving_image"
SERVING_IMAGE_ID_TAG = "medimg.serving_image_id"
PROMOTION_METRIC_TAG = "medimg.promotion_metric"
PROMOTED_RUN_ID_TAG = "medimg.promoted_run_id"
PROMOTED_VERSION_TAG = "medimg.promoted_version"
PROMOTION_ACTION_TAG = "medimg.promotion_action"
ROLLED_BACK_FROM_TAG = "medimg.rolled_back_from"
# Set when medimg creates a model version (a creation tag, so MLflow's model_version.created webhook carries it):
# which command registered it. A version without it reached the registry by hand (a notebook, mlflow.register_model)
# and `python -m train.release.watch` puts it through the pipeline.
REGISTERED_BY_TAG = "medimg.registered_by"
REGISTERED_BY_PIPELINE = "pipeline"
REGISTERED_BY_PROMOTE = "promote"
REGISTERED_BY_TUNE = "tune"
REGISTERED_BY_TRAIN = "train"

# Tuning.
TUNE_PREFIX = "medimg.tune."
TUNE_ROLE_TAG = "medimg.tune.role"
TUNE_STUDY_NAME_TAG = "medimg.tune.study_name"
TUNE_STORAGE_TAG = "medimg.tune.storage"
TUNE_PARENT_RUN_ID_TAG = "medimg.tune.parent_run_id"
TUNE_TRIAL_TAG = "medimg.tune.trial"
TUNE_WORKER_TAG = "medimg.tune.worker"
TUNE_STATE_TAG = "medimg.tune.state"
TUNE_PRUNED_EPOCH_TAG = "medimg.tune.pruned_epoch"
TUNE_IMPORTANCES_TAG = "medimg.tune.importances"
TUNE_BEST_TRIAL_TAG = "medimg.tune.best_trial"
TUNE_BEST_RUN_ID_TAG = "medimg.tune.best_run_id"
TUNE_BEST_MODEL_URI_TAG = "medimg.tune.best_model_uri"
TUNE_STUDY_TAG = "medimg.tune.study"
TUNE_REGISTERED_TAG = "medimg.tune.registered"

# MLflow's own tags that medimg sets.
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"

# Batch runs: what was scored, resumed and failed (one metric per failure reason), and how fast.
IMAGES_SCORED_METRIC = "images_scored"
IMAGES_RESUMED_METRIC = "images_resumed"
IMAGES_FAILED_METRIC = "images_failed"
IMAGES_PER_S_METRIC = "images_per_s"
BATCH_SECONDS_METRIC = "batch_seconds"
# CPU seconds the local engine's process spent scoring, every thread (bench/batch.py compares it with the CPU bound).
BATCH_CPU_SECONDS_METRIC = "batch_cpu_seconds"
# The scored archive's rows, logged when they are small (train.batch.run.ARTIFACT_LIMIT_BYTES).
BATCH_OUTPUT_ARTIFACT = "batch_output"
# Which engine scored the archive (local or spark) and whether it was back-tested on labels.
BATCH_ENGINE_TAG = "medimg.batch_engine"
BACKTEST_TAG = "medimg.backtest"

# Params a training run resolves beside its settings: the augmentation policy `augment` gives, and where the
# input pipeline applies it (per_image, per_batch or none; train.data.pipeline.augmentation_placement).
RESOLVED_AUGMENTATION_PARAM = "resolved_augmentation"
AUGMENTATION_PLACEMENT_PARAM = "resolved_augmentation_placement"

# Artifacts of a training run.
RESOLVED_CONFIG_ARTIFACT = "config/resolved_config.yaml"
MODEL_SUMMARY_ARTIFACT = "architecture/model_summary.txt"
TRAINING_CURVES_ARTIFACT = "plots/training_curves.png"
HISTORY_ARTIFACT = "metrics/history.json"
OPERATING_POINTS_ARTIFACT = "metrics/operating_points.json"
# The monitoring reference stored in the served model (serve.monitoring.ModelReference), also on the run.
MONITORING_REFERENCE_ARTIFACT = "monitoring/reference.json"
SKIPPED_IMAGES_ARTIFACT = "data/skipped_images.txt"
MODEL_CARD_ARTIFACT = "model_card.md"
SERVING_DOCKERFILE_ARTIFACT = "serving"
COMPARISON_ARTIFACT = "comparison.json"
# Artifacts of an evaluation run.
ROC_ARTIFACT = "plots/roc_curves.png"
CONFUSION_ARTIFACT = "plots/confusion_matrix.png"
CONFUSION_TABLE_ARTIFACT = "metrics/confusion_matrix.json"
SAMPLES_ARTIFACT = "plots/samples.png"
GRADCAM_ARTIFACT = "plots/gradcam.png"
PREDICTIONS_ARTIFACT = "predictions/predictions.csv"


def reliability_artifact(split: str) -> str:
    return f"plots/reliability_{split}.png"


def classes_artifact(split: str) -> str:
    return f"metrics/{split}_classes.json"


def subgroups_artifact(split: str) -> str:
    return f"metrics/{split}_subgroups.json"


def metric_tag(metric: str) -> str:
    """The model-version tag that carries a metric's value (`medimg.metric.test_auroc`)."""
    return f"{METRIC_TAG_PREFIX}{metric}"


def version_tag(package: str) -> str:
    return f"{VERSION_TAG_PREFIX}{package}"


def failed_metric(reason: str) -> str:
    """The batch metric that counts the images that failed for one reason (`images_failed_not_an_image`)."""
    return f"{IMAGES_FAILED_METRIC}_{reason}"


def monitoring_metric(figure: str) -> str:
    """The run metric of a drift figure of serve.monitoring (`monitoring.score_psi_parasitized`)."""
    return f"monitoring.{figure}"
