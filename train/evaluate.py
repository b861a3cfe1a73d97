"""Scores a logged medimg model on one dataset split; writes an MLflow run with metrics, ROC curves and pictures.

`python -m train evaluate --model-uri models:/<name>@champion --split test` loads the model,
reads the split with the same loaders and preprocessing as training, and logs, prefixed with
the split name (e.g. `test_auroc`): AUROC per class and mean, accuracy, precision, recall,
specificity and F1 at `threshold`, and the sensitivity reached at a fixed `specificity`; plus
plots/roc_curves.png, plots/confusion_matrix.png, plots/samples.png (3x3 images titled with
prediction and truth), plots/gradcam.png and predictions/predictions.csv.

Data settings left empty (dataset "", seed -1, max_examples -1) are read from the run that
trained the model, so the default evaluates exactly that run's held-out split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from train.config import ConfigError, TrainConfig, parse_float, parse_int, unquote

logger = logging.getLogger("medimg.evaluate")

SPLITS = ("train", "val", "test")
SAMPLE_GRID = 3
GRADCAM_SAMPLES = 4
MODEL_URI_PATTERN = re.compile(r"^(runs:/[0-9a-f]{32}(/.*)?|models:/[^/@]+(@[^/]+|/[^/]+)?)$")


def from_strings(cls, values: dict[str, Any]):
    """Build dataclass `cls` from raw CLI/MLflow strings, converting by field type and rejecting unknown keys."""
    known = {field.name: field for field in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(known)}")
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        kind = known[name].type
        if kind == "int":
            converted[name] = parse_int(value, name)
        elif kind == "float":
            converted[name] = parse_float(value, name)
        else:
            converted[name] = str(value).strip()
    instance = cls(**converted)
    instance.validate()
    return instance


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of one evaluation; field names equal the MLproject `evaluate` parameter names."""

    model_uri: str = ""
    dataset: str = ""
    data_dir: str = ""
    split: str = "test"
    threshold: float = 0.5
    specificity: float = 0.9
    max_examples: int = -1
    seed: int = -1
    batch_size: int = 32
    run_name: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluateConfig:
        return from_strings(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Cheap checks before TensorFlow is imported; raise ConfigError naming the fix."""
        if not self.model_uri:
            raise ConfigError("model_uri is required, e.g. models:/<name>@champion or runs:/<run_id>/model")
        is_uri = "://" in self.model_uri or MODEL_URI_PATTERN.match(self.model_uri)
        if not is_uri and not os.path.isdir(self.model_uri):
            raise ConfigError(
                f"model_uri {self.model_uri!r} is not a model URI; use models:/<name>@<alias>, "
                "models:/<name>/<version>, models:/<model_id>, runs:/<run_id>/model or a model folder"
            )
        if self.split not in SPLITS:
            raise ConfigError(f"unknown split {self.split!r}; valid splits: {', '.join(SPLITS)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {self.threshold}")
        if not 0.0 < self.specificity < 1.0:
            raise ConfigError(f"specificity must be between 0 and 1 (exclusive), e.g. 0.9, got {self.specificity}")
        if self.max_examples < -1:
            raise ConfigError(f"max_examples must be -1 (as in training), 0 (all) or positive, got {self.max_examples}")
        if self.seed < -1:
            raise ConfigError(f"seed must be -1 (as in training) or zero or positive, got {self.seed}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.dataset:
            from train.data import available_datasets, validate_dataset_args

            if self.dataset not in available_datasets():
                raise ConfigError(
                    f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(available_datasets())}"
                )
            try:
                validate_dataset_args(self.dataset, self.data_dir or None)
            except ValueError as error:
                raise ConfigError(str(error)) from None


@dataclass(frozen=True)
class ModelSource:
    """Where a model URI points: the training run and logged model behind it, when they can be found."""

    model_uri: str
    run_id: str | None = None
    model_id: str | None = None
    registered: str | None = None


def resolve_model_source(model_uri: str, client) -> ModelSource:
    """Find the source run (and logged model id) of runs:/, models:/<id>, models:/<name>@<alias> and models:/<name>/<n>."""
    from mlflow.exceptions import MlflowException

    try:
        if model_uri.startswith("runs:/"):
            return ModelSource(model_uri, run_id=model_uri[len("runs:/") :].split("/", 1)[0])
        if not model_uri.startswith("models:/"):
            return ModelSource(model_uri)
        target = model_uri[len("models:/") :].rstrip("/")
        if "@" in target:
            name, alias = target.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in target:
            name, number = target.split("/", 1)
            if number == "latest":
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise ConfigError(f"registered model {name!r} has no versions; check model_uri {model_uri!r}")
                version = max(versions, key=lambda item: int(item.version))
            elif number.isdigit():
                version = client.get_model_version(name, number)
            else:
                raise ConfigError(f"model_uri {model_uri!r}: stages are not used; use models:/{name}@<alias>")
        else:
            logged = client.get_logged_model(target)
            return ModelSource(model_uri, run_id=logged.source_run_id, model_id=logged.model_id)
    except MlflowException as error:
        raise ConfigError(f"model_uri {model_uri!r} cannot be resolved: {first_line(error.message)}") from None
    model_id = getattr(version, "model_id", None)
    if not model_id and str(version.source).startswith("models:/m-"):
        model_id = str(version.source)[len("models:/") :]
    return ModelSource(
        model_uri, run_id=version.run_id, model_id=model_id, registered=f"{version.name}/{version.version}"
    )


def first_line(text: str) -> str:
    stripped = str(text).strip()
    return stripped.splitlines()[0] if stripped else ""


def data_settings(config: EvaluateConfig, source_params: dict[str, str], task: str) -> dict[str, Any]:
    """The load_dataset arguments: explicit settings first, then the training run's, then medimg's defaults."""
    dataset = config.dataset or source_params.get("dataset", "")
    if not dataset:
        raise ConfigError("dataset is required: the model has no medimg training run to take it from")
    same_dataset = dataset == source_params.get("dataset")
    data_dir = config.data_dir or (source_params.get("data_dir", "") if same_dataset else "")
    seed = config.seed if config.seed >= 0 else parse_int(source_params.get("seed", 42), "seed")
    if config.max_examples >= 0:
        max_examples = config.max_examples
    else:
        max_examples = parse_int(source_params.get("max_examples", 0), "max_examples") if same_dataset else 0
    # The split fractions and the view filter decide which images land in which split, so they follow
    # the training run whenever the dataset is the same; otherwise training's defaults apply.
    defaults = TrainConfig().to_dict()
    inherited = source_params if same_dataset else {}
    settings = {
        "name": dataset,
        "data_dir": data_dir or None,
        "seed": seed,
        "max_examples": max_examples,
        "validation_fraction": parse_float(
            inherited.get("validation_fraction", defaults["validation_fraction"]), "validation_fraction"
        ),
        "view": str(inherited.get("view", defaults["view"])),
    }
    if dataset == "synthetic":
        if task not in ("binary", "multilabel"):
            raise ConfigError(f"the synthetic dataset is binary or multilabel; this model's task is {task}")
        settings["synthetic_task"] = task
    return settings


# Metrics: pure NumPy/scikit-learn, no model needed.


def sensitivity_at_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float) -> tuple[float, float]:
    """Highest sensitivity whose specificity is at least `specificity`, and the score threshold that gives it."""
    from sklearn.metrics import roc_curve

    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores)
    allowed = false_positive_rate <= (1.0 - specificity) + 1e-12
    index = int(np.argmax(np.where(allowed, true_positive_rate, -1.0)))
    return float(true_positive_rate[index]), float(np.clip(thresholds[index], 0.0, 1.0))


def threshold_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity and F1 of binary decisions."""
    truth = truth.astype(bool)
    predicted = predicted.astype(bool)
    true_positive = float(np.sum(truth & predicted))
    false_positive = float(np.sum(~truth & predicted))
    false_negative = float(np.sum(truth & ~predicted))
    true_negative = float(np.sum(~truth & ~predicted))
    precision = true_positive / (true_positive + false_positive) if true_positive + false_positive else 0.0
    recall = true_positive / (true_positive + false_negative) if true_positive + false_negative else 0.0
    specificity = true_negative / (true_negative + false_positive) if true_negative + false_positive else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(truth == predicted)) if len(truth) else 0.0,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
    }


def decisions(probabilities: np.ndarray, task: str, threshold: float) -> np.ndarray:
    """Predicted 0/1 matrix [N, outputs]: thresholded for binary and multilabel, one-hot argmax for multiclass."""
    if task == "multiclass":
        return np.eye(probabilities.shape[1], dtype=int)[probabilities.argmax(axis=1)]
    return (probabilities >= threshold).astype(int)


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    task: str,
    class_names: list[str],
    *,
    threshold: float = 0.5,
    specificity: float = 0.9,
) -> dict[str, float]:
    """Every evaluation metric, unprefixed.

    binary: auroc, accuracy, precision, recall, specificity, f1 (at threshold), sensitivity_at_specificity
    and threshold_at_specificity. multilabel and multiclass: the same per class as <name>_<class>
    (one-vs-rest), their unweighted means under the plain names, and for multilabel `exact_match`
    (every label right) and `mean_auroc`. Multiclass decisions are the most probable class.
    """
    from train.callbacks import auroc_scores, metric_safe

    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if labels.shape != probabilities.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape} must have the same shape")
    metrics = dict(auroc_scores(labels, probabilities, task, class_names))
    predicted = decisions(probabilities, task, threshold)
    truth = labels >= 0.5
    if task == "binary":
        metrics.update(threshold_metrics(truth[:, 0], predicted[:, 0]))
        if len(np.unique(truth[:, 0])) == 2:
            sensitivity, at = sensitivity_at_specificity(truth[:, 0], probabilities[:, 0], specificity)
            metrics.update({"sensitivity_at_specificity": sensitivity, "threshold_at_specificity": at})
        return metrics
    per_class: dict[str, list[float]] = {}
    for index, name in enumerate(class_names):
        suffix = metric_safe(name)
        values = threshold_metrics(truth[:, index], predicted[:, index])
        if len(np.unique(truth[:, index])) == 2:
            sensitivity, at = sensitivity_at_specificity(truth[:, index], probabilities[:, index], specificity)
            values.update({"sensitivity_at_specificity": sensitivity, "threshold_at_specificity": at})
        for key, value in values.items():
            metrics[f"{key}_{suffix}"] = value
            per_class.setdefault(key, []).append(value)
    for key, values in per_class.items():
        if key != "threshold_at_specificity":
            metrics[key] = float(np.mean(values))
    if task == "multiclass":
        metrics["accuracy"] = float(np.mean(probabilities.argmax(axis=1) == labels.argmax(axis=1)))
    else:
        metrics["exact_match"] = float(np.mean(np.all(truth == predicted.astype(bool), axis=1)))
    return metrics


def confusion_matrices(labels: np.ndarray, probabilities: np.ndarray, task: str, threshold: float) -> list[np.ndarray]:
    """binary: one 2x2 [[TN, FP], [FN, TP]]; multiclass: one KxK (rows truth, columns prediction); multilabel: a 2x2 per label."""
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(labels).reshape(len(labels), -1)
    predicted = decisions(np.asarray(probabilities).reshape(len(probabilities), -1), task, threshold)
    if task == "multiclass":
        classes = list(range(labels.shape[1]))
        return [confusion_matrix(labels.argmax(axis=1), predicted.argmax(axis=1), labels=classes)]
    truth = (labels >= 0.5).astype(int)
    return [confusion_matrix(truth[:, index], predicted[:, index], labels=[0, 1]) for index in range(labels.shape[1])]


def label_text(row: np.ndarray, task: str, class_names: list[str]) -> str:
    """Human-readable label(s) of one 0/1 (or probability, thresholded at 0.5) row."""
    row = np.asarray(row).reshape(-1)
    if task == "binary":
        return class_names[int(row[0] >= 0.5)]
    if task == "multiclass":
        return class_names[int(row.argmax())]
    present = [name for name, value in zip(class_names, row, strict=True) if value >= 0.5]
    return "+".join(present) if present else "none"


# Figures.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_figure(labels, probabilities, task: str, class_names: list[str], threshold: float, specificity: float):
    """ROC curve per output with its AUROC, the operating point at `threshold` (x) and at `specificity` (o)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    labels = np.asarray(labels).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities).reshape(len(probabilities), -1)
    names = [class_names[1]] if task == "binary" else list(class_names)
    figure, axis = plt.subplots(figsize=(5.5, 5.0))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    axis.axvline(1.0 - specificity, color="grey", linestyle="--", linewidth=0.6)
    for index, name in enumerate(names):
        truth = labels[:, index] >= 0.5
        if len(np.unique(truth)) < 2:
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(truth, probabilities[:, index])
        auroc = roc_auc_score(truth, probabilities[:, index])
        (line,) = axis.plot(false_positive_rate, true_positive_rate, label=f"{name} (AUROC {auroc:.3f})")
        if task != "multiclass":
            point = threshold_metrics(truth, probabilities[:, index] >= threshold)
            axis.plot(1.0 - point["specificity"], point["recall"], "x", color=line.get_color(), markersize=8)
        # The operating point of sensitivity_at_specificity: the best sensitivity left of the dashed line.
        allowed = false_positive_rate <= (1.0 - specificity) + 1e-12
        point = int(np.argmax(np.where(allowed, true_positive_rate, -1.0)))
        axis.plot(false_positive_rate[point], true_positive_rate[point], "o", color=line.get_color(), fillstyle="none")
    axis.set_xlabel("1 - specificity (false positive rate)")
    axis.set_ylabel("sensitivity (true positive rate)")
    axis.set_title(f"ROC (x: threshold {threshold:g}, o: specificity {specificity:g})", fontsize=10)
    axis.set_xlim(-0.01, 1.01)
    axis.set_ylim(-0.01, 1.01)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def confusion_figure(matrices: list[np.ndarray], task: str, class_names: list[str], threshold: float):
    """Confusion matrices with counts: one panel (binary, multiclass) or one 2x2 panel per label (multilabel)."""
    plt = _pyplot()
    if task == "multilabel":
        titles = list(class_names)
        ticks = [["absent", "present"]] * len(matrices)
    elif task == "binary":
        titles = [f"threshold {threshold:g}"]
        ticks = [list(class_names)]
    else:
        titles = ["most probable class"]
        ticks = [list(class_names)]
    size = max(3.6, 0.55 * len(ticks[0]) + 2.4)
    figure, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices), size), squeeze=False)
    for axis, matrix, title, names in zip(axes[0], matrices, titles, ticks, strict=True):
        axis.imshow(matrix, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            color = "white" if count > matrix.max() / 2 else "black"
            axis.text(column, row, str(int(count)), ha="center", va="center", color=color)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(len(names)), names, fontsize=8)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def samples_figure(images: np.ndarray, labels, probabilities, task: str, class_names: list[str], threshold: float):
    """A 3x3 grid of images titled with prediction (and its probability) and truth; green right, red wrong."""
    plt = _pyplot()
    figure, axes = plt.subplots(SAMPLE_GRID, SAMPLE_GRID, figsize=(9, 9.6))
    predicted = decisions(np.asarray(probabilities).reshape(len(probabilities), -1), task, threshold)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= len(images):
            continue
        axis.imshow(np.clip(images[index], 0, 255).astype(np.uint8))
        truth_text = label_text(labels[index], task, class_names)
        predicted_text = label_text(predicted[index], task, class_names)
        score = float(np.max(probabilities[index])) if task != "binary" else float(probabilities[index][0])
        correct = truth_text == predicted_text
        axis.set_title(
            f"pred: {predicted_text} ({score:.2f})\ntrue: {truth_text}",
            fontsize=9,
            color="green" if correct else "red",
        )
    figure.tight_layout()
    return figure


def gradcam_figure(images: np.ndarray, heatmaps: np.ndarray, titles: list[str]):
    """Each image above its Grad-CAM heatmap overlay."""
    plt = _pyplot()
    figure, axes = plt.subplots(2, len(images), figsize=(3.0 * len(images), 6.4), squeeze=False)
    for column, (image, heatmap, title) in enumerate(zip(images, heatmaps, titles, strict=True)):
        picture = np.clip(image, 0, 255).astype(np.uint8)
        axes[0, column].imshow(picture)
        axes[0, column].set_title(title, fontsize=8)
        # Opacity follows the heatmap, so regions without evidence show the image untinted.
        overlay = plt.get_cmap("jet")(np.clip(heatmap, 0.0, 1.0))
        overlay[..., 3] = 0.6 * np.clip(heatmap, 0.0, 1.0)
        axes[1, column].imshow(picture)
        axes[1, column].imshow(overlay)
        axes[1, column].set_title("Grad-CAM", fontsize=8)
        for axis in axes[:, column]:
            axis.axis("off")
    figure.tight_layout()
    return figure


def predictions_csv(labels: np.ndarray, probabilities: np.ndarray, task: str, class_names: list[str]) -> str:
    import pandas as pd

    names = [class_names[1]] if task == "binary" else list(class_names)
    frame = pd.DataFrame(np.asarray(labels).reshape(len(labels), -1), columns=[f"true_{name}" for name in names])
    for index, name in enumerate(names):
        frame[f"probability_{name}"] = np.asarray(probabilities).reshape(len(probabilities), -1)[:, index]
    frame.index.name = "example"
    return frame.to_csv()


# The evaluation run.


def load_classifier(model_uri: str):
    """The medimg ImageClassifier behind a model URI (its Keras model and ClassifierConfig)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        pyfunc_model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise ConfigError(f"model_uri {model_uri!r} cannot be loaded: {first_line(str(error))}") from None
    try:
        classifier = pyfunc_model.unwrap_python_model()
    except MlflowException:
        classifier = None
    if not hasattr(classifier, "model") or not hasattr(classifier, "config"):
        raise ConfigError(f"model_uri {model_uri!r} is not a medimg image classifier (serve.pyfunc.ImageClassifier)")
    return classifier


def evaluate(config: EvaluateConfig) -> str:
    """Evaluate config.model_uri on one split and return the MLflow run id of the evaluation."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from train.data import load_dataset, make_batches
    from train.hardware import enable_memory_growth
    from train.tracking import log_new_params

    client = MlflowClient()
    source = resolve_model_source(config.model_uri, client)
    enable_memory_growth()
    source_params: dict[str, str] = {}
    if source.run_id:
        try:
            # `mlflow run` logs empty parameters as the two characters ''.
            source_params = {key: unquote(value) for key, value in client.get_run(source.run_id).data.params.items()}
        except MlflowException:
            logger.warning("source run %s of %s is not in this tracking store", source.run_id, config.model_uri)
    classifier = load_classifier(config.model_uri)
    classifier_config = classifier.config
    task = classifier_config.task
    settings = data_settings(config, source_params, task)
    try:
        data = load_dataset(image_size=classifier_config.image_size, **settings)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    if list(data.class_names) != list(classifier_config.class_names) or data.task != task:
        raise ConfigError(
            f"dataset {data.name!r} has {data.task} classes {data.class_names}, but the model predicts "
            f"{task} classes {classifier_config.class_names}; evaluate on the dataset it was trained for"
        )
    split = data.splits[config.split]
    if split.count == 0:
        raise ConfigError(f"the {config.split} split of {data.name!r} has no examples; choose another split")
    print(f"evaluating {config.model_uri} on {data.name}/{config.split}: {split.count} examples", flush=True)

    keras_model = classifier.model
    labels_batches, probability_batches, sample_images = [], [], []
    sample_count = max(SAMPLE_GRID * SAMPLE_GRID, GRADCAM_SAMPLES)
    batches = make_batches(split, batch_size=config.batch_size, training=False, augment=False, seed=settings["seed"])
    for images, labels in batches:
        probability_batches.append(np.asarray(keras_model.predict_on_batch(images), dtype=np.float64))
        labels_batches.append(np.asarray(labels))
        if sum(len(batch) for batch in sample_images) < sample_count:
            sample_images.append(np.asarray(images))
    labels = np.concatenate(labels_batches).reshape(-1, data.num_outputs)
    probabilities = np.concatenate(probability_batches).reshape(-1, data.num_outputs)
    samples = np.concatenate(sample_images)[:sample_count]

    metrics = classification_metrics(
        labels,
        probabilities,
        task,
        list(data.class_names),
        threshold=config.threshold,
        specificity=config.specificity,
    )
    prefixed = {f"{config.split}_{key}": value for key, value in metrics.items() if math.isfinite(value)}
    prefixed[f"{config.split}_examples"] = float(len(labels))

    run_name = config.run_name or f"evaluate {config.model_uri} on {data.name}/{config.split}"
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags(
            {
                "medimg.kind": "evaluation",
                "medimg.evaluated_model_uri": config.model_uri,
                "medimg.source_run_id": source.run_id or "",
                "medimg.evaluated_model_id": source.model_id or "",
                "medimg.registered_model_version": source.registered or "",
                "medimg.dataset": data.name,
                "medimg.dataset_digest": data.digest,
                "medimg.split": config.split,
                "medimg.task": task,
            }
        )
        log_new_params(
            run.info.run_id,
            {
                **config.to_dict(),
                "resolved_dataset": data.name,
                "resolved_data_dir": settings["data_dir"] or "",
                "resolved_seed": settings["seed"],
                "resolved_max_examples": settings["max_examples"],
                "resolved_validation_fraction": settings["validation_fraction"],
                "resolved_view": settings["view"],
                "image_size": classifier_config.image_size,
                "task": task,
            },
        )
        mlflow.log_metrics(prefixed)
        if source.model_id:
            # MLflow 3 shows metrics logged with model_id on the model's own page as well.
            try:
                mlflow.log_metrics(prefixed, model_id=source.model_id)
            except MlflowException as error:
                logger.warning("could not link metrics to logged model %s: %s", source.model_id, error)
        class_names = list(data.class_names)
        mlflow.log_figure(
            roc_figure(labels, probabilities, task, class_names, config.threshold, config.specificity),
            "plots/roc_curves.png",
        )
        matrices = confusion_matrices(labels, probabilities, task, config.threshold)
        mlflow.log_figure(confusion_figure(matrices, task, class_names, config.threshold), "plots/confusion_matrix.png")
        mlflow.log_dict({"matrices": [matrix.tolist() for matrix in matrices]}, "metrics/confusion_matrix.json")
        grid = SAMPLE_GRID * SAMPLE_GRID
        mlflow.log_figure(
            samples_figure(samples[:grid], labels[:grid], probabilities[:grid], task, class_names, config.threshold),
            "plots/samples.png",
        )
        log_gradcam(keras_model, samples[:GRADCAM_SAMPLES], labels, probabilities, task, class_names)
        mlflow.log_text(predictions_csv(labels, probabilities, task, class_names), "predictions/predictions.csv")
        _pyplot().close("all")
        summary = {key: round(value, 4) for key, value in prefixed.items() if key.endswith(("auroc", "accuracy", "f1"))}
        print(json.dumps({"run_id": run.info.run_id, "model_uri": config.model_uri, **summary}), flush=True)
        return run.info.run_id


def log_gradcam(keras_model, images, labels, probabilities, task: str, class_names: list[str]) -> None:
    """Log plots/gradcam.png for the first samples; a model Grad-CAM cannot explain is logged as a warning only."""
    import mlflow

    from models.gradcam import gradcam_heatmap

    heatmaps, titles = [], []
    try:
        for index, image in enumerate(images):
            # Explain the positive class (binary) or the most probable class (multilabel, multiclass).
            class_index = 0 if task == "binary" else int(np.argmax(probabilities[index]))
            heatmaps.append(gradcam_heatmap(keras_model, image, class_index=class_index))
            explained = class_names[1] if task == "binary" else class_names[class_index]
            titles.append(
                f"{explained} p={probabilities[index][class_index]:.2f}\n"
                f"true: {label_text(labels[index], task, class_names)}"
            )
    except ValueError as error:
        logger.warning("Grad-CAM skipped: %s", error)
        mlflow.set_tag("medimg.gradcam", f"skipped: {first_line(str(error))[:200]}")
        return
    mlflow.log_figure(gradcam_figure(np.asarray(images), np.asarray(heatmaps), titles), "plots/gradcam.png")
