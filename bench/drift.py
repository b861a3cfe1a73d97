"""Measures drift figures and the label-free performance estimate against the truth on shifted synthetic test sets: trains a small_cnn into a temporary store, prints a Markdown table.

The model is trained by the `main` job on synthetic cells (its validation split becomes the monitoring
reference). Test sets of new cells with known labels are scored by the served pyfunc and watched by
serve.monitoring, as the app does: unchanged, darkened, with lower contrast, inverted, and with a
different class mix. For each set the table gives the score PSI against its alert threshold, the input
intensity PSI, the positive share against the validation split's, and the estimated AUROC and
sensitivity (from calibrated probabilities, no labels) beside the true ones (from the labels).

    .venv/bin/python bench/drift.py
    .venv/bin/python bench/drift.py --examples 600 --epochs 5 --test-images 1000
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from serve.monitoring import PSI_FLOOR  # noqa: E402

POSITIVE = "parasitized"
# Shifts of the test images (float arrays in 0-255) and of the class mix.
SHIFTS = {
    "none": lambda images: images,
    "darker (x0.7)": lambda images: images * 0.7,
    "darker (x0.5)": lambda images: images * 0.5,
    "lower contrast (x0.6)": lambda images: (images - 128.0) * 0.6 + 128.0,
    "inverted": lambda images: 255.0 - images,
}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/drift.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--examples", type=int, default=600, help="synthetic examples for train/val/test, at most 600 (default: 600)"
    )
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    parser.add_argument("--image-size", type=int, default=64, help="model input size (default: 64)")
    parser.add_argument("--test-images", type=int, default=1000, help="images per test set (default: 1000)")
    return parser.parse_args(argv)


def trained_model(arguments: argparse.Namespace) -> str:
    from train.job.trainer import train
    from train.settings import MainSettings

    settings = MainSettings.from_dict(
        {
            "image_size": arguments.image_size,
            "epochs": arguments.epochs,
            "max_examples": arguments.examples,
            "validation_fraction": 0.2,
        }
    )
    return train(settings).model_uri


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_sets(arguments: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each shifted test set as (images float [N, S, S, 3], labels [N]); new cells, not the training ones."""
    from train.data.synthetic import generate

    images, labels, _ = generate(2 * arguments.test_images, arguments.image_size, "binary", seed=2024)
    images, labels = images.astype(np.float64), labels[:, 0]
    half = slice(0, arguments.test_images)
    sets = {name: (shift(images[half]), labels[half]) for name, shift in SHIFTS.items()}
    # A different class mix: nine positives in ten, the images unchanged.
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    count = min(len(positives), arguments.test_images * 9 // 10)
    chosen = np.concatenate([positives[:count], negatives[: count // 9]])
    sets["90% positive"] = (images[chosen], labels[chosen])
    return sets


def watch(model, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score one test set through the pyfunc, observe it as the app does, and add the true figures."""
    from sklearn.metrics import roc_auc_score

    from serve.monitoring import DriftMonitor

    config = model.config
    monitor = DriftMonitor.for_config(config, window=len(images))
    encoded = [png(image) for image in images]
    rows = model.predict(encoded).to_dict("records")
    for data, row in zip(encoded, rows, strict=True):
        monitor.observe(row, monitor.image_statistics(data, answer_row=row))
    figures = monitor.figures()
    scores = np.array([row[POSITIVE] for row in rows])
    called = scores >= config.thresholds[0]
    figures["true_auroc"] = float(roc_auc_score(labels, scores)) if 0 < labels.mean() < 1 else float("nan")
    figures["true_sensitivity"] = float(called[labels == 1].mean())
    figures["true_positive_share"] = float(labels.mean())
    return figures


def number(figures: dict[str, float], key: str, digits: int = 2) -> str:
    """A figure rounded, or `undefined` (the monitor leaves out what the window cannot define, e.g. the expected
    AUROC when every answer has probability 1)."""
    value = figures.get(key, float("nan"))
    return f"{value:.{digits}f}" if np.isfinite(value) else "undefined"


def table(results: dict[str, dict[str, float]]) -> str:
    """The Markdown table of the docs."""
    header = (
        "| test set | score PSI (threshold) | intensity PSI (threshold) | positive share (validation) "
        "| AUROC estimated / true | sensitivity estimated / true | expected / true positive share |"
    )
    lines = [header, "|" + "---|" * 7]
    for name, f in results.items():
        threshold = max(PSI_FLOOR, f[f"score_psi_critical.{POSITIVE}"])
        score = f"{number(f, f'score_psi.{POSITIVE}')} ({threshold:.2f})"
        threshold = max(PSI_FLOOR, f["input_psi_critical.intensity"])
        intensity = f"{number(f, 'input_psi.intensity')} ({threshold:.2f})"
        share = f"{number(f, f'positive_rate.{POSITIVE}')} ({number(f, f'reference_positive_rate.{POSITIVE}')})"
        auroc = f"{number(f, f'estimated_auroc.{POSITIVE}', 3)} / {number(f, 'true_auroc', 3)}"
        sensitivity = f"{number(f, f'estimated_sensitivity.{POSITIVE}', 3)} / {number(f, 'true_sensitivity', 3)}"
        expected = f"{number(f, f'expected_positive_rate.{POSITIVE}')} / {number(f, 'true_positive_share')}"
        lines.append(f"| {name} | {score} | {intensity} | {share} | {auroc} | {sensitivity} | {expected} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as workdir:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(workdir) / 'mlflow.db'}"
        import mlflow

        from serve.loaded import LoadedModel

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        model = LoadedModel.load(trained_model(arguments))
        reference = model.config.reference
        results = {name: watch(model, images, labels) for name, (images, labels) in test_sets(arguments).items()}
    print(
        f"\nsmall_cnn at {arguments.image_size} px, {arguments.examples} synthetic cells, {arguments.epochs} epochs; "
        f"reference: {reference['examples']} validation images; {arguments.test_images} new cells per test set\n"
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
