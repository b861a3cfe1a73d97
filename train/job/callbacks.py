"""Keras callbacks of the training loop: validation AUROC, per-epoch MLflow metrics, throughput."""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from train.scoring.metrics import auroc_scores, scored_classes


class ValidationAuroc(keras.callbacks.Callback):
    """Adds exact (sklearn) validation AUROC to the epoch logs, so later callbacks can monitor `val_auroc`.

    A class without both label values in the validation split has no AUROC: it is left out, never
    given an invented value, and `val_n_classes_scored` says over how many classes the mean runs.
    Training with monitor=val_auroc refuses such a split before fitting (train.job.stages.check_monitor).

    Keras' streaming AUC approximates with 200 thresholds; the best epoch and the
    reported numbers use the exact value instead.
    """

    def __init__(self, validation_batches, task: str, class_names: list[str]):
        super().__init__()
        self.validation_batches = validation_batches
        self.task = task
        self.class_names = class_names
        self.labels = np.concatenate([np.asarray(labels) for _, labels in validation_batches], axis=0)
        # Classes with both label values in the validation split: the fixed set every epoch's mean runs over.
        self.scored = scored_classes(self.labels)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probabilities = self.model.predict(self.validation_batches, verbose=0)
        scores = auroc_scores(self.labels, probabilities, self.task, self.class_names)
        for key, value in scores.items():
            logs[f"val_{key}"] = value
        # The mean runs over this fixed set of scored classes; the count says how many it holds.
        logs["val_n_classes_scored"] = float(self.scored.sum())


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
