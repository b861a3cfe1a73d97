"""The training objective: class imbalance handling, losses, compiled metrics and optimizers; reads a LoadedDataset's counts, writes nothing."""

from __future__ import annotations

import numpy as np


def imbalance_settings(data) -> tuple[dict | None, np.ndarray | None, list[float]]:
    """Class weights (binary, multiclass), positive weights (multilabel) and the initial output bias.

    The weights balance the loss, so the model sees rare findings as often as common ones. The bias
    starts each output at the constant that minimises that weighted loss (the prevalence as the
    weighting sees it: one half for balanced classes), so early epochs do not spend their updates on
    the base rate (Karpathy's "init well"). Under the weighting the outputs are not probabilities at
    the real prevalence; the calibration fitted on the validation split after training maps them back.
    """
    train = data.splits["train"]
    count = max(train.count, 1)
    positives = np.asarray(train.positives, dtype=np.float64)
    if data.task == "binary":
        positive = float(np.clip(positives[0], 1, count - 1)) if count > 1 else 1.0
        class_weight = {0: count / (2.0 * (count - positive)), 1: count / (2.0 * positive)}
        return class_weight, None, [0.0]
    if data.task == "multiclass":
        counts = np.clip(positives, 1, None)
        class_weight = {index: float(count / (len(counts) * c)) for index, c in enumerate(counts)}
        return class_weight, None, [0.0] * len(counts)
    rates = np.clip(positives, 1, count - 1) / count
    positive_weight = np.clip((1.0 - rates) / rates, 1.0, 100.0)
    # Weighted, a positive counts positive_weight times: the loss-minimising constant is that odds ratio.
    weighted_odds = rates * positive_weight / (1.0 - rates)
    return None, positive_weight.astype(np.float32), [float(v) for v in np.log(weighted_odds)]


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


def make_optimizer(name: str, learning_rate: float):
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=1e-4)
    if name == "nadam":
        return keras.optimizers.Nadam(learning_rate=learning_rate)
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True)


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
