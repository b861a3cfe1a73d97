"""Trains one model on one dataset from a TrainConfig; writes an MLflow run (params, metrics, artifacts, model).

The run records what it needs to be reproduced: the resolved config, git
commit, dataset digest, package versions and hardware.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from train.config import ConfigError, TrainConfig

logger = logging.getLogger("medimg.train")

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_state() -> dict[str, str]:
    """Commit and dirtiness of the repository the code runs from, when it is a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        # Inside the Docker image there is no .git; the build records the commit instead.
        commit = os.environ.get("MEDIMG_GIT_COMMIT", "")
        return {"medimg.git_commit": commit} if commit and commit != "unknown" else {}
    return {"medimg.git_commit": commit, "medimg.git_dirty": str(bool(dirty)).lower()}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "mlflow", "numpy", "tensorflow-datasets", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def imbalance_settings(data) -> tuple[dict | None, np.ndarray | None, list[float]]:
    """Class weights (binary, multiclass), positive weights (multilabel) and the initial output bias.

    The bias starts the output at the training prevalence, so early epochs do
    not spend their updates learning the base rate (Karpathy's "init well").
    """
    train = data.splits["train"]
    count = max(train.count, 1)
    positives = np.asarray(train.positives, dtype=np.float64)
    if data.task == "binary":
        positive = float(np.clip(positives[0], 1, count - 1)) if count > 1 else 1.0
        rate = positive / count
        class_weight = {0: count / (2.0 * (count - positive)), 1: count / (2.0 * positive)}
        return class_weight, None, [float(np.log(rate / (1.0 - rate)))]
    if data.task == "multiclass":
        counts = np.clip(positives, 1, None)
        class_weight = {index: float(count / (len(counts) * c)) for index, c in enumerate(counts)}
        return class_weight, None, [float(v) for v in np.log(counts / counts.sum())]
    rates = np.clip(positives, 1, count - 1) / count
    positive_weight = np.clip((1.0 - rates) / rates, 1.0, 100.0)
    return None, positive_weight.astype(np.float32), [float(v) for v in np.log(rates / (1.0 - rates))]


def weighted_binary_crossentropy(positive_weight: np.ndarray):
    """Binary cross-entropy whose positive terms are scaled per class (multi-label imbalance)."""
    import keras
    from keras import ops

    weight = ops.convert_to_tensor(positive_weight, dtype="float32")

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), keras.config.epsilon(), 1.0 - keras.config.epsilon())
        terms = weight * y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred)
        return -ops.mean(terms, axis=-1)

    loss.__name__ = "weighted_binary_crossentropy"
    return loss


def make_optimizer(config: TrainConfig):
    import keras

    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=config.learning_rate)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=config.learning_rate, weight_decay=1e-4)
    if config.optimizer == "nadam":
        return keras.optimizers.Nadam(learning_rate=config.learning_rate)
    return keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=0.9, nesterov=True)


def loss_and_metrics(data, positive_weight):
    import keras

    if data.task == "binary":
        metrics = [
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.BinaryAccuracy(name="accuracy"),
        ]
        return keras.losses.BinaryCrossentropy(), metrics
    if data.task == "multiclass":
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
        return keras.losses.CategoricalCrossentropy(), metrics
    metrics = [
        keras.metrics.AUC(name="auc", multi_label=True, num_labels=data.num_outputs),
        keras.metrics.BinaryAccuracy(name="accuracy"),
    ]
    return weighted_binary_crossentropy(positive_weight), metrics


def curves_figure(history: dict[str, list[float]], best_epoch: int):
    """Training curves: loss, AUROC and the other metrics, train against validation, best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["loss", "auroc", "auc", "accuracy", "precision", "recall"]
    panels = [name for name in names if name in history or f"val_{name}" in history]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, panels, strict=False):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            if key in history:
                epochs = np.arange(1, len(history[key]) + 1)
                axis.plot(epochs, history[key], style, marker="o", label=key)
        axis.axvline(best_epoch + 1, color="grey", linewidth=0.8, linestyle=":")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(f"training curves (best epoch {best_epoch + 1})")
    figure.tight_layout()
    return figure


def matplotlib_close(figure) -> None:
    """Free a logged figure; pyplot keeps every open figure alive otherwise."""
    import matplotlib.pyplot as plt

    plt.close(figure)


def encode_png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def log_dataset(data, config: TrainConfig) -> None:
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    from train.tracking import retry_conflicts

    source = CodeDatasetSource(tags={"source": data.source, "dataset": data.name, "seed": str(config.seed)})
    dataset = MetaDataset(source=source, name=data.name, digest=data.digest[:36])
    # Runs started together on one dataset race to insert its row; the loser retries and links the winner's.
    retry_conflicts(lambda: mlflow.log_input(dataset, context="training"), "log the dataset input")


def log_model(model, data, config: TrainConfig, example_image: np.ndarray, workdir: Path):
    """Log the Keras model wrapped in the serving pyfunc, with signature and input example; register it if asked."""
    import mlflow
    import pandas as pd

    from serve.pyfunc import (
        CONFIG_ARTIFACT,
        MODEL_ARTIFACT,
        MODEL_CODE_PATH,
        ClassifierConfig,
        classifier_signature,
        serving_requirements,
    )

    model_path = workdir / "model.keras"
    model.save(model_path)
    classifier_config = ClassifierConfig(
        class_names=list(data.class_names), task=data.task, image_size=config.image_size
    )
    config_path = workdir / "classifier.json"
    classifier_config.save(str(config_path))
    signature = classifier_signature(classifier_config)
    input_example = pd.DataFrame({"image": [encode_png(example_image)]})
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE_PATH),
        artifacts={MODEL_ARTIFACT: str(model_path), CONFIG_ARTIFACT: str(config_path)},
        code_paths=[str(REPO_ROOT / "serve"), str(REPO_ROOT / "models")],
        signature=signature,
        input_example=input_example,
        pip_requirements=serving_requirements(),
        registered_model_name=config.register_as or None,
    )


def log_auroc_table(metrics: dict[str, float], class_names: list[str], prefix: str) -> None:
    """Per-class AUROC of one split as an MLflow table artifact (metrics/<prefix>_auroc.json)."""
    import mlflow

    from train.callbacks import metric_safe

    rows = [(name, metrics.get(f"{prefix}_auroc_{metric_safe(name)}")) for name in class_names]
    mlflow.log_table(
        {
            "class": [name for name, _ in rows],
            "auroc": [value if value is not None else float("nan") for _, value in rows],
        },
        artifact_file=f"metrics/{prefix}_auroc.json",
    )


def evaluate_split(model, batches, data, prefix: str) -> dict[str, float]:
    """Loss and compiled metrics plus exact AUROC on one split, keys prefixed (e.g. test_auroc)."""
    from train.callbacks import auroc_scores

    results = model.evaluate(batches, verbose=0, return_dict=True)
    labels = np.concatenate([np.asarray(labels) for _, labels in batches], axis=0)
    probabilities = model.predict(batches, verbose=0)
    results.update(auroc_scores(labels, probabilities, data.task, data.class_names))
    return {f"{prefix}_{key}": float(value) for key, value in results.items() if np.isfinite(value)}


def train(
    config: TrainConfig,
    *,
    extra_callbacks: list | None = None,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
) -> str:
    """Run one training job end to end and return the MLflow run id.

    `extra_callbacks` run after the built-in ones (they see `val_auroc` in the
    logs), which is how tuning reports and prunes trials; `parent_run_id` makes the
    run a child run, as each tuning trial is.
    """
    started = time.perf_counter()
    from aws.cost import estimate_cost_from_environment
    from train.hardware import configure

    try:
        # Checked now so that a bad price setting fails before training, not after it.
        estimate_cost_from_environment(0.0)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    setup = configure(config.precision, config.jit_compile)

    import keras
    import mlflow

    from models import build_model
    from train.callbacks import EpochLogger, ValidationAuroc
    from train.data import load_dataset, make_batches
    from train.tracking import ResilientLogger, log_new_params

    keras.utils.set_random_seed(config.seed)
    # File-based splits skip undecodable files, so tf.data cannot know their length up front and
    # Keras warns at the end of every epoch; the counts come from the file scan instead.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    try:
        data = load_dataset(
            config.dataset,
            data_dir=config.data_dir or None,
            image_size=config.image_size,
            seed=config.seed,
            max_examples=config.max_examples,
            synthetic_task=config.synthetic_task,
            validation_fraction=config.validation_fraction,
            view=config.view,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    counts = {name: split.count for name, split in data.splits.items()}
    if counts.get("train", 0) == 0 or counts.get("val", 0) == 0:
        raise ConfigError(f"dataset {config.dataset!r} gave too few examples to train and validate: {counts}")
    print(
        f"dataset {data.name}: {data.task}, classes {data.class_names}, examples {counts}, "
        f"skipped {data.skipped_images} unreadable image(s)",
        flush=True,
    )

    run_name = config.run_name or None
    with mlflow.start_run(
        run_name=run_name,
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        log_system_metrics=setup.log_system_metrics or None,
    ) as run:
        if run_name:
            mlflow.set_tag("mlflow.runName", run_name)
        log_new_params(run.info.run_id, config.to_dict())
        log_new_params(
            run.info.run_id,
            {
                "task": data.task,
                "num_outputs": data.num_outputs,
                "resolved_precision": setup.precision,
                "train_examples": counts["train"],
                "val_examples": counts["val"],
                "test_examples": counts.get("test", 0),
                "replicas": setup.strategy.num_replicas_in_sync,
            },
        )
        tags = {
            "medimg.dataset": data.name,
            "medimg.task": data.task,
            "medimg.model": config.model,
            "medimg.dataset_digest": data.digest,
            **git_state(),
            **setup.tags,
        }
        tags.update({f"medimg.version.{name}": value for name, value in package_versions().items()})
        mlflow.set_tags(tags)
        log_dataset(data, config)
        mlflow.log_metric("data.skipped_images", data.skipped_images)
        if data.skipped_examples:
            mlflow.log_text("\n".join(data.skipped_examples) + "\n", "data/skipped_images.txt")
        resolved = {
            "config": config.to_dict(),
            "resolved": {
                "task": data.task,
                "class_names": list(data.class_names),
                "num_outputs": data.num_outputs,
                "precision": setup.precision,
                "replicas": setup.strategy.num_replicas_in_sync,
                "examples": counts,
                "dataset_digest": data.digest,
                "dataset_source": data.source,
            },
        }
        mlflow.log_text(yaml.safe_dump(resolved, sort_keys=False), "config/resolved_config.yaml")

        train_batches = make_batches(
            data.splits["train"], batch_size=config.batch_size, training=True, augment=config.augment, seed=config.seed
        )
        val_batches = make_batches(
            data.splits["val"], batch_size=config.batch_size, training=False, augment=False, seed=config.seed
        )
        class_weight, positive_weight, output_bias = imbalance_settings(data)
        with setup.strategy.scope():
            model = build_model(
                config.model,
                (config.image_size, config.image_size, 3),
                data.num_outputs,
                task=data.task,
                dropout=config.dropout,
                l2=config.l2,
                weights=config.weights_choice,
                trainable_layers=config.trainable_layers,
                output_bias=output_bias,
                **({"convolutions": config.convolutions} if config.model == "small_cnn" else {}),
            )
            loss, metrics = loss_and_metrics(data, positive_weight)
            model.compile(optimizer=make_optimizer(config), loss=loss, metrics=metrics, jit_compile=setup.jit_compile)
        summary_lines: list[str] = []
        model.summary(print_fn=lambda line, *args, **kwargs: summary_lines.append(line))
        mlflow.log_text("\n".join(summary_lines) + "\n", "architecture/model_summary.txt")
        log_new_params(
            run.info.run_id,
            {
                "total_parameters": model.count_params(),
                "trainable_parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            },
        )

        metrics_logger = ResilientLogger(run.info.run_id)
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_auroc", mode="max", patience=config.patience, restore_best_weights=True, verbose=1
        )
        callbacks = [
            # ValidationAuroc comes first: it adds val_auroc to the logs the others read.
            ValidationAuroc(val_batches, data.task, list(data.class_names)),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_auroc",
                mode="max",
                factor=0.5,
                patience=max(1, config.patience // 2),
                min_lr=1e-7,
                verbose=1,
            ),
            early_stopping,
            EpochLogger(metrics_logger, counts["train"]),
            *(extra_callbacks or []),
        ]
        fit_started = time.perf_counter()
        history = model.fit(
            train_batches,
            validation_data=val_batches,
            epochs=config.epochs,
            callbacks=callbacks,
            class_weight=class_weight,
            shuffle=False,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        fit_seconds = time.perf_counter() - fit_started
        metrics_logger.flush()

        best_epoch = int(early_stopping.best_epoch)
        epochs_run = len(history.history.get("loss", []))
        summary = {
            "best_epoch": best_epoch,
            "best_val_auroc": float(early_stopping.best),
            "epochs_run": epochs_run,
            "train_time_s": fit_seconds,
            "train_images_per_s_mean": counts["train"] * epochs_run / fit_seconds if fit_seconds else 0.0,
        }
        if counts.get("test", 0) > 0:
            test_batches = make_batches(
                data.splits["test"], batch_size=config.batch_size, training=False, augment=False, seed=config.seed
            )
            test_metrics = evaluate_split(model, test_batches, data, "test")
            summary.update(test_metrics)
            if data.task != "binary":
                log_auroc_table(test_metrics, data.class_names, "test")
        mlflow.log_metrics(summary)

        figure = curves_figure(history.history, best_epoch)
        mlflow.log_figure(figure, "plots/training_curves.png")
        matplotlib_close(figure)
        mlflow.log_dict(history.history, "metrics/history.json")

        example_image = next(iter(data.splits["val"].dataset.take(1)))[0].numpy()
        with tempfile.TemporaryDirectory() as workdir:
            model_info = log_model(model, data, config, example_image, Path(workdir))
        mlflow.set_tag("medimg.model_uri", model_info.model_uri)

        wall_seconds = time.perf_counter() - started
        final = {"wall_time_s": wall_seconds}
        cost = estimate_cost_from_environment(wall_seconds)
        if cost is not None:
            final["cost_usd"] = cost
        mlflow.log_metrics(final)
        print(
            json.dumps(
                {
                    "run_id": run.info.run_id,
                    "best_epoch": best_epoch + 1,
                    "best_val_auroc": round(summary["best_val_auroc"], 4),
                    "model_uri": model_info.model_uri,
                    "registered_as": config.register_as or None,
                }
            ),
            flush=True,
        )
        return run.info.run_id
