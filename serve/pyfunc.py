"""The image classifier that medimg logs and serves: reads base64 images from a DataFrame, writes class probabilities.

`ImageClassifier` is an `mlflow.pyfunc.PythonModel`. Its artifacts are the Keras
model file and `classifier.json` (class names, task, image size, threshold, pixel
limit). It decodes every request image with `serve.preprocess`, the same code the
training pipelines use, and answers one row per image: one probability column per
output class and `predicted`, the predicted label(s). With the param `explain=true` each
row also carries a Grad-CAM heatmap of its top finding, or of the output named by
`explain_class` (columns in `serve.explain`).

Bad input (not base64, not an image, empty, too many pixels, DICOM without pixels,
missing column, bad threshold) raises `InvalidImageInput`, which `mlflow models serve`
answers with HTTP 400 and a one-line message; its `reason` names the kind of rejection.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"
PREDICTED_COLUMN = "predicted"
CONFIG_ARTIFACT = "classifier_config"
MODEL_ARTIFACT = "keras_model"
DEFAULT_MAX_PIXELS = 50_000_000
# Overrides the logged pixel limit when the model is served, e.g. MEDIMG_MAX_PIXELS=4000000.
MAX_PIXELS_ENVIRONMENT = "MEDIMG_MAX_PIXELS"
PREDICT_BATCH_SIZE = 32
EXPLAIN_PARAM = "explain"
EXPLAIN_CLASS_PARAM = "explain_class"
# The formats tf.io.decode_image reads (PIL names); PIL recognises more (TIFF, WebP) that training never sees.
DECODABLE_FORMATS = ("PNG", "JPEG", "BMP", "GIF")
# The models-from-code file to pass as `python_model` to mlflow.pyfunc.log_model (no cloudpickle).
MODEL_CODE_PATH = Path(__file__).resolve().with_name("model_code.py")
REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "requirements.txt"
# Packages (requirements.txt names) the served model imports; their pinned lines become its pip requirements,
# so `mlflow models serve --env-manager virtualenv` and a built serving image decode what training decoded.
SERVING_PACKAGES = ("tensorflow", "keras", "mlflow", "numpy", "pandas", "pillow", "pydicom")


@dataclass
class ClassifierConfig:
    """What the served model needs besides the Keras weights."""

    class_names: list[str]
    task: str
    image_size: int
    threshold: float = 0.5
    max_pixels: int = DEFAULT_MAX_PIXELS
    extra: dict = field(default_factory=dict)

    @property
    def output_columns(self) -> list[str]:
        """Probability columns of the answer: the positive class for binary tasks, every class otherwise."""
        if self.task == "binary":
            return [self.class_names[1]]
        return list(self.class_names)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle, indent=2)

    @classmethod
    def load(cls, path: str) -> ClassifierConfig:
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))


def serving_requirements() -> list[str]:
    """Pinned lines of requirements.txt that the served model needs."""
    pins = []
    for line in REQUIREMENTS_FILE.read_text().splitlines():
        name = line.split("==")[0].strip().lower()
        if name in SERVING_PACKAGES:
            pins.append(line.strip())
    return pins


class InvalidImageInput(MlflowException):
    """Bad request data; `mlflow models serve` answers it with HTTP 400 and this exception's one-line message.

    The scoring server rewrites the message of every MlflowException raised in predict to
    "Failed to predict data '<the request as a DataFrame>'. Error: <message>", a multi-line text
    that repeats the request. This class keeps the message it was created with, so the 400 answer
    says what is wrong in one short line. `reason` is a short machine-readable name of the rejection
    (e.g. "not_an_image") for counting rejections without reading messages.
    """

    def __init__(self, message: str, reason: str = "invalid_input"):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.reason = reason

    @property
    def message(self) -> str:
        return self._one_line_message

    @message.setter
    def message(self, value: str) -> None:
        # MlflowException.__init__ sets the message first; later assignments are the server's prefix.
        if not hasattr(self, "_one_line_message"):
            self._one_line_message = " ".join(str(value).split())


def bad_input(message: str, reason: str = "invalid_input") -> InvalidImageInput:
    """An error that the MLflow scoring server answers with HTTP 400 and this one-line message."""
    return InvalidImageInput(message, reason)


def classifier_signature(config: ClassifierConfig):
    """Model signature: column `image` (base64 string) in; a probability column per output and `predicted` out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [ColSpec("double", name) for name in config.output_columns]
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema([*outputs, ColSpec("string", PREDICTED_COLUMN)]),
        params=ParamSchema(
            [
                ParamSpec("threshold", "double", config.threshold),
                ParamSpec(EXPLAIN_PARAM, "boolean", False),
                ParamSpec(EXPLAIN_CLASS_PARAM, "string", ""),
            ]
        ),
    )


def decode_base64(value, row: int) -> bytes:
    """Bytes of one request cell; accepts line-wrapped base64 and `data:image/...;base64,` URLs."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if not isinstance(value, str) or not value.strip():
        raise bad_input(f"row {row}: column '{IMAGE_COLUMN}' must hold a non-empty base64 string", "missing_image")
    text = value.strip()
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    try:
        # Tools such as `base64` wrap lines at 76 characters; whitespace carries no data.
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_input(f"row {row}: column '{IMAGE_COLUMN}' is not valid base64", "not_base64") from None
    if not data:
        raise bad_input(f"row {row}: column '{IMAGE_COLUMN}' decodes to no bytes", "empty_image")
    return data


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """Format, width and height from the header without decoding pixels (PIL reads headers lazily)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return str(image.format), image.size[0], image.size[1]
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def check_image(data: bytes, row: int, max_pixels: int) -> None:
    """Reject bytes that are not a supported image or whose header announces more than max_pixels."""
    from serve.preprocess import dicom_dimensions, is_dicom

    if is_dicom(data):
        try:
            width, height, frames = dicom_dimensions(data)
        except ValueError as error:
            raise bad_input(f"row {row}: {error}", "unreadable_dicom") from None
        pixels = width * height * frames
        described = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
    else:
        header = image_header(data)
        if header is None:
            raise bad_input(f"row {row}: not a PNG, JPEG, BMP, GIF or DICOM image", "not_an_image")
        image_format, width, height = header
        if image_format not in DECODABLE_FORMATS:
            raise bad_input(
                f"row {row}: {image_format} images are not supported; send PNG, JPEG, BMP, GIF or DICOM",
                "unsupported_format",
            )
        pixels = width * height
        described = f"{width}x{height}"
    if pixels > max_pixels:
        raise bad_input(
            f"row {row}: image of {described} pixels exceeds the limit of {max_pixels} pixels", "too_many_pixels"
        )


def predictions_frame(probabilities: np.ndarray, config: ClassifierConfig, threshold: float) -> pd.DataFrame:
    """One row per image: a probability column per output class and the predicted label(s).

    binary: the class at or above `threshold`; multiclass: the most probable class; multilabel:
    every label at or above `threshold`, joined with "|" (an empty string when none is).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    frame = pd.DataFrame(probabilities, columns=config.output_columns)
    if config.task == "binary":
        labels = [config.class_names[int(p >= threshold)] for p in probabilities[:, 0]]
    elif config.task == "multiclass":
        labels = [config.class_names[int(i)] for i in probabilities.argmax(axis=1)]
    else:
        labels = [
            "|".join(name for name, p in zip(config.class_names, row, strict=True) if p >= threshold)
            for row in probabilities
        ]
    frame[PREDICTED_COLUMN] = labels
    return frame


def max_pixels_from_environment(default: int) -> int:
    """The pixel limit: MEDIMG_MAX_PIXELS when set (a positive whole number), else the logged one."""
    value = os.environ.get(MAX_PIXELS_ENVIRONMENT, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_PIXELS_ENVIRONMENT} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def explain_choice(params: dict, config: ClassifierConfig) -> int | None:
    """None without `explain=true`; else the output index that `explain_class` names, or -1 for each row's top finding."""
    explain = params.get(EXPLAIN_PARAM, False)
    # mlflow models serve passes a bool; in-process callers may pass the text of a query string.
    if isinstance(explain, str) and explain.strip().lower() in ("true", "false"):
        explain = explain.strip().lower() == "true"
    if not isinstance(explain, bool | np.bool_):
        raise bad_input(f"{EXPLAIN_PARAM} must be true or false, got {explain!r}", "bad_param")
    if not explain:
        return None
    from models.gradcam import TOP_CLASS

    name = str(params.get(EXPLAIN_CLASS_PARAM) or "").strip()
    if not name:
        return TOP_CLASS
    if name in config.output_columns:
        return config.output_columns.index(name)
    if config.task == "binary" and name in config.class_names:
        raise bad_input(
            f"{EXPLAIN_CLASS_PARAM}: a binary model explains its positive class '{config.class_names[1]}' only",
            "bad_param",
        )
    choices = ", ".join(config.output_columns)
    raise bad_input(
        f"{EXPLAIN_CLASS_PARAM} must be one of {choices} (or empty for the top finding), got {name!r}", "bad_param"
    )


class ImageClassifier(PythonModel):
    """MLflow pyfunc: DataFrame column `image` (base64 PNG/JPEG/DICOM) -> class probabilities and labels."""

    def load_context(self, context) -> None:
        import keras

        # models.layers registers medimg's custom layers (ImageScaling) before the model is deserialised. The
        # explanation modules are imported now, while the model's code folder exists: log_model loads the model
        # from a staging folder to check its input example and deletes that folder afterwards.
        import models.gradcam
        import models.layers  # noqa: F401
        import serve.explain  # noqa: F401

        self.config = ClassifierConfig.load(context.artifacts[CONFIG_ARTIFACT])
        self.config.max_pixels = max_pixels_from_environment(self.config.max_pixels)
        self.model = keras.models.load_model(context.artifacts[MODEL_ARTIFACT], compile=False)

    def image_tensors(self, encoded: list[bytes], first_row: int) -> np.ndarray:
        """Decode and resize checked image bytes into a float32 batch [N, S, S, 3] in 0-255."""
        from serve.preprocess import load_image_tensor

        tensors = []
        for offset, data in enumerate(encoded):
            row = first_row + offset
            try:
                tensor = load_image_tensor(data, self.config.image_size)
            except ValueError as error:
                raise bad_input(f"row {row}: {error}", "undecodable_image") from None
            except Exception as error:  # TensorFlow raises InvalidArgumentError for truncated or corrupt bytes.
                raise bad_input(
                    f"row {row}: image cannot be decoded ({type(error).__name__})", "undecodable_image"
                ) from None
            tensors.append(np.asarray(tensor, dtype=np.float32))
        return np.stack(tensors)

    def batches(self, encoded: list[bytes]):
        """Model-input batches of checked image bytes, decoded 32 at a time."""
        for start in range(0, len(encoded), PREDICT_BATCH_SIZE):
            yield self.image_tensors(encoded[start : start + PREDICT_BATCH_SIZE], start)

    def predict_probabilities(self, encoded: list[bytes]) -> np.ndarray:
        """Class probabilities [N, outputs] for checked image bytes, decoded and predicted 32 at a time."""
        # predict_on_batch skips the tf.data set-up of predict(), which dominates one-image requests.
        chunks = [np.asarray(self.model.predict_on_batch(batch), dtype=np.float64) for batch in self.batches(encoded)]
        return np.concatenate(chunks, axis=0)

    def explain(self, encoded: list[bytes], class_index: int) -> tuple[np.ndarray, pd.DataFrame]:
        """Probabilities [N, outputs] and the Grad-CAM columns, from one forward and backward pass per batch."""
        from models.gradcam import GradCam
        from serve.explain import explanation_columns

        # Built on first use and kept: its traced gradient function makes later explanations fast.
        if getattr(self, "gradcam", None) is None:
            self.gradcam = GradCam(self.model)
        chunks, columns = [], []
        for batch in self.batches(encoded):
            heatmaps, probabilities, explained = self.gradcam(batch, class_index)
            chunks.append(np.asarray(probabilities, dtype=np.float64))
            names = [self.config.output_columns[int(index)] for index in explained]
            columns.append(pd.DataFrame(explanation_columns(batch, heatmaps, names)))
        return np.concatenate(chunks, axis=0), pd.concat(columns, ignore_index=True)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            found = list(map(str, model_input.columns))[:10] if isinstance(model_input, pd.DataFrame) else None
            found_text = f"columns {found}" if found is not None else type(model_input).__name__
            raise bad_input(
                f"input must have a column '{IMAGE_COLUMN}' of base64 images; got {found_text}", "missing_column"
            )
        threshold = (params or {}).get("threshold")
        try:
            threshold = float(self.config.threshold if threshold is None else threshold)
        except (TypeError, ValueError):
            raise bad_input(f"threshold must be a number between 0 and 1, got {threshold!r}", "bad_param") from None
        if not 0.0 <= threshold <= 1.0:
            raise bad_input(f"threshold must be between 0 and 1, got {threshold}", "bad_param")
        explain_index = explain_choice(params or {}, self.config)
        if len(model_input) == 0:
            raise bad_input("input has no rows; send one row per image", "no_rows")
        encoded = []
        for row, value in enumerate(model_input[IMAGE_COLUMN].tolist()):
            data = decode_base64(value, row)
            check_image(data, row, self.config.max_pixels)
            encoded.append(data)
        if explain_index is None:
            return predictions_frame(self.predict_probabilities(encoded), self.config, threshold)
        probabilities, explanations = self.explain(encoded, explain_index)
        return pd.concat([predictions_frame(probabilities, self.config, threshold), explanations], axis=1)
