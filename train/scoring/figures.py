"""Figures that runs log as PNG artifacts: training curves, ROC curves, confusion matrices, sample grids, Grad-CAM; matplotlib only, reads nothing."""

from __future__ import annotations

import numpy as np

from train.data.labels import is_positive
from train.scoring.metrics import decisions, label_text, threshold_metrics

# The sample grid of evaluation runs is SAMPLE_GRID x SAMPLE_GRID images.
SAMPLE_GRID = 3


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def close_figures() -> None:
    """Free logged figures; pyplot keeps every open figure alive otherwise."""
    _pyplot().close("all")


def curves_figure(history: dict[str, list[float]], best_epoch: int):
    """Training curves: loss, AUROC and the other metrics, train against validation, best epoch marked."""
    plt = _pyplot()
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
    figure.suptitle(f"training curves (best: epoch {best_epoch + 1}, MLflow step {best_epoch})")
    figure.tight_layout()
    return figure


def roc_figure(labels, probabilities, task: str, class_names: list[str], threshold, specificity: float):
    """ROC curve per output with its AUROC, the operating point at `threshold` (x; one or one per output)
    and the point at `specificity` (o)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    labels = np.asarray(labels).reshape(len(labels), -1)
    probabilities = np.asarray(probabilities).reshape(len(probabilities), -1)
    names = [class_names[1]] if task == "binary" else list(class_names)
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(names),))
    figure, axis = plt.subplots(figsize=(5.5, 5.0))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    axis.axvline(1.0 - specificity, color="grey", linestyle="--", linewidth=0.6)
    for index, name in enumerate(names):
        truth = is_positive(labels[:, index])
        if len(np.unique(truth)) < 2:
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(truth, probabilities[:, index])
        auroc = roc_auc_score(truth, probabilities[:, index])
        (line,) = axis.plot(false_positive_rate, true_positive_rate, label=f"{name} (AUROC {auroc:.3f})")
        if task != "multiclass":
            point = threshold_metrics(truth, probabilities[:, index] >= thresholds[index])
            axis.plot(1.0 - point["specificity"], point["recall"], "x", color=line.get_color(), markersize=8)
        # The operating point of sensitivity_at_specificity: the best sensitivity left of the dashed line.
        allowed = false_positive_rate <= (1.0 - specificity) + 1e-12
        point = int(np.argmax(np.where(allowed, true_positive_rate, -1.0)))
        axis.plot(false_positive_rate[point], true_positive_rate[point], "o", color=line.get_color(), fillstyle="none")
    title = f"ROC (x: operating point, o: specificity {specificity:g})"
    return _unit_square(
        figure,
        axis,
        ("1 - specificity (false positive rate)", "sensitivity (true positive rate)"),
        title,
        "lower right",
    )


def confusion_figure(matrices: list[np.ndarray], task: str, class_names: list[str], threshold):
    """Confusion matrices with counts: one panel (binary, multiclass) or one 2x2 panel per label (multilabel)."""
    plt = _pyplot()
    if task == "multilabel":
        titles = list(class_names)
        ticks = [["absent", "present"]] * len(matrices)
    elif task == "binary":
        titles = [f"threshold {float(np.ravel(threshold)[0]):.3g}"]
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


def samples_figure(images: np.ndarray, labels, probabilities, task: str, class_names: list[str], threshold):
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


def reliability_figure(labels, raw, calibrated, task: str, names: list[str], split: str, bins: int = 10):
    """Reliability diagram of a split: observed frequency against mean predicted probability, before and after calibration.

    Binary and multi-label outputs are pooled over classes; multi-class uses the top predicted class.
    """
    plt = _pyplot()
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    figure, axis = plt.subplots(figsize=(5.2, 5.0))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8, label="perfectly calibrated")
    for probabilities, label, style in ((raw, "before calibration", "--"), (calibrated, "after calibration", "-")):
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
        if task == "multiclass":
            top = probabilities.argmax(axis=1)
            predicted = probabilities[np.arange(len(top)), top]
            observed = labels[np.arange(len(top)), top]
        else:
            predicted, observed = probabilities.reshape(-1), labels.reshape(-1)
        index = np.minimum((predicted * bins).astype(int), bins - 1)
        counts = np.bincount(index, minlength=bins)
        filled = counts > 0
        mean_predicted = np.bincount(index, weights=predicted, minlength=bins)[filled] / counts[filled]
        frequency = np.bincount(index, weights=observed, minlength=bins)[filled] / counts[filled]
        axis.plot(mean_predicted, frequency, style, marker="o", label=label)
    what = "top class" if task == "multiclass" else ("all classes pooled" if len(names) > 1 else names[0])
    labels_xy = ("mean predicted probability", "observed frequency")
    return _unit_square(figure, axis, labels_xy, f"reliability, {split} split ({what})", "upper left")


def _unit_square(figure, axis, axis_labels: tuple[str, str], title: str, legend: str):
    """Finish a plot of rates on [0, 1] x [0, 1]: axis labels, title, limits, grid and legend."""
    axis.set_xlabel(axis_labels[0])
    axis.set_ylabel(axis_labels[1])
    axis.set_title(title, fontsize=10)
    axis.set_xlim(-0.01, 1.01)
    axis.set_ylim(-0.01, 1.01)
    axis.grid(alpha=0.3)
    axis.legend(loc=legend, fontsize=8)
    figure.tight_layout()
    return figure
