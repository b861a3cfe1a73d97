"""Classification metrics of predicted probabilities against labels: pure NumPy and scikit-learn, reads and writes nothing.

Used by the training loop (per-epoch validation AUROC, test scoring), by `evaluate` and by the
eval-and-deploy pipeline, so every reported number comes from the same code.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from serve.contract import DEFAULT_THRESHOLD
from train.data.labels import is_positive
from train.scoring.operating_point import REPORTED_SPECIFICITY, parse_operating_point


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


def sensitivity_at_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float) -> tuple[float, float]:
    """Highest sensitivity whose specificity is at least `specificity`, and the score threshold that gives it."""
    from sklearn.metrics import roc_curve

    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores)
    allowed = false_positive_rate <= (1.0 - specificity) + 1e-12
    index = int(np.argmax(np.where(allowed, true_positive_rate, -1.0)))
    return float(true_positive_rate[index]), float(np.clip(thresholds[index], 0.0, 1.0))


def threshold_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy, precision (= PPV), recall (= sensitivity), specificity, NPV and F1 of binary decisions.

    Both names are reported: clinicians read sensitivity and PPV, ML tooling expects recall and precision.
    """
    truth = truth.astype(bool)
    predicted = predicted.astype(bool)
    true_positive = float(np.sum(truth & predicted))
    false_positive = float(np.sum(~truth & predicted))
    false_negative = float(np.sum(truth & ~predicted))
    true_negative = float(np.sum(~truth & ~predicted))
    precision = true_positive / (true_positive + false_positive) if true_positive + false_positive else 0.0
    recall = true_positive / (true_positive + false_negative) if true_positive + false_negative else 0.0
    specificity = true_negative / (true_negative + false_positive) if true_negative + false_positive else 0.0
    npv = true_negative / (true_negative + false_negative) if true_negative + false_negative else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(truth == predicted)) if len(truth) else 0.0,
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": specificity,
        "ppv": precision,
        "npv": npv,
        "f1": f1,
    }


def decisions(probabilities: np.ndarray, task: str, threshold) -> np.ndarray:
    """Predicted 0/1 matrix [N, outputs]: thresholded for binary and multilabel, one-hot argmax for multiclass.

    `threshold` is one number or one per output (the stored operating points).
    """
    probabilities = np.asarray(probabilities).reshape(len(probabilities), -1)
    if task == "multiclass":
        return np.eye(probabilities.shape[1], dtype=int)[probabilities.argmax(axis=1)]
    return (probabilities >= np.asarray(threshold, dtype=np.float64)).astype(int)


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    task: str,
    class_names: list[str],
    *,
    threshold=DEFAULT_THRESHOLD,
    specificity: float = REPORTED_SPECIFICITY,
) -> dict[str, float]:
    """Every evaluation metric, unprefixed; `threshold` is one number or one per output.

    binary: auroc, accuracy, precision, recall, specificity, npv, f1 (at threshold), sensitivity_at_specificity
    and threshold_at_specificity. multilabel and multiclass: the same per class as <name>_<class>
    (one-vs-rest), their unweighted means under the plain names, and for multilabel `exact_match`
    (every label right) and `mean_auroc`. Multiclass decisions are the most probable class.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if labels.shape != probabilities.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape} must have the same shape")
    metrics = dict(auroc_scores(labels, probabilities, task, class_names))
    predicted = decisions(probabilities, task, threshold)
    truth = is_positive(labels)
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
            # Means run over the classes this split can score (both label values present), as mean AUROC does.
            if len(np.unique(truth[:, index])) == 2:
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
    truth = is_positive(labels).astype(int)
    return [confusion_matrix(truth[:, index], predicted[:, index], labels=[0, 1]) for index in range(labels.shape[1])]


def label_text(row: np.ndarray, task: str, class_names: list[str]) -> str:
    """Human-readable label(s) of one 0/1 (or probability, thresholded at 0.5) row."""
    row = np.asarray(row).reshape(-1)
    if task == "binary":
        return class_names[int(is_positive(row[0]))]
    if task == "multiclass":
        return class_names[int(row.argmax())]
    present = [name for name, value in zip(class_names, row, strict=True) if is_positive(value)]
    return "+".join(present) if present else "none"


# Uncertainty: bootstrap resampling by patient (or by example when patients are unknown).

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_CHUNK = 100
CONFIDENCE = 0.95


def bootstrap_weights(groups: np.ndarray | None, count: int, samples: int, seed: int):
    """Yield [chunk, count] multiplicities of bootstrap resamples; whole groups (patients) are drawn together."""
    generator = np.random.default_rng(seed)
    if groups is None:
        inverse = np.arange(count)
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        inverse = inverse.reshape(-1)
    group_count = int(inverse.max()) + 1 if count else 0
    for start in range(0, samples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, samples - start)
        drawn = generator.multinomial(group_count, np.full(group_count, 1.0 / group_count), size=size)
        yield drawn[:, inverse].astype(np.float64)


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one class for each row of `weights` [B, N] (example multiplicities); ties count one half.

    The Mann-Whitney form: the weighted share of (positive, negative) pairs ranked the right way.
    NaN where a resample has no positive or no negative.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    positive = is_positive(np.asarray(labels)[order]).astype(np.float64)
    weights = np.atleast_2d(weights)[:, order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    positives = np.add.reduceat(weights * positive, starts, axis=1)
    negatives = np.add.reduceat(weights * (1.0 - positive), starts, axis=1)
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (positives * (negatives_below + 0.5 * negatives)).sum(axis=1) / pairs, np.nan)


def interval(values: np.ndarray) -> tuple[float, float]:
    """The central CONFIDENCE interval of bootstrap values (NaN resamples left out)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def rates_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float, weights: np.ndarray) -> dict:
    """Sensitivity, specificity, PPV and NPV at `threshold` for each row of `weights` [B, N]."""
    truth = is_positive(labels)
    called = np.asarray(scores) >= threshold
    weights = np.atleast_2d(weights)
    counts = {
        "tp": weights @ (truth & called),
        "fn": weights @ (truth & ~called),
        "tn": weights @ (~truth & ~called),
        "fp": weights @ (~truth & called),
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": counts["tp"] / (counts["tp"] + counts["fn"]),
            "specificity": counts["tn"] / (counts["tn"] + counts["fp"]),
            "ppv": counts["tp"] / (counts["tp"] + counts["fp"]),
            "npv": counts["tn"] / (counts["tn"] + counts["fn"]),
        }


def scored_classes(labels: np.ndarray) -> np.ndarray:
    """Boolean per output: the split has both label values, so the class's AUROC is defined."""
    labels = is_positive(np.asarray(labels).reshape(len(labels), -1))
    return labels.any(axis=0) & (~labels).any(axis=0)


def bootstrap(statistics, groups: np.ndarray | None, count: int, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0):
    """Run `statistics(weights [chunk, count]) -> {name: [chunk] values}` over bootstrap resamples; concatenate."""
    collected: dict[str, list[np.ndarray]] = {}
    for weights in bootstrap_weights(groups, count, samples, seed):
        for name, values in statistics(weights).items():
            collected.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def class_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the first axis (classes) of the finite values; NaN where a resample has none (no warning)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    sums = np.where(finite, values, 0.0).sum(axis=0)
    return np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)


def calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of one output: the count-weighted gap between mean probability and frequency per bin."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if len(labels) == 0:
        return float("nan")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    predicted = np.bincount(index, weights=probabilities, minlength=bins)
    observed = np.bincount(index, weights=labels, minlength=bins)
    return float(np.sum(np.abs(predicted - observed)) / len(labels))


def calibration_scores(labels: np.ndarray, probabilities: np.ndarray, task: str) -> dict[str, float]:
    """ECE and Brier score: binary on the positive class, multilabel averaged over labels, multiclass top-label ECE."""
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if task == "multiclass":
        top = probabilities.argmax(axis=1)
        correct = labels[np.arange(len(labels)), top]
        return {
            "ece": calibration_error(correct, probabilities[np.arange(len(labels)), top]),
            "brier": float(np.mean(np.sum((probabilities - labels) ** 2, axis=1))),
        }
    errors = [calibration_error(labels[:, index], probabilities[:, index]) for index in range(labels.shape[1])]
    return {"ece": float(np.mean(errors)), "brier": float(np.mean((probabilities - labels) ** 2))}


def choose_threshold(labels: np.ndarray, scores: np.ndarray, rule: str) -> float:
    """The decision threshold of one output chosen on `scores` by the operating-point rule.

    youden: the threshold maximising sensitivity + specificity - 1, in the middle of the range of thresholds
    that reach that maximum (a separable validation split ties every threshold between its highest negative
    and lowest positive score; the middle keeps a margin to both); sensitivity:x: the highest threshold whose
    sensitivity is at least x (best specificity there); specificity:x: the lowest threshold whose specificity
    is at least x (best sensitivity there); a number: that threshold.
    """
    from sklearn.metrics import roc_curve

    kind, value = parse_operating_point(rule)
    if kind == "threshold":
        return value
    truth = is_positive(np.asarray(labels).reshape(-1))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if truth.all() or not truth.any():
        raise ValueError("the operating point needs positive and negative examples in the validation split")
    if kind == "youden":
        return youden_threshold(truth, scores)
    false_positive_rate, true_positive_rate, thresholds = roc_curve(truth, scores)
    # roc_curve starts with an infinite threshold that calls nothing positive.
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if kind == "sensitivity":
        index = int(np.flatnonzero(true_positive_rate >= value - 1e-12)[0])
    else:
        allowed = np.flatnonzero(false_positive_rate <= 1.0 - value + 1e-12)
        index = int(allowed[-1])
    return float(thresholds[index])


def youden_threshold(truth: np.ndarray, scores: np.ndarray) -> float:
    """The middle of the widest run of thresholds that maximise Youden's J (sensitivity + specificity - 1).

    A threshold t calls `score >= t` positive; between two neighbouring distinct scores every threshold gives
    the same decisions, so each distinct score s_i stands for the interval (s_{i+1}, s_i] of thresholds.
    """
    distinct = np.unique(scores)[::-1]
    positives, negatives = truth.sum(), (~truth).sum()
    called = scores[None, :] >= distinct[:, None]
    youden = (called & truth).sum(axis=1) / positives - (called & ~truth).sum(axis=1) / negatives
    best = np.flatnonzero(youden >= youden.max() - 1e-12)
    # Contiguous runs of tied indices; each run covers (score below its last index, score of its first index].
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    intervals = []
    for run in runs:
        high = float(distinct[run[0]])
        low = float(distinct[run[-1] + 1]) if run[-1] + 1 < len(distinct) else 0.0
        intervals.append((high - low, low, high))
    _, low, high = max(intervals)
    return float(np.clip((low + high) / 2.0, 0.0, 1.0))


def class_table(labels: np.ndarray, task: str, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    """The output columns' names (binary: the positive class) and which of them this split can score."""
    names = [class_names[1]] if task == "binary" else list(class_names)
    return names, scored_classes(labels)


def uncertainty(
    labels: np.ndarray,
    probabilities: np.ndarray,
    task: str,
    class_names: list[str],
    *,
    thresholds=None,
    groups: np.ndarray | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, list]]:
    """95% bootstrap intervals of AUROC (per class and mean over the scored classes) and of sensitivity,
    specificity, PPV and NPV at the thresholds; resampled by `groups` (patients) when given.

    Returns metrics named like classification_metrics' with `_ci_low`/`_ci_high` appended, plus
    `n_classes` and `n_classes_scored`, and a per-class table (positives, negatives, scored, values, CIs).
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    names, scored = class_table(labels, task, class_names)
    thresholds = None if task == "multiclass" or thresholds is None else np.broadcast_to(thresholds, len(names))
    point = np.ones((1, len(labels)))

    def statistics(weights: np.ndarray) -> dict[str, np.ndarray]:
        values = {}
        for index in np.flatnonzero(scored):
            values[f"auroc/{index}"] = weighted_auroc(labels[:, index], probabilities[:, index], weights)
            if thresholds is not None:
                rates = rates_at_threshold(labels[:, index], probabilities[:, index], thresholds[index], weights)
                values.update({f"{name}/{index}": rate for name, rate in rates.items()})
        return values

    estimates = {key: value[0] for key, value in statistics(point).items()}
    resampled = bootstrap(statistics, groups, len(labels), samples=samples, seed=seed)
    metrics: dict[str, float] = {"n_classes": float(len(names)), "n_classes_scored": float(scored.sum())}
    table: dict[str, list] = {
        "class": names,
        "positives": [int(value) for value in is_positive(labels).sum(axis=0)],
        "negatives": [int(value) for value in (~is_positive(labels)).sum(axis=0)],
        "scored": [bool(value) for value in scored],
    }
    statistic_names = ["auroc"] + (["sensitivity", "specificity", "ppv", "npv"] if thresholds is not None else [])
    if thresholds is not None:
        table["threshold"] = [float(value) for value in thresholds]
    for statistic in statistic_names:
        columns = {"": [], "_ci_low": [], "_ci_high": []}
        for index, name in enumerate(names):
            key = f"{statistic}/{index}"
            value, (low, high) = estimates.get(key, np.nan), interval(resampled.get(key, np.array([])))
            for suffix, number in (("", value), ("_ci_low", low), ("_ci_high", high)):
                columns[suffix].append(float(number))
                if suffix and np.isfinite(number):
                    metrics[f"{statistic}{'' if task == 'binary' else '_' + metric_safe(name)}{suffix}"] = float(number)
        table.update({f"{statistic}{suffix}": values for suffix, values in columns.items()})
        if task != "binary" and scored.any():
            # The mean over the fixed set of scored classes, resampled as one number.
            keys = [f"{statistic}/{index}" for index in np.flatnonzero(scored)]
            mean_name = "mean_auroc" if statistic == "auroc" and task == "multilabel" else statistic
            low, high = interval(class_mean(np.stack([resampled[key] for key in keys])))
            metrics.update({f"{mean_name}_ci_low": low, f"{mean_name}_ci_high": high})
    return metrics, table


def mean_auroc_with_interval(
    labels, probabilities, classes: np.ndarray, groups, seed: int
) -> tuple[float, float, float]:
    """Mean AUROC over the given class indices and its bootstrap interval."""
    if len(classes) == 0 or len(labels) == 0:
        return float("nan"), float("nan"), float("nan")

    def statistics(weights: np.ndarray) -> dict[str, np.ndarray]:
        values = [weighted_auroc(labels[:, index], probabilities[:, index], weights) for index in classes]
        return {"mean": class_mean(np.stack(values))}

    point = float(statistics(np.ones((1, len(labels))))["mean"][0])
    low, high = interval(bootstrap(statistics, groups, len(labels), seed=seed)["mean"])
    return point, low, high


def subgroup_table(
    metadata: dict[str, np.ndarray],
    labels: np.ndarray,
    probabilities: np.ndarray,
    task: str,
    class_names: list[str],
    groups: np.ndarray | None,
    seed: int,
) -> tuple[dict[str, list], dict[str, float]]:
    """Mean AUROC per subgroup of each metadata attribute, with counts and 95% intervals, and the best-worst gaps.

    Within one attribute every subgroup is scored over the same classes: those with both label values
    in every one of its subgroups, so the subgroups' numbers can be compared.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    columns = ("attribute", "subgroup", "examples", "patients", "n_classes_scored", "mean_auroc", "ci_low", "ci_high")
    table: dict[str, list] = {name: [] for name in columns}
    gaps: dict[str, float] = {}
    for attribute, values in metadata.items():
        values = np.asarray(values).astype(str)
        subgroups = [value for value in np.unique(values) if value not in ("", "nan", "unknown")]
        members = {value: np.flatnonzero(values == value) for value in subgroups}
        common = np.ones(labels.shape[1], dtype=bool)
        for indices in members.values():
            common &= scored_classes(labels[indices])
        classes = np.flatnonzero(common)
        aurocs = []
        for value, indices in members.items():
            member_groups = None if groups is None else np.asarray(groups)[indices]
            point, low, high = mean_auroc_with_interval(
                labels[indices], probabilities[indices], classes, member_groups, seed
            )
            patients = len(indices) if member_groups is None else len(np.unique(member_groups))
            row = (attribute, value, len(indices), patients, len(classes), point, low, high)
            for name, cell in zip(columns, row, strict=True):
                table[name].append(cell)
            aurocs.append(point)
        finite = [value for value in aurocs if np.isfinite(value)]
        if len(finite) >= 2:
            gaps[attribute] = float(max(finite) - min(finite))
    return table, gaps
