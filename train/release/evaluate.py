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
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.common import ConfigError, first_line
from serve.contract import DEFAULT_THRESHOLD, output_columns
from serve.loaded import LoadedModel
from serve.model_uri import ModelUriError, ResolvedModel, resolve_model_uri
from train.data import load_dataset
from train.data.spec import LoadedDataset
from train.job.stages import Predictions, SplitScores, log_scores, predict_split, score_predictions
from train.scoring.figures import (
    SAMPLE_GRID,
    close_figures,
    confusion_figure,
    gradcam_figure,
    roc_figure,
    samples_figure,
)
from train.scoring.metrics import confusion_matrices, label_text
from train.settings import EvaluateSettings, MainSettings, coerce, unquote
from train.tracking import names
from train.tracking.experiments import medimg_run
from train.tracking.lineage import DataIdentity, check_same_data

logger = logging.getLogger("medimg.evaluate")

GRADCAM_SAMPLES = 4


def resolve_model(model_uri: str, client) -> ResolvedModel:
    """The registered version, logged model and training run behind a model URI (serve.model_uri's rules)."""
    try:
        return resolve_model_uri(model_uri, client)
    except ModelUriError as error:
        raise ConfigError(str(error)) from None


def training_params(source: ResolvedModel, client) -> tuple[dict[str, str], dict[str, str]]:
    """The params and tags of the run that trained the model (empty when it is not in this tracking store)."""
    from mlflow.exceptions import MlflowException

    if not source.run_id:
        return {}, {}
    try:
        run = client.get_run(source.run_id)
    except MlflowException:
        logger.warning("source run %s of %s is not in this tracking store", source.run_id, source.uri)
        return {}, {}
    # `mlflow run` logs empty parameters as the two characters ''.
    return {key: unquote(value) for key, value in run.data.params.items()}, dict(run.data.tags)


def data_settings(config: EvaluateSettings, source_params: dict[str, str], task: str) -> dict[str, Any]:
    """The load_dataset arguments: explicit settings first, then the training run's, then medimg's defaults."""
    dataset = config.dataset or source_params.get("dataset", "")
    if not dataset:
        raise ConfigError("dataset is required: the model has no medimg training run to take it from")
    same_dataset = dataset == source_params.get("dataset")
    # The split fractions and the view filter decide which images land in which split, so they follow
    # the training run whenever the dataset is the same; otherwise training's defaults apply.
    inherited = source_params if same_dataset else {}

    default_seed = MainSettings.defaults()["seed"]

    def training_value(name: str):
        return coerce(MainSettings, name, inherited.get(name, MainSettings.defaults()[name]))

    settings = {
        "name": dataset,
        "data_dir": config.data_dir or training_value("data_dir") or None,
        "seed": config.seed
        if config.seed >= 0
        else coerce(MainSettings, "seed", source_params.get("seed", default_seed)),
        "max_examples": config.max_examples if config.max_examples >= 0 else training_value("max_examples"),
        "validation_fraction": training_value("validation_fraction"),
        "view": training_value("view"),
        # The grouping decides which patients land in the test split, as the fractions do.
        "group_pattern": training_value("group_pattern"),
    }
    spec = dataset_spec(dataset)
    if spec.task_option:
        # The dataset's variants differ by task (synthetic): score the variant the model was trained for.
        settings[spec.task_option] = task
    return settings


def dataset_spec(name: str):
    from train.data import get_dataset_spec

    try:
        return get_dataset_spec(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def predictions_csv(labels: np.ndarray, probabilities: np.ndarray, task: str, class_names: list[str]) -> str:
    import pandas as pd

    names = output_columns(task, class_names)
    frame = pd.DataFrame(np.asarray(labels).reshape(len(labels), -1), columns=[f"true_{name}" for name in names])
    for index, name in enumerate(names):
        frame[f"probability_{name}"] = np.asarray(probabilities).reshape(len(probabilities), -1)[:, index]
    frame.index.name = "example"
    return frame.to_csv()


# The evaluation run.


def load_model(source: ResolvedModel) -> LoadedModel:
    """The loaded model behind a resolved URI (serve.loaded.LoadedModel), checked to be a medimg image classifier."""
    try:
        loaded = LoadedModel.load(source.uri, source)
        loaded.image_classifier()
    except ModelUriError as error:
        raise ConfigError(str(error)) from None
    return loaded


@dataclass
class Evaluation:
    """One scored split: where the model and data came from, its predictions and scores (keys <split>_*)."""

    source: ResolvedModel
    data: LoadedDataset
    data_settings: dict[str, Any]
    predictions: Predictions
    # Calibrated probabilities [N, outputs], as the served model answers, and the thresholds used.
    probabilities: np.ndarray
    thresholds: Any
    scores: SplitScores
    keras_model: Any = None
    # The served model's ClassifierConfig: classes, calibration, operating points.
    classifier_config: Any = None
    run_id: str = ""

    @property
    def metrics(self) -> dict[str, float]:
        return self.scores.metrics


def check_evaluation_data(data: LoadedDataset, params: dict[str, str], tags: dict[str, str], allow: bool) -> None:
    """Refuse data whose name, task or content digest differs from the training run's, unless allowed.

    A changed folder or other split settings can put training images into the "test" split.
    """
    if allow:
        return
    check_same_data(
        DataIdentity.of(data),
        DataIdentity.from_tags(tags, params),
        what="the evaluation data differs from the training run's",
        fix="its test split may hold training images. Evaluate with the training run's data settings, or pass "
        "allow_different_data=true for an external test set",
    )


def score_model(settings: EvaluateSettings) -> Evaluation:
    """Load the model and its evaluation data, predict the split and compute every score; logs nothing."""
    from mlflow.tracking import MlflowClient

    from train.job.hardware import enable_memory_growth

    client = MlflowClient()
    source = resolve_model(settings.model_uri, client)
    enable_memory_growth()
    classifier = load_model(source).classifier
    data = load_evaluation_data(settings, source, classifier, client)
    return score_split(settings, data, classifier)


@dataclass
class EvaluationData:
    """The split to score and everything that chose it: the model's source, the data settings and the dataset."""

    source: ResolvedModel
    data: LoadedDataset
    data_settings: dict[str, Any]


def load_evaluation_data(settings: EvaluateSettings, source: ResolvedModel, classifier, client) -> EvaluationData:
    """The dataset of settings (its empty fields from the model's training run), checked against the model:
    same classes and task, the same data as training unless allowed, a split with examples. ConfigError otherwise."""
    params, tags = training_params(source, client)
    classifier_config = classifier.config
    chosen = data_settings(settings, params, classifier_config.task)
    try:
        data = load_dataset(image_size=classifier_config.image_size, **chosen)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    if list(data.class_names) != list(classifier_config.class_names) or data.task != classifier_config.task:
        raise ConfigError(
            f"dataset {data.name!r} has {data.task} classes {data.class_names}, but the model predicts "
            f"{classifier_config.task} classes {classifier_config.class_names}; evaluate on the dataset it was trained for"
        )
    check_evaluation_data(data, params, tags, settings.allow_different_data)
    if data.splits[settings.split].count == 0:
        raise ConfigError(f"the {settings.split} split of {data.name!r} has no examples; choose another split")
    return EvaluationData(source, data, chosen)


def score_split(settings: EvaluateSettings, loaded: EvaluationData, classifier) -> Evaluation:
    """Predict the split of `loaded` with the classifier's Keras model and calibration, and compute every score."""
    data, chosen, classifier_config = loaded.data, loaded.data_settings, classifier.config
    split = data.splits[settings.split]
    print(f"evaluating {settings.model_uri} on {data.name}/{settings.split}: {split.count} examples", flush=True)
    keep = max(SAMPLE_GRID * SAMPLE_GRID, GRADCAM_SAMPLES)
    predictions = predict_split(
        classifier.model, split, batch_size=settings.batch_size, seed=chosen["seed"], keep_images=keep
    )
    probabilities = classifier.calibrated(predictions.probabilities)
    thresholds = classifier_config.output_thresholds() if settings.threshold < 0 else settings.threshold
    if data.task == "multiclass":
        thresholds = DEFAULT_THRESHOLD
    scores = score_predictions(
        predictions.labels,
        predictions.probabilities,
        probabilities,
        thresholds,
        data,
        settings.split,
        seed=chosen["seed"],
        specificity=settings.specificity,
    )
    return Evaluation(
        loaded.source,
        data,
        chosen,
        predictions,
        probabilities,
        thresholds,
        scores,
        keras_model=classifier.model,
        classifier_config=classifier_config,
    )


def evaluation_run_name(source: ResolvedModel, dataset: str, split: str) -> str:
    """`evaluate <name> version <n> on <dataset>/<split>`: the run says which version it scored."""
    return f"evaluate {source.label} on {dataset}/{split}"


def evaluate(settings: EvaluateSettings) -> Evaluation:
    """Evaluate settings.model_uri on one split and log it as an evaluation run; return what was scored."""

    evaluation = score_model(settings)
    data = evaluation.data
    default_name = evaluation_run_name(evaluation.source, data.name, settings.split)
    with medimg_run(default_name, name=settings.run_name) as run:
        evaluation.run_id = run.info.run_id
        record_evaluation(run.info.run_id, settings, evaluation)
        log_evaluation_pictures(settings, evaluation)
        summary = {
            key: round(value, 4)
            for key, value in evaluation.metrics.items()
            if key.endswith(("auroc", "accuracy", "f1"))
        }
        print(json.dumps({"run_id": run.info.run_id, "model_uri": settings.model_uri, **summary}), flush=True)
    return evaluation


def record_evaluation(run_id: str, settings: EvaluateSettings, evaluation: Evaluation) -> None:
    """Tags, params and metrics of an evaluation run; the metrics are linked to the logged model too."""
    import mlflow

    from train.tracking.resilience import log_new_params

    source, data, chosen = evaluation.source, evaluation.data, evaluation.data_settings
    mlflow.set_tags(
        {
            names.KIND_TAG: names.KIND_EVALUATION,
            names.EVALUATED_MODEL_URI_TAG: settings.model_uri,
            names.SOURCE_RUN_ID_TAG: source.run_id,
            names.EVALUATED_MODEL_ID_TAG: source.model_id,
            names.REGISTERED_MODEL_VERSION_TAG: source.registered,
            **DataIdentity.of(data).tags(),
            names.SPLIT_TAG: settings.split,
        }
    )
    resolved = {f"resolved_{key}": value for key, value in chosen.items() if key != "name"}
    resolved["resolved_data_dir"] = chosen["data_dir"] or ""
    log_new_params(
        run_id,
        {
            **settings.to_dict(),
            "resolved_dataset": data.name,
            **resolved,
            "image_size": data_image_size(data),
            "task": data.task,
        },
    )
    if settings.allow_different_data:
        mlflow.set_tag(names.ALLOW_DIFFERENT_DATA_TAG, "true")
    log_evaluation_scores(evaluation, settings.split)


def log_evaluation_scores(evaluation: Evaluation, split: str) -> None:
    """The split's metrics with intervals, its class and subgroup tables and reliability diagram on the active run;
    the metrics are linked to the logged model too."""
    import mlflow
    from mlflow.exceptions import MlflowException

    source, predictions = evaluation.source, evaluation.predictions
    log_scores(
        evaluation.scores,
        predictions.labels,
        predictions.probabilities,
        evaluation.probabilities,
        evaluation.data,
        split,
    )
    if source.model_id:
        # MLflow 3 shows metrics logged with model_id on the model's own page as well.
        try:
            mlflow.log_metrics(evaluation.metrics, model_id=source.model_id)
        except MlflowException as error:
            logger.warning("could not link metrics to logged model %s: %s", source.model_id, error)


def data_image_size(data: LoadedDataset) -> int:
    return int(data.splits["val"].dataset.element_spec[0].shape[0])


def log_evaluation_pictures(settings: EvaluateSettings, evaluation: Evaluation) -> None:
    """ROC curves, confusion matrices, a sample grid, Grad-CAM overlays and the predictions table."""
    import mlflow

    data, predictions = evaluation.data, evaluation.predictions
    labels, probabilities, samples = predictions.labels, evaluation.probabilities, predictions.images
    task, class_names, threshold = data.task, list(data.class_names), evaluation.thresholds
    mlflow.log_figure(
        roc_figure(labels, probabilities, task, class_names, threshold, settings.specificity), names.ROC_ARTIFACT
    )
    matrices = confusion_matrices(labels, probabilities, task, threshold)
    mlflow.log_figure(confusion_figure(matrices, task, class_names, threshold), names.CONFUSION_ARTIFACT)
    mlflow.log_dict({"matrices": [matrix.tolist() for matrix in matrices]}, names.CONFUSION_TABLE_ARTIFACT)
    grid = SAMPLE_GRID * SAMPLE_GRID
    mlflow.log_figure(
        samples_figure(samples[:grid], labels[:grid], probabilities[:grid], task, class_names, threshold),
        names.SAMPLES_ARTIFACT,
    )
    log_gradcam(evaluation.keras_model, samples[:GRADCAM_SAMPLES], labels, probabilities, task, class_names)
    mlflow.log_text(predictions_csv(labels, probabilities, task, class_names), names.PREDICTIONS_ARTIFACT)
    close_figures()


def run(settings: EvaluateSettings) -> int:
    """`python -m train evaluate`."""
    evaluate(settings)
    return 0


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
        mlflow.set_tag(names.GRADCAM_TAG, f"skipped: {first_line(error)}")
        return
    mlflow.log_figure(gradcam_figure(np.asarray(images), np.asarray(heatmaps), titles), names.GRADCAM_ARTIFACT)
