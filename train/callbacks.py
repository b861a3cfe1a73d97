"""Keras callbacks of the training loop: validation AUROC, per-epoch MLflow metrics, throughput."""

from __future__ import annotations

import math
import time

import keras
import numpy as np
from sklearn.metrics import roc_auc_score


def metric_safe(name: str) -> str:
    """Class names become metric key suffixes; MLflow keys allow letters, digits, _ - . / and spaces."""
    return "".join(character if character.isalnum() or character in "_-." else "_" for character in name)


def auroc_scores(labels: np.ndarray, probabilities: np.ndarray, task: str, class_names: list[str]) -> dict[str, float]:
    """AUROC by task: binary -> auroc; multilabel/multiclass -> auroc_<class> per class and auroc (their mean).

    Classes with only one label value in `labels` have no defined AUROC and are left out.
    """
    labels = np.asarray(labels).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if task == "binary":
        if len(np.unique(labels[:, 0])) < 2:
            return {}
        return {"auroc": float(roc_auc_score(labels[:, 0], probabilities[:, 0]))}
    scores: dict[str, float] = {}
    for index, name in enumerate(class_names):
        column = labels[:, index]
        if len(np.unique(column)) == 2:
            scores[f"auroc_{metric_safe(name)}"] = float(roc_auc_score(column, probabilities[:, index]))
    if scores:
        scores["auroc"] = float(np.mean(list(scores.values())))
        if task == "multilabel":
            scores["mean_auroc"] = scores["auroc"]
    return scores


class ValidationAuroc(keras.callbacks.Callback):
    """Adds exact (sklearn) validation AUROC to the epoch logs, so later callbacks can monitor `val_auroc`.

    Keras' streaming AUC approximates with 200 thresholds; the best epoch and the
    reported numbers use the exact value instead.
    """

    def __init__(self, validation_batches, task: str, class_names: list[str]):
        super().__init__()
        self.validation_batches = validation_batches
        self.task = task
        self.class_names = class_names
        self.labels = np.concatenate([np.asarray(labels) for _, labels in validation_batches], axis=0)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probabilities = self.model.predict(self.validation_batches, verbose=0)
        scores = auroc_scores(self.labels, probabilities, self.task, self.class_names)
        for key, value in scores.items():
            logs[f"val_{key}"] = value
        # A validation split without both label values still needs a monitored number.
        logs.setdefault("val_auroc", 0.5)


class EpochLogger(keras.callbacks.Callback):
    """Sends every epoch's logs, learning rate, duration and throughput to MLflow with step=epoch."""

    def __init__(self, metrics_logger, train_examples: int):
        super().__init__()
        self.metrics_logger = metrics_logger
        self.train_examples = train_examples
        self.epoch_started = 0.0
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.epoch_started
        self.epoch_seconds.append(seconds)
        metrics = {key: float(value) for key, value in (logs or {}).items() if isinstance(value, int | float)}
        metrics = {key: value for key, value in metrics.items() if math.isfinite(value)}
        learning_rate = self.model.optimizer.learning_rate
        metrics["learning_rate"] = float(np.asarray(keras.ops.convert_to_numpy(learning_rate)))
        metrics["epoch_time_s"] = seconds
        metrics["train_images_per_s"] = self.train_examples / seconds if seconds > 0 else 0.0
        self.metrics_logger.log_metrics(metrics, step=epoch)
