"""The named stages of a training job, each with typed inputs and a small result: reads settings and data, writes to the active MLflow run.

`train.job.trainer.train` composes them (prepare runtime -> load data -> open run -> record run ->
build model -> fit -> score splits -> log model -> finish); `evaluate`, `tune` and `pipeline`
reuse the ones they need instead of hooking into the whole job. TensorFlow, Keras and MLflow
are imported inside the stages, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from serve.common import ConfigError
from serve.contract import DEFAULT_THRESHOLD, output_columns
from train.data.spec import LoadedDataset, Split
from train.scoring.operating_point import REPORTED_SPECIFICITY
from train.settings import MainSettings
from train.tracking import names
from train.tracking.lineage import DataIdentity

# The validation files whose headers (size, bit depth, modality) go into the monitoring reference, at most.
REFERENCE_HEADER_FILES = 1000


@dataclass
class Runtime:
    """What the machine gave the job: precision, distribution strategy and tags (train.job.hardware), and its start time."""

    setup: Any
    started: float


@dataclass
class BuiltModel:
    """A compiled model and the class weights its fit uses."""

    model: Any
    class_weight: dict[int, float] | None


@dataclass
class FitResult:
    """What fitting gave: the per-epoch history and the restored best epoch (0-based) with its monitored value."""

    history: dict[str, list[float]]
    best_epoch: int
    best_value: float
    epochs_run: int
    seconds: float
    monitor: str = "val_auroc"


@dataclass
class Calibration:
    """What the validation split fixed after fitting: the calibration, each output's decision threshold and
    the monitoring reference (serve.monitoring.ModelReference as a dict)."""

    parameters: dict | None
    thresholds: list[float] | None
    operating_point: str
    reference: dict | None = None


@dataclass
class Predictions:
    """Labels and predicted probabilities [N, outputs] of one split, plus its first images for pictures."""

    labels: np.ndarray
    probabilities: np.ndarray
    images: np.ndarray
    # Mean of each model-input image (0-255), for the monitoring reference.
    mean_intensities: np.ndarray = field(default_factory=lambda: np.zeros((0,)))


@dataclass
class TrainingResult:
    """What `train` returns: the run, its logged model and the numbers it logged at the end."""

    run_id: str
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_runtime(settings: MainSettings) -> Runtime:
    """Check the price settings, choose precision and strategy, seed everything; before any data is read."""
    from aws.cost import estimate_cost_from_environment
    from train.job.hardware import configure

    started = time.perf_counter()
    try:
        # Checked now so that a bad price setting fails before training, not after it.
        estimate_cost_from_environment(0.0)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    setup = configure(settings.precision, settings.jit_compile)
    import keras

    keras.utils.set_random_seed(settings.seed)
    # File-based splits skip undecodable files, so tf.data cannot know their length up front and
    # Keras warns at the end of every epoch; the counts come from the file scan instead.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    return Runtime(setup=setup, started=started)


def load_data(settings: MainSettings) -> LoadedDataset:
    """The dataset of `settings` in train/val/test splits; a dataset too small to train on is a ConfigError."""
    from train.data import load_dataset

    try:
        data = load_dataset(
            settings.dataset,
            data_dir=settings.data_dir or None,
            image_size=settings.image_size,
            seed=settings.seed,
            max_examples=settings.max_examples,
            synthetic_task=settings.synthetic_task,
            validation_fraction=settings.validation_fraction,
            view=settings.view,
            group_pattern=settings.group_pattern,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    counts = split_counts(data)
    if counts.get("train", 0) == 0 or counts.get("val", 0) == 0:
        raise ConfigError(f"dataset {settings.dataset!r} gave too few examples to train and validate: {counts}")
    grouped = f", patients or slides {data.group_counts}" if data.group_counts else ""
    print(
        f"dataset {data.name}: {data.task}, classes {data.class_names}, examples {counts}{grouped}, "
        f"skipped {data.skipped_images} unreadable image(s)",
        flush=True,
    )
    return data


def split_counts(data: LoadedDataset) -> dict[str, int]:
    return {name: split.count for name, split in data.splits.items()}


@contextlib.contextmanager
def tracked_run(
    settings: MainSettings, runtime: Runtime, *, parent_run_id: str | None = None, experiment_id: str | None = None
) -> Iterator[Any]:
    """The MLflow run of the job (a child run when parent_run_id is given); FAILED if the block raises.

    Named `run_name` when given, else `<model>-<dataset>-<first 6 characters of the run id>`.
    """
    import mlflow

    from train.tracking.experiments import medimg_run

    with medimg_run(
        lambda run_id: f"{settings.model}-{settings.dataset}-{run_id[:6]}",
        name=settings.run_name,
        # Under a running parent (the pipeline) the run is a nested child of it.
        nested=mlflow.active_run() is not None,
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        log_system_metrics=runtime.setup.log_system_metrics or None,
    ) as run:
        yield run


def record_run(run_id: str, settings: MainSettings, data: LoadedDataset, runtime: Runtime) -> None:
    """Params, tags, the dataset input and the resolved config: everything needed to reproduce the run."""
    import mlflow

    from train.tracking.provenance import git_state, package_versions
    from train.tracking.resilience import log_new_params

    setup = runtime.setup
    counts = split_counts(data)
    resolved = {
        "task": data.task,
        "num_outputs": data.num_outputs,
        "resolved_precision": setup.precision,
        "train_examples": counts["train"],
        "val_examples": counts["val"],
        "test_examples": counts.get("test", 0),
        "replicas": setup.strategy.num_replicas_in_sync,
        names.RESOLVED_AUGMENTATION_PARAM: augmentation_settings(settings)["name"],
        names.AUGMENTATION_PLACEMENT_PARAM: augmentation_placement_of(data, settings),
        # Patients (or slides) per split when splits keep them whole: counts only, never the keys.
        **{f"{split}_groups": count for split, count in data.group_counts.items()},
    }
    log_new_params(run_id, {**settings.to_dict(), **resolved})
    tags = {
        **DataIdentity.of(data).tags(),
        names.MODEL_FAMILY_TAG: settings.model,
        **git_state(),
        **setup.tags,
    }
    tags.update({names.version_tag(name): value for name, value in package_versions().items()})
    mlflow.set_tags(tags)
    log_dataset(data, settings.seed)
    mlflow.log_metric("data.skipped_images", data.skipped_images)
    if data.skipped_examples:
        mlflow.log_text("\n".join(data.skipped_examples) + "\n", names.SKIPPED_IMAGES_ARTIFACT)
    artifact = {
        "config": settings.to_dict(),
        "resolved": {
            "task": data.task,
            "class_names": list(data.class_names),
            "num_outputs": data.num_outputs,
            "precision": setup.precision,
            "replicas": setup.strategy.num_replicas_in_sync,
            "examples": counts,
            "groups": dict(data.group_counts),
            "augmentation": augmentation_settings(settings),
            "augmentation_placement": augmentation_placement_of(data, settings),
            "dataset_digest": data.digest,
            "dataset_source": data.source,
        },
    }
    mlflow.log_text(yaml.safe_dump(artifact, sort_keys=False), names.RESOLVED_CONFIG_ARTIFACT)


def augmentation_settings(settings: MainSettings) -> dict:
    """What training-time augmentation does in this run (name `none` and no operations when it is off)."""
    from train.data.augment import resolve_augmentation

    policy = resolve_augmentation(settings.augment, settings.dataset)
    if policy is None:
        return {"name": "none", "horizontal_flip": False, "vertical_flip": False, "rotate_90": False}
    return {**policy.to_dict(), "contrast_range": list(policy.contrast_range)}


def augmentation_placement_of(data: LoadedDataset, settings: MainSettings) -> str:
    """Where the input pipeline augments the training split (per_image, per_batch or none), as make_batches decides."""
    from train.data.augment import resolve_augmentation
    from train.data.pipeline import augmentation_placement

    return augmentation_placement(data.splits["train"], resolve_augmentation(settings.augment, settings.dataset))


def log_dataset(data: LoadedDataset, seed: int) -> None:
    """The dataset as the run's MLflow input, with its content digest."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    from train.tracking.resilience import retry_conflicts

    source = CodeDatasetSource(tags={"source": data.source, "dataset": data.name, "seed": str(seed)})
    dataset = MetaDataset(source=source, name=data.name, digest=data.digest[:36])
    # Runs started together on one dataset race to insert its row; the loser retries and links the winner's.
    retry_conflicts(lambda: mlflow.log_input(dataset, context="training"), "log the dataset input")


def build(settings: MainSettings, data: LoadedDataset, runtime: Runtime, run_id: str) -> BuiltModel:
    """Build and compile the model family for the dataset's task, with imbalance handling; log its summary."""
    import mlflow

    from models import build_model
    from train.job.objective import imbalance_settings, loss_and_metrics, make_optimizer
    from train.tracking.resilience import log_new_params

    class_weight, positive_weight, output_bias = imbalance_settings(data)
    with runtime.setup.strategy.scope():
        model = build_model(
            settings.model,
            (settings.image_size, settings.image_size, 3),
            data.num_outputs,
            task=data.task,
            dropout=settings.dropout,
            l2=settings.l2,
            weights=settings.weights_choice,
            trainable_layers=settings.trainable_layers,
            output_bias=output_bias,
            **({"convolutions": settings.convolutions} if settings.model == "small_cnn" else {}),
        )
        loss, metrics = loss_and_metrics(data, positive_weight)
        optimizer = make_optimizer(settings.optimizer, settings.learning_rate)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=runtime.setup.jit_compile)
        # Without a distribution strategy Keras's TensorFlow trainer builds the optimizer inside the first traced
        # training step, and TensorFlow then traces that step a second time; built here, it is traced once.
        model.optimizer.build(model.trainable_variables)
    summary_lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: summary_lines.append(line))
    mlflow.log_text("\n".join(summary_lines) + "\n", names.MODEL_SUMMARY_ARTIFACT)
    trainable = int(sum(np.prod(weight.shape) for weight in model.trainable_weights))
    log_new_params(run_id, {"total_parameters": model.count_params(), "trainable_parameters": trainable})
    return BuiltModel(model=model, class_weight=class_weight)


def batches(split: Split, settings: MainSettings, *, training: bool = False):
    """The batches of one split with the job's batch size (training: shuffled and augmented by the job's policy)."""
    from train.data import make_batches
    from train.data.augment import resolve_augmentation

    augmentation = resolve_augmentation(settings.augment, settings.dataset) if training else None
    return make_batches(
        split, batch_size=settings.batch_size, training=training, augmentation=augmentation, seed=settings.seed
    )


def output_names(data: LoadedDataset) -> list[str]:
    """The names of the model's outputs, as the served answer's probability columns (serve.contract)."""
    return output_columns(data.task, data.class_names)


def check_monitor(data: LoadedDataset, settings: MainSettings) -> None:
    """Fail before fitting when val_auroc cannot be computed every epoch (a class without both label values)."""
    if settings.monitor != "val_auroc":
        return
    split = data.splits["val"]
    positives = np.asarray(split.positives).reshape(-1)
    one_sided = [
        f"{name} ({int(count)} of {split.count} positive)"
        for name, count in zip(output_names(data), positives, strict=True)
        if count == 0 or count == split.count
    ]
    if one_sided:
        raise ConfigError(
            f"val_auroc is undefined on the val split of {data.name} ({split.count} examples): "
            f"{', '.join(one_sided)}; use more validation data (validation_fraction, max_examples) "
            "or monitor=val_loss"
        )


def fit(
    built: BuiltModel, data: LoadedDataset, settings: MainSettings, run_id: str, callbacks: list | tuple = ()
) -> FitResult:
    """Fit with exact validation AUROC, a plateau schedule, early stopping (best epoch restored) and per-epoch logging.

    `callbacks` run after the built-in ones, so they see `val_auroc` in the epoch logs (tuning prunes on it).
    """
    import sys

    import keras

    from train.job.callbacks import EpochLogger, ValidationAuroc
    from train.tracking.resilience import ResilientLogger

    validation = batches(data.splits["val"], settings)
    metrics_logger = ResilientLogger(run_id)
    monitor, mode = settings.monitor, "max" if settings.monitor == "val_auroc" else "min"
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=monitor, mode=mode, patience=settings.patience, restore_best_weights=True, verbose=1
    )
    schedule = keras.callbacks.ReduceLROnPlateau(
        monitor=monitor, mode=mode, factor=0.5, patience=max(1, settings.patience // 2), min_lr=1e-7, verbose=1
    )
    train_count = data.splits["train"].count
    # ValidationAuroc comes first: it adds val_auroc to the logs the others read.
    every_callback = [
        ValidationAuroc(validation, data.task, list(data.class_names)),
        schedule,
        early_stopping,
        EpochLogger(metrics_logger, train_count),
        *callbacks,
    ]
    started = time.perf_counter()
    history = built.model.fit(
        batches(data.splits["train"], settings, training=True),
        validation_data=validation,
        epochs=settings.epochs,
        callbacks=every_callback,
        class_weight=built.class_weight,
        shuffle=False,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds = time.perf_counter() - started
    metrics_logger.flush()
    return FitResult(
        history=history.history,
        best_epoch=int(early_stopping.best_epoch),
        best_value=float(early_stopping.best),
        epochs_run=len(history.history.get("loss", [])),
        seconds=seconds,
        monitor=monitor,
    )


def predict_split(model, split: Split, *, batch_size: int, seed: int, keep_images: int = 0) -> Predictions:
    """Predict every example of a split batch by batch; keep the first `keep_images` images for pictures."""
    from models import batch_predictor
    from train.data import make_batches

    predict = batch_predictor(model)
    labels, probabilities, images, means = [], [], [], []
    kept = 0
    for image_batch, label_batch in make_batches(
        split, batch_size=batch_size, training=False, augmentation=None, seed=seed
    ):
        probabilities.append(np.asarray(predict(image_batch), dtype=np.float64))
        labels.append(np.asarray(label_batch))
        means.append(np.asarray(image_batch, dtype=np.float64).mean(axis=(1, 2, 3)))
        if kept < keep_images:
            images.append(np.asarray(image_batch)[: keep_images - kept])
            kept += len(images[-1])
    outputs = probabilities[0].shape[-1] if probabilities else 1
    return Predictions(
        labels=np.concatenate(labels).reshape(-1, outputs) if labels else np.zeros((0, outputs)),
        probabilities=np.concatenate(probabilities).reshape(-1, outputs) if probabilities else np.zeros((0, outputs)),
        images=np.concatenate(images) if images else np.zeros((0,)),
        mean_intensities=np.concatenate(means) if means else np.zeros((0,)),
    )


def calibrate(model, data: LoadedDataset, settings: MainSettings) -> Calibration:
    """Fit calibration on the validation split, then choose each output's threshold there by the operating point.

    Logs ECE and Brier score before and after calibration, a reliability diagram and the operating points;
    keeps the split's calibrated scores and input statistics as the model's monitoring reference.
    """
    import mlflow

    from serve.calibration import apply_calibration
    from train.scoring.calibration import fit_calibration
    from train.scoring.metrics import choose_threshold, scored_classes

    val = predict_split(model, data.splits["val"], batch_size=settings.batch_size, seed=settings.seed)
    parameters = fit_calibration(val.labels, val.probabilities, data.task)
    calibrated = apply_calibration(val.probabilities, parameters)
    log_calibration(val.labels, val.probabilities, calibrated, data, "val")
    if data.task == "multiclass":
        # The most probable class is the decision; there is no threshold to choose.
        reference = monitoring_reference(val, calibrated, None, data, settings)
        return Calibration(parameters, None, "most probable class", reference)
    scored = scored_classes(val.labels)
    thresholds = [
        choose_threshold(val.labels[:, index], calibrated[:, index], settings.operating_point)
        if scored[index]
        else DEFAULT_THRESHOLD
        for index in range(calibrated.shape[1])
    ]
    mlflow.log_table(
        {
            "class": output_names(data),
            "threshold": thresholds,
            "operating_point": [
                settings.operating_point if flag else f"{DEFAULT_THRESHOLD} (class one-sided in val)" for flag in scored
            ],
        },
        artifact_file=names.OPERATING_POINTS_ARTIFACT,
    )
    reference = monitoring_reference(val, calibrated, thresholds, data, settings)
    return Calibration(parameters, thresholds, settings.operating_point, reference)


def monitoring_reference(val: Predictions, calibrated, thresholds, data: LoadedDataset, settings: MainSettings) -> dict:
    """The validation split as serve.monitoring's reference, also logged on the active run (see reference_of)."""
    import mlflow

    reference = reference_of(val, calibrated, thresholds, data, settings)
    mlflow.log_dict(reference, names.MONITORING_REFERENCE_ARTIFACT)
    return reference


def reference_of(val: Predictions, calibrated, thresholds, data: LoadedDataset, settings: MainSettings) -> dict:
    """serve.monitoring.ModelReference of the validation split, as a dict: calibrated scores per output, positive
    shares at the thresholds, the mean intensity of every model input and, when the split was read from files,
    the header facts (size, bit depth, modality) of up to REFERENCE_HEADER_FILES of them."""
    from serve.monitoring import ImageStats, ModelReference, header_statistics

    stats = [ImageStats(mean_intensity=float(value)) for value in val.mean_intensities]
    paths = data.splits["val"].paths or []
    # Evenly spaced files: a large split costs a bounded number of header reads.
    for index in np.unique(np.linspace(0, len(paths) - 1, min(len(paths), REFERENCE_HEADER_FILES)).astype(int)):
        try:
            with open(paths[index], "rb") as handle:
                stats.append(header_statistics(handle.read()))
        except OSError:
            continue
    return ModelReference.build(
        calibrated,
        task=data.task,
        outputs=output_names(data),
        thresholds=thresholds,
        image_size=settings.image_size,
        image_stats=stats,
    ).to_dict()


def log_calibration(labels, raw, calibrated, data: LoadedDataset, split: str) -> dict[str, float]:
    """ECE and Brier score of a split before (`_uncalibrated`) and after calibration, and its reliability diagram."""
    import mlflow

    from train.scoring.figures import close_figures, reliability_figure
    from train.scoring.metrics import calibration_scores

    scores = {f"{split}_{key}_uncalibrated": value for key, value in calibration_scores(labels, raw, data.task).items()}
    scores.update({f"{split}_{key}": value for key, value in calibration_scores(labels, calibrated, data.task).items()})
    mlflow.log_metrics(scores)
    mlflow.log_figure(
        reliability_figure(labels, raw, calibrated, data.task, output_names(data), split),
        names.reliability_artifact(split),
    )
    close_figures()
    return scores


@dataclass
class SplitScores:
    """Every number of one scored split (keys <split>_*) and its per-class and per-subgroup tables."""

    metrics: dict[str, float]
    classes: dict[str, list]
    subgroups: dict[str, list] = field(default_factory=dict)


def score_predictions(
    labels: np.ndarray,
    raw: np.ndarray,
    probabilities: np.ndarray,
    thresholds,
    data: LoadedDataset,
    split_name: str,
    *,
    seed: int,
    specificity: float = REPORTED_SPECIFICITY,
) -> SplitScores:
    """Score calibrated probabilities of one split at the decision thresholds; computes, logs nothing.

    AUROC per class and mean over the classes the split can score, each with a 95% bootstrap interval
    (resampling patients when the split knows them); accuracy, sensitivity, specificity, PPV, NPV and F1
    at the thresholds with intervals; ECE and Brier before (`_uncalibrated`) and after calibration; mean
    AUROC per subgroup of the split's metadata with the best-worst gap.
    """
    from train.scoring.metrics import calibration_scores, classification_metrics, subgroup_table, uncertainty

    split = data.splits[split_name]
    names = list(data.class_names)
    metrics = classification_metrics(
        labels, probabilities, data.task, names, threshold=thresholds, specificity=specificity
    )
    intervals, classes = uncertainty(
        labels, probabilities, data.task, names, thresholds=thresholds, groups=split.groups, seed=seed
    )
    metrics.update(intervals)
    metrics.update({f"{key}_uncalibrated": value for key, value in calibration_scores(labels, raw, data.task).items()})
    metrics.update(calibration_scores(labels, probabilities, data.task))
    metrics["examples"] = float(len(labels))
    subgroups: dict[str, list] = {}
    if split.metadata:
        subgroups, gaps = subgroup_table(split.metadata, labels, probabilities, data.task, names, split.groups, seed)
        metrics.update({f"subgroup_auroc_gap_{attribute}": gap for attribute, gap in gaps.items()})
    prefixed = {f"{split_name}_{key}": float(value) for key, value in metrics.items() if np.isfinite(value)}
    return SplitScores(prefixed, classes, subgroups)


def log_scores(scores: SplitScores, labels, raw, probabilities, data: LoadedDataset, split_name: str) -> None:
    """Log a split's metrics, its class and subgroup tables and its reliability diagram on the active run."""
    import mlflow

    from train.scoring.figures import close_figures, reliability_figure

    mlflow.log_metrics(scores.metrics)
    mlflow.log_table(scores.classes, artifact_file=names.classes_artifact(split_name))
    if scores.subgroups:
        mlflow.log_table(scores.subgroups, artifact_file=names.subgroups_artifact(split_name))
    mlflow.log_figure(
        reliability_figure(labels, raw, probabilities, data.task, output_names(data), split_name),
        names.reliability_artifact(split_name),
    )
    close_figures()


def score_splits(model, data: LoadedDataset, settings: MainSettings, calibration: Calibration) -> dict[str, float]:
    """Score and log the test split with calibrated probabilities at the operating points (see score_predictions)."""
    import mlflow

    from serve.calibration import apply_calibration

    split = data.splits.get("test")
    if split is None or split.count == 0:
        return {}
    loss = model.evaluate(batches(split, settings), verbose=0, return_dict=True)["loss"]
    mlflow.log_metric("test_loss", float(loss))
    raw = predict_split(model, split, batch_size=settings.batch_size, seed=settings.seed)
    probabilities = apply_calibration(raw.probabilities, calibration.parameters)
    thresholds = calibration.thresholds if calibration.thresholds is not None else DEFAULT_THRESHOLD
    scores = score_predictions(
        raw.labels, raw.probabilities, probabilities, thresholds, data, "test", seed=settings.seed
    )
    log_scores(scores, raw.labels, raw.probabilities, probabilities, data, "test")
    return {**scores.metrics, "test_loss": float(loss)}


def log_model(model, data: LoadedDataset, settings: MainSettings, calibration: Calibration):
    """Log the model as the serving pyfunc with its calibration and operating points; register it if asked."""
    import mlflow

    from serve.pyfunc import ClassifierConfig, log_classifier
    from train.data import get_dataset_spec

    spec = get_dataset_spec(settings.dataset)
    classifier_config = ClassifierConfig(
        class_names=list(data.class_names),
        task=data.task,
        image_size=settings.image_size,
        thresholds=calibration.thresholds,
        operating_point=calibration.operating_point,
        calibration=calibration.parameters,
        reference=calibration.reference,
        modalities=list(spec.modalities),
        concepts=spec.stored_concepts(list(data.class_names)),
    )
    example_image = next(iter(data.splits["val"].dataset.take(1)))[0].numpy()
    model_info = log_classifier(model, classifier_config, example_image)
    mlflow.set_tag(names.MODEL_URI_TAG, model_info.model_uri)
    if settings.register_as:
        # Registered here rather than by log_model, so that the creation tag lands on the version alone.
        version = mlflow.register_model(
            model_info.model_uri, settings.register_as, tags={names.REGISTERED_BY_TAG: names.REGISTERED_BY_TRAIN}
        )
        model_info.registered_model_version = version.version
    return model_info


def log_fit(fitted: FitResult, train_count: int) -> dict[str, float]:
    """The fit's summary metrics and curves on the run."""
    import mlflow

    from train.scoring.figures import close_figures, curves_figure

    summary = {
        "best_epoch": fitted.best_epoch,
        f"best_{fitted.monitor}": fitted.best_value,
        "epochs_run": fitted.epochs_run,
        "train_time_s": fitted.seconds,
        "train_images_per_s_mean": train_count * fitted.epochs_run / fitted.seconds if fitted.seconds else 0.0,
    }
    # The restored epoch's validation AUROC, when it was defined then, even if val_loss picked the epoch.
    auroc_history = fitted.history.get("val_auroc", [])
    if "best_val_auroc" not in summary and len(auroc_history) > fitted.best_epoch:
        summary["best_val_auroc"] = float(auroc_history[fitted.best_epoch])
    mlflow.log_metrics(summary)
    mlflow.log_figure(curves_figure(fitted.history, fitted.best_epoch), names.TRAINING_CURVES_ARTIFACT)
    close_figures()
    mlflow.log_dict(fitted.history, names.HISTORY_ARTIFACT)
    return summary


def finish(run_id: str, runtime: Runtime, model_uri: str, settings: MainSettings, metrics: dict) -> TrainingResult:
    """Wall time and cost on the run, and one JSON line that names the run and the model."""
    import mlflow

    from aws.cost import estimate_cost_from_environment

    wall_seconds = time.perf_counter() - runtime.started
    final = {"wall_time_s": wall_seconds}
    cost = estimate_cost_from_environment(wall_seconds)
    if cost is not None:
        final["cost_usd"] = cost
    mlflow.log_metrics(final)
    metrics = {**metrics, **final}
    line = {
        "run_id": run_id,
        "best_epoch": int(metrics["best_epoch"]),
        **{key: round(value, 4) for key, value in metrics.items() if key in ("best_val_auroc", "best_val_loss")},
        "model_uri": model_uri,
        "registered_as": settings.register_as or None,
    }
    print(json.dumps(line), flush=True)
    return TrainingResult(run_id=run_id, model_uri=model_uri, metrics=metrics)
