"""Fits probability calibration on the validation split: reads labels and model probabilities; returns the parameters serve/calibration.py applies.

Class weights and positive weights make the loss balanced, so the raw outputs of a trained model
are scores, not probabilities of the finding at its real prevalence. Calibration maps them back:
Platt scaling (a slope and an intercept on the logit) per sigmoid output, or temperature scaling
with a bias per class for softmax outputs. Both keep the ranking, so AUROC does not change.
"""

from __future__ import annotations

import numpy as np

from serve.calibration import EPSILON, apply_calibration, logits_of, softmax
from train.data.labels import is_positive


def fit_platt(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of sigmoid(slope * logit(p) + intercept) that minimise the log loss (identity if one-sided)."""
    from sklearn.linear_model import LogisticRegression

    truth = is_positive(np.asarray(labels).reshape(-1))
    if truth.all() or not truth.any():
        return 1.0, 0.0
    # A very weak penalty: the two parameters are fitted by maximum likelihood, not shrunk.
    model = LogisticRegression(C=1e6, max_iter=1000)
    model.fit(logits_of(probabilities).reshape(-1, 1), truth)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, list[float]]:
    """Temperature and per-class bias of softmax(log p / T + b) that minimise the log loss."""
    from scipy.optimize import minimize

    log_probabilities = np.log(np.clip(probabilities, EPSILON, 1.0))
    targets = np.asarray(labels).argmax(axis=1)
    classes = log_probabilities.shape[1]

    def loss(parameters: np.ndarray) -> float:
        calibrated = softmax(log_probabilities / np.exp(parameters[0]) + parameters[1:])
        return float(-np.mean(np.log(np.clip(calibrated[np.arange(len(targets)), targets], EPSILON, 1.0))))

    result = minimize(loss, np.zeros(classes + 1), method="L-BFGS-B")
    bias = result.x[1:] - result.x[1:].mean()
    return float(np.exp(result.x[0])), [float(value) for value in bias]


def fit_calibration(labels: np.ndarray, probabilities: np.ndarray, task: str) -> dict:
    """The calibration of a model's outputs, fitted on (validation) labels and raw probabilities."""
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if task == "multiclass":
        temperature, bias = fit_temperature(labels, probabilities)
        return {"method": "temperature", "temperature": temperature, "bias": bias, "fitted_on": "val"}
    fitted = [fit_platt(labels[:, index], probabilities[:, index]) for index in range(labels.shape[1])]
    return {
        "method": "platt",
        "slope": [slope for slope, _ in fitted],
        "intercept": [intercept for _, intercept in fitted],
        "fitted_on": "val",
    }


__all__ = ["apply_calibration", "fit_calibration"]
