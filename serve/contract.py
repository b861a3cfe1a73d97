"""The served answer's contract, in one place: request column and params, answer columns per task, accepted formats; reads and writes nothing.

Every place that produces or reads an answer imports its names from here: the logged pyfunc
(`serve.pyfunc`), `mlflow models serve` clients (`serve.client`), the clinician app (`serve.app`),
the PACS worker (`serve.pacs`), batch scoring (`train.batch`), `evaluate` and the benchmarks.
Importing it costs nothing (standard library only).

An answer has one row per image:

| column | type | meaning |
|---|---|---|
| one per output (`output_columns`) | double | calibrated probability of that finding |
| `predicted` | string | the decision: binary, the class name; multiclass, the most probable class; multilabel, every finding at or above its threshold joined with `|` (empty when none) |
| `threshold_<output>` | double | binary and multilabel: the threshold that output was decided at |
| `frame` | long | the 0-based frame scored (multi-frame DICOM; 0 otherwise) |
| `gradcam_class`, `gradcam_overlay`, `gradcam_input` | string | with `explain=true`: the output explained, an RGBA heatmap PNG and the model-input PNG (base64) |

The clinician app's JSON answer names each finding's coded concept (`concept`: `code`, `scheme`, `meaning`): the
standard code the model carries for the class (SNOMED CT for ChestX-ray14's findings), else medimg's private
code; the PACS worker's SR and the model card name the same concept (`serve.concepts`).

A row of an archive scored by `batch` (`batch_columns`) adds `path`, `sha256` (of the file's bytes), `error`
(why the file was not scored, empty when it was), `model_name`, `model_version` and `model_id`; with
`explain=true`, `gradcam_class` and `heatmap` (the heatmap PNG's file name) instead of the base64 pictures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# The request: one column of base64 images, and the params a request may set.
IMAGE_COLUMN = "image"
THRESHOLD_PARAM = "threshold"
FRAME_PARAM = "frame"
EXPLAIN_PARAM = "explain"
EXPLAIN_CLASS_PARAM = "explain_class"
# The decision threshold of an output that has no operating point of its own (a probability at or above it decides).
DEFAULT_THRESHOLD = 0.5
# frame=-1 asks for the middle frame of a multi-frame image (frames // 2, 0-based).
MIDDLE_FRAME = -1

# The answer.
PREDICTED_COLUMN = "predicted"
THRESHOLD_PREFIX = "threshold_"
FRAME_COLUMN = FRAME_PARAM
LABEL_SEPARATOR = "|"
EXPLAINED_CLASS_COLUMN = "gradcam_class"
OVERLAY_COLUMN = "gradcam_overlay"
EXPLAINED_INPUT_COLUMN = "gradcam_input"

TASKS = ("binary", "multilabel", "multiclass")

# What a scorer accepts: the formats TensorFlow decodes in the graph (PIL's names; MPO is a camera's multi-picture
# JPEG, scored by its first picture) plus DICOM, with or without a file extension.
DECODABLE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".dcm", ".dicom")
ACCEPTED_FORMATS_TEXT = "PNG, JPEG, BMP, GIF or DICOM"

# A finding's coded concept in the app's JSON answer: {"code": ..., "scheme": ..., "meaning": ...}.
CONCEPT_FIELD = "concept"
CONCEPT_CODE, CONCEPT_SCHEME, CONCEPT_MEANING = "code", "scheme", "meaning"

# Rows of an archive scored by `batch` carry the answer plus where it came from and which model gave it.
PATH_COLUMN = "path"
SHA256_COLUMN = "sha256"
ERROR_COLUMN = "error"
MODEL_NAME_COLUMN = "model_name"
MODEL_VERSION_COLUMN = "model_version"
MODEL_ID_COLUMN = "model_id"
# Why a batch row has no answer when the model never saw the file: it cannot be read, or the decoder broke on it
# (the model's own rejections carry its InvalidImageInput reasons: not_an_image, undecodable_image, ...).
UNREADABLE_FILE_REASON = "unreadable_file"
DECODER_FAILURE_REASON = "decoder_failure"
# With explain=true, batch rows name the heatmap PNG written for them (relative to the heatmap folder).
HEATMAP_COLUMN = "heatmap"


def output_columns(task: str, class_names: Sequence[str]) -> list[str]:
    """The probability columns of an answer: the positive class for binary tasks, every class otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return [class_names[1]] if task == "binary" else list(class_names)


def has_thresholds(task: str) -> bool:
    """Whether answers carry `threshold_<output>` columns: binary and multilabel do; multiclass takes the top class."""
    return task != "multiclass"


def threshold_column(output: str) -> str:
    return f"{THRESHOLD_PREFIX}{output}"


def answer_columns(task: str, class_names: Sequence[str]) -> list[str]:
    """Every column of an answer without explanation, in order."""
    outputs = output_columns(task, class_names)
    thresholds = [threshold_column(name) for name in outputs] if has_thresholds(task) else []
    return [*outputs, PREDICTED_COLUMN, *thresholds, FRAME_COLUMN]


def batch_columns(task: str, class_names: Sequence[str], *, explain: bool = False) -> list[str]:
    """Every column of a row of an archive scored by `batch`, in order: where the image came from, the frame
    scored, why it failed (empty when scored), the answer, the model that gave it (and with explain, the
    output explained and its heatmap file)."""
    answer = [name for name in answer_columns(task, class_names) if name != FRAME_COLUMN]
    columns = [PATH_COLUMN, SHA256_COLUMN, FRAME_COLUMN, ERROR_COLUMN, *answer]
    columns += [MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN, MODEL_ID_COLUMN]
    return columns + ([EXPLAINED_CLASS_COLUMN, HEATMAP_COLUMN] if explain else [])


def join_labels(labels: Sequence[str]) -> str:
    return LABEL_SEPARATOR.join(labels)


def split_labels(predicted: str | None) -> list[str]:
    """The labels of a `predicted` cell (an empty cell: none)."""
    return [label for label in str(predicted or "").split(LABEL_SEPARATOR) if label]


def request_frame(images):
    """The request a medimg pyfunc reads: one row per image in IMAGE_COLUMN, bytes base64-encoded, text taken as base64.

    `images`: one image (bytes or base64 text) or a sequence of them. The only place a request frame is built.
    """
    import base64

    import pandas as pd

    if isinstance(images, bytes | bytearray | str):
        images = [images]
    encoded = [image if isinstance(image, str) else base64.b64encode(image).decode("ascii") for image in images]
    return pd.DataFrame({IMAGE_COLUMN: encoded})


@dataclass(frozen=True)
class Answer:
    """One answer row read back: probabilities and thresholds by output, the predicted labels and the frame."""

    probabilities: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    predicted: list[str] = field(default_factory=list)
    frame: int = 0


def read_answer(row: Mapping[str, object], outputs: Sequence[str] | None = None) -> Answer:
    """An answer row (a JSON object of the REST answer, a DataFrame row as a dict) read by the contract.

    `outputs` names the probability columns when known (a model's output schema); without them every
    other numeric column is one.
    """
    special = (PREDICTED_COLUMN, FRAME_COLUMN, EXPLAINED_CLASS_COLUMN, OVERLAY_COLUMN, EXPLAINED_INPUT_COLUMN)
    numbers = {name: value for name, value in row.items() if isinstance(value, int | float) and value == value}
    if outputs is None:
        outputs = [name for name in numbers if name not in special and not name.startswith(THRESHOLD_PREFIX)]
    return Answer(
        probabilities={name: float(numbers[name]) for name in outputs if name in numbers},
        thresholds={
            name.removeprefix(THRESHOLD_PREFIX): float(value)
            for name, value in numbers.items()
            if name.startswith(THRESHOLD_PREFIX)
        },
        predicted=split_labels(row.get(PREDICTED_COLUMN)),  # type: ignore[arg-type]
        frame=int(row.get(FRAME_COLUMN) or 0),  # type: ignore[call-overload]
    )
