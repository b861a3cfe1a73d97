"""Applies a fitted calibration to model probabilities: reads the calibration stored in classifier.json, returns calibrated probabilities (NumPy only).

Training fits it on the validation split (train/scoring/calibration.py): Platt scaling per sigmoid
output (binary, multi-label) or temperature scaling with a bias per class (multi-class). The
served model, `evaluate` and the pipeline all call `apply_calibration`, so every probability a
user sees is the calibrated one.
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped this far from 0 and 1 before they become logits.
EPSILON = 1e-7


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    return np.log(clipped) - np.log1p(-clipped)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = values - values.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def apply_calibration(probabilities: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Calibrated probabilities [N, outputs]; None or an empty calibration returns them unchanged."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if not calibration:
        return probabilities
    method = calibration.get("method")
    if method == "platt":
        slope = np.asarray(calibration["slope"], dtype=np.float64)
        intercept = np.asarray(calibration["intercept"], dtype=np.float64)
        return sigmoid(logits_of(probabilities) * slope + intercept)
    if method == "temperature":
        log_probabilities = np.log(np.clip(probabilities, EPSILON, 1.0))
        bias = np.asarray(calibration.get("bias", np.zeros(probabilities.shape[1])), dtype=np.float64)
        return softmax(log_probabilities / float(calibration["temperature"]) + bias)
    raise ValueError(f"unknown calibration method {method!r}; expected platt or temperature")
