"""Watches a served model without labels: reads its answers and input images, writes drift and estimated-performance figures (a dict, or Prometheus gauges).

What is measured, over a sliding window of the last `window` answers (500 by default):
- per output class, the population stability index (PSI) of the calibrated scores in ten fixed bins
  (0-0.1, ..., 0.9-1) against the same bins of the validation split; the share of answers at or above
  the class's operating point (multiclass: the most probable class) against the validation share;
- estimated performance without labels (the confidence-based estimate): a calibrated probability p is
  the chance that the finding is present, so the expected positive rate is the mean of p, the expected
  sensitivity at the operating point is sum(p of answers called positive) / sum(p), and the expected
  AUROC counts every pair of answers as a positive-negative pair with weight p_i (1 - p_j). These
  hold only while calibration holds: a shifted input that the model scores confidently and wrongly
  moves them too little (docs/MONITORING.md shows the gap on a shifted test set);
- input drift, as a PSI per input feature: the mean intensity of the model-input image (16 bins over
  0-255), the size (the power of two at or above the longest side), the bit depth and the DICOM
  Modality (`none` for PNG, JPEG, ...). A feature the reference lacks is not compared.
Every PSI comes with `psi_critical`, the value that sampling noise alone exceeds 1% of the time for
this reference size n and window size m: PSI * n m / (n + m) follows a chi-square law with one degree
fewer than the bins that hold answers (Yurdakul, 2018). A tiny validation split (18 images) makes a
large critical value; the alert rules (monitoring/rules/) fire above the larger of it and 0.25.

The reference (`ModelReference`) is built at training time from the validation split after calibration
(train/job/stages.py) and stored in the served model's classifier.json (`ClassifierConfig.reference`);
a model logged before it existed has none, and its monitor reports `reference_available` 0 and
nothing else.

Where image statistics come from (`image_statistics`), the same way at training and answer time:
- width, height, bit depth and Modality from the encoded file's header alone (PIL's lazy header read,
  pydicom up to the pixel data): no pixel is decoded;
- mean intensity of the image the model saw (decoded by serve.preprocess, resized to the model's
  input size, 0-255, over all pixels and channels). At training time the validation tensors give it.
  At answer time it comes from, in this order: `pixels` the caller already holds (a decoded model
  input), the answer's `gradcam_input` column (explain=true answers carry the model input as a small
  PNG: the PACS worker asks for it anyway), or a second decode of the bytes at the model's input
  size (the app and the batch job: the answer contract carries no pixel statistics). The app
  observes the answer at once and adds the image's statistics (`observe_image`) after its response
  has left, so they cost the user no latency.

Use, in every place that answers (the app, the PACS worker, the batch job):

    monitor = DriftMonitor.for_config(classifier_config, window=500)  # or DriftMonitor(reference, outputs)
    stats = monitor.image_statistics(image_bytes, answer_row=row)     # None when nothing compares them
    monitor.observe(row, stats)                                       # row: one answer row (a mapping)
    monitor.figures()       # {"score_psi.<class>": ..., "estimated_auroc.<class>": ..., ...}: mlflow.log_metrics
    monitor.register(registry, model_name="...", model_version="3")   # Prometheus gauges on a registry

Thread-safe: answers may be observed from worker threads while a scrape reads the figures.
"""

from __future__ import annotations

import io
import math
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from serve.contract import (
    DEFAULT_THRESHOLD,
    EXPLAINED_INPUT_COLUMN,
    FRAME_COLUMN,
    MIDDLE_FRAME,
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    read_answer,
)

REFERENCE_FORMAT = 1
DEFAULT_WINDOW = 500
# A PSI counts as drift above the larger of this (the usual "significant shift") and psi_critical; the alert rules
# (monitoring/rules/medimg.rules.yml, clamp_min) use the same floor, and tests/test_monitoring.py holds them equal.
PSI_FLOOR = 0.25
SCORE_BINS = 10
INTENSITY_BIN_WIDTH = 16
# Added to every bin count of both distributions, so an empty bin gives a finite PSI.
SMOOTHING = 0.5
# The share of windows without drift whose PSI exceeds psi_critical.
FALSE_ALARM_RATE = 0.01
# Input features compared with the reference; each is a categorical distribution.
INPUT_FEATURES = ("intensity", "size", "bit_depth", "modality")
NOT_DICOM = "none"
# Labels of the per-class and per-feature gauges.
CLASS_LABEL = "class"
FEATURE_LABEL = "feature"


@dataclass(frozen=True)
class ImageStats:
    """Statistics of one input image; a field is None where it is not known (see `image_statistics`).

    mean_intensity: mean of the model-input image (0-255, all pixels and channels); width, height and
    bit_depth: of the stored image (its header); modality: the DICOM Modality, `none` for other formats.
    """

    mean_intensity: float | None = None
    width: int | None = None
    height: int | None = None
    bit_depth: int | None = None
    modality: str | None = None

    def categories(self) -> dict[str, str]:
        """The input features of this image that are known: feature name -> category."""
        found = {}
        if self.mean_intensity is not None and math.isfinite(self.mean_intensity):
            low = min(int(self.mean_intensity // INTENSITY_BIN_WIDTH) * INTENSITY_BIN_WIDTH, 256 - INTENSITY_BIN_WIDTH)
            found["intensity"] = f"{max(low, 0)}-{max(low, 0) + INTENSITY_BIN_WIDTH}"
        if self.width and self.height:
            found["size"] = str(2 ** math.ceil(math.log2(max(self.width, self.height))))
        if self.bit_depth:
            found["bit_depth"] = str(self.bit_depth)
        if self.modality is not None:
            found["modality"] = self.modality or "unknown"
        return found


def header_statistics(data: bytes) -> ImageStats:
    """Width, height, bit depth and Modality from the header of encoded image bytes, without decoding pixels.

    Bytes that are no readable image give an ImageStats of Nones (the model rejects them anyway).
    """
    from serve.preprocess import PNG_BIT_DEPTH_OFFSET, PNG_SIGNATURE, is_dicom, png_significant_bits, read_dicom

    if is_dicom(data):
        try:
            dataset = read_dicom(data, pixels=False)
        except ValueError:
            return ImageStats()
        bits = dataset.get("BitsStored") or dataset.get("BitsAllocated")
        return ImageStats(
            width=int(dataset.get("Columns") or 0) or None,
            height=int(dataset.get("Rows") or 0) or None,
            bit_depth=int(bits) if bits else None,
            modality=str(dataset.get("Modality", "")).strip().upper(),
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            bits = int(getattr(image, "bits", 8) or 8)
    except (UnidentifiedImageError, OSError, ValueError):
        return ImageStats()
    if data.startswith(PNG_SIGNATURE) and len(data) > PNG_BIT_DEPTH_OFFSET:
        bits = png_significant_bits(data) or data[PNG_BIT_DEPTH_OFFSET]
    return ImageStats(width=width, height=height, bit_depth=bits, modality=NOT_DICOM)


def mean_intensity(pixels) -> float:
    """Mean of a decoded image (H x W x C in 0-255) over all pixels and channels."""
    return float(np.mean(np.asarray(pixels, dtype=np.float64)))


def image_statistics(
    data: bytes,
    *,
    image_size: int,
    frame: int = MIDDLE_FRAME,
    pixels=None,
    answer_row: Mapping | None = None,
) -> ImageStats:
    """The ImageStats of one input: its header facts and the mean intensity of the image the model saw.

    The mean comes from `pixels` (a decoded model input the caller holds), else from the answer's
    `gradcam_input` PNG, else from decoding `data` (at `frame`) with serve.preprocess at `image_size`.
    """
    from dataclasses import replace

    header = header_statistics(data)
    if pixels is None and answer_row is not None and answer_row.get(EXPLAINED_INPUT_COLUMN):
        import base64

        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(str(answer_row[EXPLAINED_INPUT_COLUMN])))) as image:
            pixels = np.asarray(image.convert("RGB"))
    if pixels is None:
        from serve.preprocess import load_image_tensor

        try:
            pixels = load_image_tensor(data, image_size, frame).numpy()
        except Exception:  # The model refused these bytes too; a header-only record is still worth counting.
            return header
    return replace(header, mean_intensity=mean_intensity(pixels))


def category_counts(stats: Sequence[ImageStats]) -> dict[str, dict[str, int]]:
    """Per input feature, how many images fall in each category (features no image knows are left out)."""
    counts: dict[str, Counter] = {}
    for item in stats:
        for feature, category in item.categories().items():
            counts.setdefault(feature, Counter())[category] += 1
    return {feature: dict(sorted(counter.items())) for feature, counter in counts.items()}


def psi(reference: Sequence[float], window: Sequence[float]) -> float:
    """Population stability index of two histograms over the same bins: sum of (w - r) ln(w / r) over shares.

    Both are smoothed by adding SMOOTHING to every bin, so bins empty on one side stay finite.
    """
    expected = np.asarray(reference, dtype=np.float64) + SMOOTHING
    actual = np.asarray(window, dtype=np.float64) + SMOOTHING
    expected, actual = expected / expected.sum(), actual / actual.sum()
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_critical(reference_size: int, window_size: int, occupied_bins: int) -> float:
    """The PSI that sampling noise exceeds with probability FALSE_ALARM_RATE when nothing drifted.

    PSI * n m / (n + m) is about chi-square with (occupied bins - 1) degrees of freedom; its quantile is
    the Wilson-Hilferty approximation (within 1% of the exact quantile at every degree of freedom).
    """
    degrees = max(occupied_bins - 1, 1)
    z = NormalDist().inv_cdf(1.0 - FALSE_ALARM_RATE)
    quantile = degrees * (1.0 - 2.0 / (9.0 * degrees) + z * math.sqrt(2.0 / (9.0 * degrees))) ** 3
    return (1.0 / max(reference_size, 1) + 1.0 / max(window_size, 1)) * quantile


def categorical_psi(reference: Mapping[str, int], window: Mapping[str, int]) -> tuple[float, float]:
    """(PSI, its critical value) of two category -> count maps; categories missing on one side count 0."""
    categories = sorted(set(reference) | set(window))
    expected = [reference.get(name, 0) for name in categories]
    actual = [window.get(name, 0) for name in categories]
    occupied = sum(1 for a, b in zip(expected, actual, strict=True) if a or b)
    return psi(expected, actual), psi_critical(sum(expected), sum(actual), occupied)


def score_histogram(scores) -> list[int]:
    """Counts of scores in the ten fixed bins [0, 0.1), ..., [0.9, 1]."""
    scores = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
    bins = np.minimum(np.floor(scores * SCORE_BINS).astype(int), SCORE_BINS - 1)
    return np.bincount(bins, minlength=SCORE_BINS).astype(int).tolist()


def positive_calls(probabilities: np.ndarray, thresholds: Sequence[float] | None) -> np.ndarray:
    """Boolean [N, outputs]: at or above each output's threshold, or (thresholds None: multiclass) the top class."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if thresholds is None:
        return probabilities == probabilities.max(axis=1, keepdims=True)
    return probabilities >= np.asarray(thresholds, dtype=np.float64)


def expected_auroc(probabilities) -> float:
    """AUROC expected when each answer's label is drawn with its calibrated probability (NaN if undefined).

    Every ordered pair (i, j) counts as positive i against negative j with weight p_i (1 - p_j); ties count
    half and an answer is never paired with itself. O(n log n).
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    values, group = np.unique(p, return_inverse=True)
    positives = np.bincount(group, weights=p, minlength=len(values))
    negatives = np.bincount(group, weights=1.0 - p, minlength=len(values))
    below = np.cumsum(negatives) - negatives
    self_pairs = float(np.sum(p * (1.0 - p)))
    concordant = float(np.sum(positives * (below + 0.5 * negatives))) - 0.5 * self_pairs
    pairs = float(p.sum() * (1.0 - p).sum()) - self_pairs
    return concordant / pairs if pairs > 0 else float("nan")


def expected_sensitivity(probabilities, called) -> float:
    """Sensitivity expected at the operating point: sum of p over answers called positive / sum of p."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    total = float(p.sum())
    return float(p[np.asarray(called, dtype=bool).reshape(-1)].sum()) / total if total > 0 else float("nan")


@dataclass(frozen=True)
class ClassReference:
    """One output on the validation split: its calibrated scores in the fixed bins, its operating point
    (None: multiclass, the top class decides) and the share of examples called positive there."""

    score_counts: list[int]
    positive_rate: float
    threshold: float | None
    mean_probability: float


@dataclass(frozen=True)
class ModelReference:
    """What monitoring compares answers with: the validation split's scores per output and its input statistics."""

    task: str
    image_size: int
    examples: int
    classes: dict[str, ClassReference]
    inputs: dict[str, dict[str, int]] = field(default_factory=dict)
    mean_intensity: float | None = None
    split: str = "val"

    @classmethod
    def build(
        cls,
        probabilities,
        *,
        task: str,
        outputs: Sequence[str],
        thresholds: Sequence[float] | None,
        image_size: int,
        image_stats: Sequence[ImageStats] = (),
        split: str = "val",
    ) -> ModelReference:
        """From calibrated probabilities [N, outputs] of a split, its thresholds and its images' statistics."""
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(outputs))
        called = positive_calls(probabilities, None if task == "multiclass" else thresholds)
        classes = {
            name: ClassReference(
                score_counts=score_histogram(probabilities[:, index]),
                positive_rate=float(called[:, index].mean()) if len(called) else 0.0,
                threshold=None if task == "multiclass" or thresholds is None else float(thresholds[index]),
                mean_probability=float(probabilities[:, index].mean()) if len(probabilities) else 0.0,
            )
            for index, name in enumerate(outputs)
        }
        means = [item.mean_intensity for item in image_stats if item.mean_intensity is not None]
        return cls(
            task=task,
            image_size=int(image_size),
            examples=len(probabilities),
            classes=classes,
            inputs=category_counts(image_stats),
            mean_intensity=float(np.mean(means)) if means else None,
            split=split,
        )

    def to_dict(self) -> dict:
        """JSON-ready, for classifier.json."""
        return {
            "format": REFERENCE_FORMAT,
            "task": self.task,
            "image_size": self.image_size,
            "split": self.split,
            "examples": self.examples,
            "score_bins": SCORE_BINS,
            "classes": {name: vars(item).copy() for name, item in self.classes.items()},
            "inputs": {feature: dict(counts) for feature, counts in self.inputs.items()},
            "mean_intensity": self.mean_intensity,
        }

    @classmethod
    def from_dict(cls, stored: Mapping | None) -> ModelReference | None:
        """The reference a classifier.json stored; None when it has none or one of another format."""
        if not stored or stored.get("format") != REFERENCE_FORMAT or stored.get("score_bins") != SCORE_BINS:
            return None
        return cls(
            task=str(stored["task"]),
            image_size=int(stored["image_size"]),
            examples=int(stored["examples"]),
            classes={name: ClassReference(**values) for name, values in stored["classes"].items()},
            inputs={feature: dict(counts) for feature, counts in (stored.get("inputs") or {}).items()},
            mean_intensity=stored.get("mean_intensity"),
            split=str(stored.get("split", "val")),
        )

    @classmethod
    def from_config(cls, config) -> ModelReference | None:
        """The reference of a serve.pyfunc.ClassifierConfig (None for models logged before references existed)."""
        return cls.from_dict(getattr(config, "reference", None)) if config is not None else None

    @property
    def thresholds(self) -> list[float] | None:
        if self.task == "multiclass":
            return None
        return [item.threshold if item.threshold is not None else DEFAULT_THRESHOLD for item in self.classes.values()]


class DriftMonitor:
    """Drift and estimated performance of one served model over its last `window` answers (see the module docstring)."""

    def __init__(self, reference: ModelReference | None, outputs: Sequence[str], window: int = DEFAULT_WINDOW):
        if window < 1:
            raise ValueError(f"the monitoring window must hold at least 1 answer, got {window}")
        self.reference = reference
        self.outputs = list(reference.classes) if reference is not None else list(outputs)
        self.window = int(window)
        self.answers_total = 0
        self._scores: deque[np.ndarray] = deque(maxlen=self.window)
        self._images: deque[ImageStats] = deque(maxlen=self.window)
        self._lock = threading.Lock()

    @classmethod
    def for_config(cls, config, window: int = DEFAULT_WINDOW) -> DriftMonitor:
        """The monitor of a model from its serve.pyfunc.ClassifierConfig (with or without a reference)."""
        return cls(ModelReference.from_config(config), config.output_columns, window)

    @property
    def has_reference(self) -> bool:
        return self.reference is not None

    @property
    def reference_state(self) -> str:
        """`available`, or `none` for a model logged before references existed (the /info and info-label word)."""
        return "available" if self.reference is not None else "none"

    @property
    def compares_images(self) -> bool:
        """Whether image statistics are compared (the reference has input features): callers skip them otherwise."""
        return self.reference is not None and bool(self.reference.inputs)

    def image_statistics(
        self, data: bytes, *, answer_row: Mapping | None = None, pixels=None, frame: int | None = None
    ) -> ImageStats | None:
        """`image_statistics` at the model's input size and the answer's frame; None when nothing compares them."""
        if not self.compares_images:
            return None
        if frame is None:
            frame = int((answer_row or {}).get(FRAME_COLUMN) or 0) if answer_row is not None else MIDDLE_FRAME
        return image_statistics(
            data, image_size=self.reference.image_size, frame=frame, pixels=pixels, answer_row=answer_row
        )

    def observe(self, answer_row: Mapping, image_stats: ImageStats | None = None) -> None:
        """Add one answer row (serve.contract columns) and, when given, its image's statistics to the window.

        A row without a probability for every output (not an answer of this model) is ignored.
        """
        answer = read_answer(answer_row, self.outputs)
        if len(answer.probabilities) != len(self.outputs):
            return
        scores = np.array([answer.probabilities[name] for name in self.outputs], dtype=np.float64)
        with self._lock:
            self.answers_total += 1
            self._scores.append(scores)
            if image_stats is not None:
                self._images.append(image_stats)

    def observe_image(self, image_stats: ImageStats) -> None:
        """Add the statistics of an answered image whose answer was observed without them (the app adds them
        after its response has left)."""
        with self._lock:
            self._images.append(image_stats)

    def snapshot(self) -> tuple[np.ndarray, list[ImageStats], int]:
        """Copies of the window's scores [n, outputs], its image statistics and the answers seen in all."""
        with self._lock:
            scores = np.array(self._scores, dtype=np.float64).reshape(-1, len(self.outputs))
            return scores, list(self._images), self.answers_total

    def figures(self) -> dict[str, float]:
        """The flat, named figures of the window (keys as in docs/MONITORING.md), ready for mlflow.log_metrics.

        Without a reference: `reference_available` 0 and `window_answers`. Figures that are undefined on the
        window (an empty window, a class that no answer can be positive for) are left out.
        """
        scores, images, _ = self.snapshot()
        figures = {"reference_available": float(self.has_reference), "window_answers": float(len(scores))}
        reference = self.reference
        if reference is None:
            return figures
        figures["reference_examples"] = float(reference.examples)
        for name, item in reference.classes.items():
            figures[f"reference_positive_rate.{name}"] = item.positive_rate
        if reference.mean_intensity is not None:
            figures["reference_input_mean_intensity"] = reference.mean_intensity
        if len(scores):
            figures.update(self._class_figures(scores))
        if images:
            figures.update(self._input_figures(images))
        return {key: value for key, value in figures.items() if math.isfinite(value)}

    def _class_figures(self, scores: np.ndarray) -> dict[str, float]:
        reference = self.reference
        called = positive_calls(scores, reference.thresholds)
        figures = {}
        for index, (name, item) in enumerate(reference.classes.items()):
            window_psi, critical = categorical_psi(
                dict(enumerate(item.score_counts)), dict(enumerate(score_histogram(scores[:, index])))
            )
            rate = float(called[:, index].mean())
            pooled = (rate * len(scores) + item.positive_rate * reference.examples) / (len(scores) + reference.examples)
            figures.update(
                {
                    f"score_psi.{name}": window_psi,
                    f"score_psi_critical.{name}": critical,
                    f"positive_rate.{name}": rate,
                    f"positive_rate_standard_error.{name}": math.sqrt(
                        pooled * (1.0 - pooled) * (1.0 / len(scores) + 1.0 / max(reference.examples, 1))
                    ),
                    f"expected_positive_rate.{name}": float(scores[:, index].mean()),
                    f"estimated_auroc.{name}": expected_auroc(scores[:, index]),
                    f"estimated_sensitivity.{name}": expected_sensitivity(scores[:, index], called[:, index]),
                }
            )
        return figures

    def _input_figures(self, images: list[ImageStats]) -> dict[str, float]:
        window = category_counts(images)
        figures = {}
        for feature, counts in self.reference.inputs.items():
            if feature in window:
                figures[f"input_psi.{feature}"], figures[f"input_psi_critical.{feature}"] = categorical_psi(
                    counts, window[feature]
                )
        means = [item.mean_intensity for item in images if item.mean_intensity is not None]
        if means:
            figures["input_mean_intensity"] = float(np.mean(means))
        return figures

    def describe(self) -> dict:
        """What /info says about monitoring: the reference, the window and the current figures."""
        return {"reference": self.reference_state, "window": self.window, "figures": self.figures()}

    def register(self, registry, *, model_name: str, model_version: str) -> MonitoringCollector:
        """Publish the figures as Prometheus gauges (and `medimg_monitoring_answers_total`) on a CollectorRegistry."""
        collector = MonitoringCollector(self, {MODEL_NAME_COLUMN: model_name, MODEL_VERSION_COLUMN: model_version})
        registry.register(collector)
        return collector


# Figure key (before the first dot) -> (Prometheus gauge, help, label of the part after the dot or None).
GAUGES = {
    "reference_available": (
        "medimg_monitoring_reference_available",
        "1 when the model carries a reference of its validation scores, 0 when it has none",
        None,
    ),
    "window_answers": ("medimg_monitoring_window_answers", "Answers in the monitoring window", None),
    "reference_examples": ("medimg_monitoring_reference_examples", "Validation examples of the reference", None),
    "score_psi": ("medimg_drift_score_psi", "PSI of the window's calibrated scores against the reference", CLASS_LABEL),
    "score_psi_critical": (
        "medimg_drift_score_psi_critical",
        "Score PSI that sampling noise alone exceeds 1% of the time at this reference and window size",
        CLASS_LABEL,
    ),
    "positive_rate": (
        "medimg_drift_positive_ratio",
        "Share of the window's answers called positive at the reference operating point",
        CLASS_LABEL,
    ),
    "positive_rate_standard_error": (
        "medimg_drift_positive_ratio_standard_error",
        "Standard error of the difference between the window's and the reference's positive ratio",
        CLASS_LABEL,
    ),
    "reference_positive_rate": (
        "medimg_reference_positive_ratio",
        "Share of the validation split called positive at the operating point",
        CLASS_LABEL,
    ),
    "expected_positive_rate": (
        "medimg_estimated_positive_ratio",
        "Mean calibrated probability over the window: the expected positive ratio",
        CLASS_LABEL,
    ),
    "estimated_auroc": (
        "medimg_estimated_auroc",
        "AUROC expected from calibrated probabilities over the window (holds while calibration holds)",
        CLASS_LABEL,
    ),
    "estimated_sensitivity": (
        "medimg_estimated_sensitivity",
        "Sensitivity at the operating point expected from calibrated probabilities (holds while calibration holds)",
        CLASS_LABEL,
    ),
    "input_psi": ("medimg_drift_input_psi", "PSI of an input feature against the reference", FEATURE_LABEL),
    "input_psi_critical": (
        "medimg_drift_input_psi_critical",
        "Input PSI that sampling noise alone exceeds 1% of the time at this reference and window size",
        FEATURE_LABEL,
    ),
    "input_mean_intensity": (
        "medimg_drift_input_mean_intensity",
        "Mean intensity (0-255) of the window's model inputs",
        None,
    ),
    "reference_input_mean_intensity": (
        "medimg_reference_input_mean_intensity",
        "Mean intensity (0-255) of the reference's model inputs",
        None,
    ),
}
ANSWERS_COUNTER = "medimg_monitoring_answers"


class MonitoringCollector:
    """A prometheus_client collector that reads a DriftMonitor's figures at every scrape."""

    def __init__(self, monitor: DriftMonitor, labels: Mapping[str, str]):
        self.monitor = monitor
        self.labels = dict(labels)

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        names, values = list(self.labels), list(self.labels.values())
        figures = self.monitor.figures()
        families = {}
        for key, (metric, help_text, label) in GAUGES.items():
            families[key] = GaugeMetricFamily(metric, help_text, labels=names + ([label] if label else []))
        for key, value in figures.items():
            prefix, _, part = key.partition(".")
            families[prefix].add_metric(values + ([part] if part else []), value)
        yield from (family for family in families.values() if family.samples)
        answers = CounterMetricFamily(ANSWERS_COUNTER, "Answers the monitor has observed", labels=names)
        answers.add_metric(values, self.monitor.snapshot()[2])
        yield answers
