"""Paired comparison of two models scored on the same images: DeLong's test and a paired bootstrap (NumPy and SciPy; reads and writes nothing).

DeLong, E. R., DeLong, D. M. and Clarke-Pearson, D. L. (1988). Comparing the areas under two or more
correlated receiver operating characteristic curves: a nonparametric approach. Biometrics 44(3), 837-845.
The structural components are computed with midranks as in Sun, X. and Xu, W. (2014), Fast implementation
of DeLong's algorithm for comparing the areas under correlated receiver operating characteristic curves,
IEEE Signal Processing Letters 21(11), 1389-1393.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata

from train.data.labels import is_positive
from train.scoring.metrics import BOOTSTRAP_SAMPLES, CONFIDENCE, bootstrap, class_mean, interval, weighted_auroc


@dataclass(frozen=True)
class Comparison:
    """Challenger minus champion on one metric: the difference, its 95% interval, a two-sided p-value and how."""

    metric: str
    challenger: float
    champion: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and DeLong's structural components: V10 per positive, V01 per negative (ties count one half)."""
    truth = is_positive(np.asarray(labels).reshape(-1))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives, negatives = scores[truth], scores[~truth]
    m, n = len(positives), len(negatives)
    if m == 0 or n == 0:
        raise ValueError("DeLong's test needs positive and negative examples")
    combined = rankdata(np.concatenate([positives, negatives]))
    # Midranks among all examples minus midranks within a class count the other class below (ties half).
    v10 = (combined[:m] - rankdata(positives)) / n
    v01 = 1.0 - (combined[m:] - rankdata(negatives)) / m
    return float(v10.mean()), v10, v01


def delong_test(labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray, metric: str = "auroc") -> Comparison:
    """DeLong's test for two correlated AUROCs on the same examples (two-sided, normal approximation)."""
    auc_a, v10_a, v01_a = delong_components(labels, challenger)
    auc_b, v10_b, v01_b = delong_components(labels, champion)
    m, n = len(v10_a), len(v01_a)
    s10 = np.cov(np.vstack([v10_a, v10_b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01_a, v01_b])) if n > 1 else np.zeros((2, 2))
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    difference = auc_a - auc_b
    if variance <= 0:
        # Identical rankings: no difference and no uncertainty about it.
        return Comparison(
            metric, auc_a, auc_b, difference, difference, difference, 1.0 if difference == 0 else 0.0, "delong"
        )
    standard_error = float(np.sqrt(variance))
    z = norm.ppf(0.5 + CONFIDENCE / 2.0)
    p_value = float(2.0 * norm.sf(abs(difference) / standard_error))
    return Comparison(
        metric,
        auc_a,
        auc_b,
        difference,
        difference - z * standard_error,
        difference + z * standard_error,
        p_value,
        "delong",
    )


def paired_bootstrap(
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    classes: np.ndarray,
    *,
    metric: str = "mean_auroc",
    groups: np.ndarray | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Comparison:
    """Mean AUROC over `classes`, challenger minus champion, resampling the same examples (whole patients) for both.

    The p-value is two-sided from the normal approximation of the bootstrap distribution of the difference.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    challenger = np.asarray(challenger, dtype=np.float64).reshape(len(challenger), -1)
    champion = np.asarray(champion, dtype=np.float64).reshape(len(champion), -1)

    def means(weights: np.ndarray) -> dict[str, np.ndarray]:
        mean = {}
        for name, scores in (("challenger", challenger), ("champion", champion)):
            values = [weighted_auroc(labels[:, index], scores[:, index], weights) for index in classes]
            mean[name] = class_mean(np.stack(values))
        return {**mean, "difference": mean["challenger"] - mean["champion"]}

    point = {name: float(values[0]) for name, values in means(np.ones((1, len(labels)))).items()}
    resampled = bootstrap(means, groups, len(labels), samples=samples, seed=seed)["difference"]
    low, high = interval(resampled)
    spread = float(np.nanstd(resampled, ddof=1))
    difference = point["difference"]
    p_value = float(2.0 * norm.sf(abs(difference) / spread)) if spread > 0 else (1.0 if difference == 0 else 0.0)
    return Comparison(
        metric, point["challenger"], point["champion"], difference, low, high, p_value, "paired bootstrap"
    )
