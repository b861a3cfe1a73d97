"""The image classifier that medimg logs and serves: reads base64 images from a DataFrame, writes class probabilities.

`ImageClassifier` is an `mlflow.pyfunc.PythonModel`. Its artifacts are the Keras
model file and `classifier.json` (class names, task, image size, threshold, pixel
limit). It decodes every request image with `serve.preprocess`, the same code the
training pipelines use (the images of one request in parallel threads), and answers one row per image: one probability column per
output class, `predicted`, the predicted label(s), the thresholds used, and `frame`, the 0-based
frame scored (the request parameter `frame`; -1, the default, is the middle frame of a multi-frame
DICOM). With the param `explain=true` each row also carries a Grad-CAM heatmap of its top finding,
or of the output named by `explain_class` (columns in `serve.explain`).

Bad input (not base64, not an image, empty, too many pixels, DICOM without an image or
pixels, a frame the image lacks, missing column, bad threshold) raises `InvalidImageInput`,
which `mlflow models serve` answers with HTTP 400 and a one-line message; its `reason` names the
kind of rejection.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from serve.contract import (
    ACCEPTED_FORMATS_TEXT,
    DECODABLE_FORMATS,
    DEFAULT_THRESHOLD,
    EXPLAIN_CLASS_PARAM,
    EXPLAIN_PARAM,
    FRAME_COLUMN,
    FRAME_PARAM,
    IMAGE_COLUMN,
    MIDDLE_FRAME,
    PREDICTED_COLUMN,
    THRESHOLD_PARAM,
    has_thresholds,
    join_labels,
    output_columns,
    request_frame,
    threshold_column,
)

CONFIG_ARTIFACT = "classifier_config"
MODEL_ARTIFACT = "keras_model"
DEFAULT_MAX_PIXELS = 50_000_000
# Overrides the logged pixel limit when the model is served, e.g. MEDIMG_MAX_PIXELS=4000000.
MAX_PIXELS_ENVIRONMENT = "MEDIMG_MAX_PIXELS"
PREDICT_BATCH_SIZE = 32
# Threads that decode the images of one request; MEDIMG_DECODE_THREADS overrides (default: the cores, at most 8).
DECODE_THREADS_ENVIRONMENT = "MEDIMG_DECODE_THREADS"
MAX_DECODE_THREADS = 8
# The models-from-code file to pass as `python_model` to mlflow.pyfunc.log_model (no cloudpickle).
MODEL_CODE_PATH = Path(__file__).resolve().with_name("model_code.py")
REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "requirements.txt"
# Packages (requirements.txt names) the served model imports; their pinned lines become its pip requirements,
# so `mlflow models serve --env-manager virtualenv` and a built serving image decode what training decoded.
SERVING_PACKAGES = (
    "tensorflow",
    "keras",
    "mlflow",
    "numpy",
    "pandas",
    "pillow",
    "pydicom",
    # pydicom's pixel-data plugins: JPEG 2000 and HTJ2K (openjpeg), fast RLE (rle), JPEG Lossless,
    # 12-bit JPEG and JPEG-LS (GDCM, CharLS). Not the GPLv3 libjpeg: a served model ships without it.
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "python-gdcm",
    "pyjpegls",
)


@dataclass
class ClassifierConfig:
    """What the served model needs besides the Keras weights.

    `thresholds` (one per output column) and `calibration` are chosen on the validation split after
    training; `operating_point` is the rule that chose the thresholds. `threshold` is the fallback for
    models logged without them. `reference` is what monitoring compares answers with (the validation
    split's calibrated scores and input statistics, `serve.monitoring.ModelReference.to_dict`); None for
    models logged before it existed. `modalities` are the DICOM Modality values of the images the model was trained
    on (the dataset's fact, e.g. CR and DX); the PACS worker scores only those unless told otherwise. Empty
    (and absent in classifier.json files written before it existed) means any image modality. `concepts` maps a
    class name to its coded concept (`serve.concepts.Concept.stored`: value, scheme, meaning, source) where its
    dataset knows one (ChestX-ray14: SNOMED CT); classes without one, and every class of a model logged before the
    field existed, are coded in medimg's private scheme (`serve.concepts.concepts_of`).
    """

    class_names: list[str]
    task: str
    image_size: int
    threshold: float = DEFAULT_THRESHOLD
    max_pixels: int = DEFAULT_MAX_PIXELS
    thresholds: list[float] | None = None
    operating_point: str = ""
    calibration: dict | None = None
    reference: dict | None = None
    modalities: list[str] = field(default_factory=list)
    concepts: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def output_columns(self) -> list[str]:
        """Probability columns of the answer (serve.contract.output_columns)."""
        return output_columns(self.task, self.class_names)

    def output_thresholds(self) -> list[float]:
        """The decision threshold of each output column: the stored operating point, else `threshold`."""
        if self.thresholds is not None:
            return [float(value) for value in self.thresholds]
        return [float(self.threshold)] * len(self.output_columns)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(asdict(self), handle, indent=2)

    @classmethod
    def load(cls, path: str) -> ClassifierConfig:
        """Read classifier.json; keys this version does not know (written by an older or newer medimg) are ignored."""
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in known})


def log_classifier(keras_model, config: ClassifierConfig, example_image: np.ndarray, **log_arguments):
    """Log a Keras model as the medimg pyfunc, from code; return MLflow's ModelInfo.

    The logged model carries the Keras file (float32, whatever policy it was trained under), classifier.json,
    its own copy of serve/ and models/, a signature, one example image as input example and the pinned
    serving requirements. `log_arguments` go to mlflow.pyfunc.log_model (e.g. registered_model_name).
    """
    import tempfile

    import mlflow

    # The repository's `models` package is imported before log_model loads the model from a staging folder
    # that it then deletes: a `models` imported from there would break later imports of its modules.
    import models.gradcam
    import models.layers
    from models import float32_copy
    from serve.explain import png_base64

    pixels = np.clip(np.asarray(example_image), 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as workdir:
        keras_path, config_path = Path(workdir) / "model.keras", Path(workdir) / "classifier.json"
        # Served models compute in float32: a mixed_float16 policy would run float16 math on CPU servers.
        float32_copy(keras_model).save(keras_path)
        config.save(str(config_path))
        return mlflow.pyfunc.log_model(
            name=log_arguments.pop("name", "model"),
            python_model=str(MODEL_CODE_PATH),
            artifacts={MODEL_ARTIFACT: str(keras_path), CONFIG_ARTIFACT: str(config_path)},
            code_paths=[str(Path(__file__).resolve().parent), str(Path(models.gradcam.__file__).resolve().parent)],
            signature=classifier_signature(config),
            input_example=request_frame(png_base64(pixels)),
            pip_requirements=serving_requirements(),
            **log_arguments,
        )


def pinned_requirements(names) -> dict[str, str]:
    """`name==version` of each named package (lower-case name -> line), from requirements.txt, the one source of
    versions; ValueError naming the packages it does not pin."""
    wanted = {name.lower() for name in names}
    pins = {}
    for line in REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines():
        name, separator, _ = line.strip().partition("==")
        if separator and name.lower() in wanted:
            pins[name.lower()] = line.strip()
    if missing := wanted - set(pins):
        raise ValueError(f"requirements.txt pins none of: {', '.join(sorted(missing))}")
    return pins


def serving_requirements() -> list[str]:
    """Pinned lines of requirements.txt that the served model needs."""
    return list(pinned_requirements(SERVING_PACKAGES).values())


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
    """Model signature: column `image` (base64 string) in; probabilities, `predicted`, thresholds and `frame` out.

    Parameters: `threshold` (double; none = the stored per-class operating points) and `frame` (long, -1 =
    the middle frame of a multi-frame image).
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [ColSpec("double", name) for name in config.output_columns]
    outputs.append(ColSpec("string", PREDICTED_COLUMN))
    if has_thresholds(config.task):
        outputs += [ColSpec("double", threshold_column(name)) for name in config.output_columns]
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema([*outputs, ColSpec("long", FRAME_COLUMN)]),
        params=ParamSchema(
            [
                # No default threshold: without one, the stored per-class operating points decide.
                ParamSpec(THRESHOLD_PARAM, "double", None),
                ParamSpec(FRAME_PARAM, "long", MIDDLE_FRAME),
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


def check_image(data: bytes, row: int, max_pixels: int, frame: int = MIDDLE_FRAME) -> int:
    """Reject bytes that are not a supported image, whose header announces more than max_pixels in the
    frame that is decoded, or that lack `frame`; return the 0-based frame that will be scored."""
    from serve.preprocess import NOT_AN_IMAGE, dicom_dimensions, frame_index, is_dicom

    frames = 1
    try:
        if is_dicom(data):
            width, height, frames = dicom_dimensions(data)
        else:
            header = image_header(data)
            if header is None:
                raise InvalidImageInput(NOT_AN_IMAGE, "not_an_image")
            image_format, width, height = header
            if image_format not in DECODABLE_FORMATS:
                raise InvalidImageInput(
                    f"{image_format} images are not supported; send {ACCEPTED_FORMATS_TEXT}", "unsupported_format"
                )
    except InvalidImageInput as error:
        raise bad_input(f"row {row}: {error.message}", error.reason) from None
    except ValueError as error:
        raise bad_input(f"row {row}: {error}", "unreadable_dicom") from None
    try:
        scored = frame_index(frames, frame)
    except ValueError as error:
        raise bad_input(f"row {row}: {error}", "no_frame") from None
    # One frame is decoded, so the limit applies to one frame's pixels.
    if width * height > max_pixels:
        raise bad_input(
            f"row {row}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels", "too_many_pixels"
        )
    return scored


def check_bytes(data: bytes, row: int, max_pixels: int, frame: int = MIDDLE_FRAME) -> int:
    """check_image for raw file bytes (batch scoring): an empty file is refused as an empty request cell is."""
    if not data:
        raise bad_input(f"row {row}: the image has no bytes", "empty_image")
    return check_image(data, row, max_pixels, frame)


def predictions_frame(
    probabilities: np.ndarray,
    config: ClassifierConfig,
    threshold: float | None = None,
    frames: list[int] | None = None,
) -> pd.DataFrame:
    """One row per image: a probability column per output class, the predicted label(s), the thresholds used
    and the frame scored.

    binary: the class at or above its threshold; multiclass: the most probable class; multilabel:
    every label at or above its threshold, joined with "|" (an empty string when none is). The
    thresholds are the stored operating points unless `threshold` overrides all of them; binary and
    multilabel answers carry them as `threshold_<column>`.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    frame = pd.DataFrame(probabilities, columns=config.output_columns)
    thresholds = np.asarray(
        config.output_thresholds() if threshold is None else [threshold] * len(config.output_columns)
    )
    called = probabilities >= thresholds
    if config.task == "binary":
        labels = [config.class_names[int(flag)] for flag in called[:, 0]]
    elif config.task == "multiclass":
        labels = [config.class_names[int(i)] for i in probabilities.argmax(axis=1)]
    else:
        labels = [
            join_labels([name for name, flag in zip(config.class_names, row, strict=True) if flag]) for row in called
        ]
    frame[PREDICTED_COLUMN] = labels
    if has_thresholds(config.task):
        for column, value in zip(config.output_columns, thresholds, strict=True):
            frame[threshold_column(column)] = float(value)
    frame[FRAME_COLUMN] = np.asarray(frames if frames is not None else [0] * len(frame), dtype=np.int64)
    return frame


def max_pixels_from_environment(default: int) -> int:
    """The pixel limit: MEDIMG_MAX_PIXELS when set (a positive whole number), else the logged one."""
    value = os.environ.get(MAX_PIXELS_ENVIRONMENT, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_PIXELS_ENVIRONMENT} must be a positive whole number of pixels, got {value!r}")
    return int(value)


def decode_threads() -> int:
    """Threads per model for decoding: MEDIMG_DECODE_THREADS when set, else the usable cores (at most 8)."""
    value = os.environ.get(DECODE_THREADS_ENVIRONMENT, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{DECODE_THREADS_ENVIRONMENT} must be a positive whole number, got {value!r}")
        return int(value)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DECODE_THREADS, cores))


def requested_frame(params: dict | None) -> int:
    """The request parameter `frame`: a whole number, -1 (the middle frame) or a 0-based frame index."""
    value = (params or {}).get(FRAME_PARAM)
    if value is None:
        return MIDDLE_FRAME
    try:
        whole = int(value) if not isinstance(value, bool | str) and float(value) == int(value) else None
    except (TypeError, ValueError, OverflowError):
        whole = None
    if whole is None or whole < MIDDLE_FRAME:
        raise bad_input(
            f"frame must be -1 (the middle frame) or a 0-based frame index, got {str(value)[:20]!r}", "bad_param"
        )
    return whole


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
        from models import float32_copy

        # Models logged by medimg are float32; one saved under mixed_float16 elsewhere would compute in float16.
        self.model = float32_copy(keras.models.load_model(context.artifacts[MODEL_ARTIFACT], compile=False))

    def decode(self, data: bytes, frame: int, row: int) -> np.ndarray:
        """Checked image bytes at `frame` -> float32 [S, S, 3] in 0-255, the model's input for one image.

        Bytes the decoders refuse are the client's fault (400 `undecodable_image`); any other exception is a
        fault of the server and propagates (500).
        """
        import tensorflow as tf

        from serve.preprocess import load_image_tensor

        try:
            tensor = load_image_tensor(data, self.config.image_size, frame)
        except ValueError as error:
            raise bad_input(f"row {row}: {error}", "undecodable_image") from None
        except tf.errors.InvalidArgumentError:
            # TensorFlow's decoders refuse truncated or corrupt bytes this way.
            raise bad_input(f"row {row}: image cannot be decoded (corrupt or truncated)", "undecodable_image") from None
        return np.asarray(tensor, dtype=np.float32)

    def decoder_pool(self) -> ThreadPoolExecutor:
        """The threads that decode the images of one request in parallel (TensorFlow and pydicom release the GIL)."""
        if getattr(self, "_decoder_pool", None) is None:
            self._decoder_pool = ThreadPoolExecutor(max_workers=decode_threads(), thread_name_prefix="medimg-decode")
        return self._decoder_pool

    def image_tensors(self, encoded: list[bytes], frames: list[int], first_row: int) -> np.ndarray:
        """Decode and resize checked image bytes (each at its frame) into a float32 batch [N, S, S, 3] in 0-255.

        The images are decoded in parallel; the first row (in request order) that fails decides the error,
        as one-by-one decoding would.
        """
        rows = range(first_row, first_row + len(encoded))
        if len(encoded) == 1:
            return self.decode(encoded[0], frames[0], first_row)[None]
        # map() hands results (and the first exception) back in request order.
        return np.stack(list(self.decoder_pool().map(self.decode, encoded, frames, rows)))

    def batches(self, encoded: list[bytes], frames: list[int]):
        """Model-input batches of checked image bytes (each at its frame), decoded 32 at a time."""
        for start in range(0, len(encoded), PREDICT_BATCH_SIZE):
            end = start + PREDICT_BATCH_SIZE
            yield self.image_tensors(encoded[start:end], frames[start:end], start)

    def predict_probabilities(self, encoded: list[bytes], frames: list[int] | None = None) -> np.ndarray:
        """Calibrated class probabilities [N, outputs] for checked image bytes, decoded and predicted 32 at a time."""
        from models import batch_predictor

        frames = frames if frames is not None else [MIDDLE_FRAME] * len(encoded)
        # One traced graph for every batch size, without the tf.data set-up of predict() (models.batch_predictor).
        predict = batch_predictor(self.model)
        chunks = [np.asarray(predict(batch), dtype=np.float64) for batch in self.batches(encoded, frames)]
        return self.calibrated(np.concatenate(chunks, axis=0))

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """The model's raw outputs mapped through the calibration fitted on the validation split."""
        from serve.calibration import apply_calibration

        return apply_calibration(probabilities, self.config.calibration)

    def explain(self, encoded: list[bytes], frames: list[int], class_index: int) -> tuple[np.ndarray, pd.DataFrame]:
        """Calibrated probabilities [N, outputs] and the Grad-CAM columns of each batch.

        The top finding is the most probable one after calibration, the probability the answer shows;
        calibration can reorder classes, so a calibrated model picks it before the gradient pass.
        """
        from models import batch_predictor
        from models.gradcam import TOP_CLASS, GradCam
        from serve.explain import explanation_columns

        # Built on first use and kept: its traced gradient function makes later explanations fast.
        if getattr(self, "gradcam", None) is None:
            self.gradcam = GradCam(self.model)
        chunks, columns = [], []
        for batch in self.batches(encoded, frames):
            indices = class_index
            if class_index == TOP_CLASS and self.config.calibration:
                raw = np.asarray(batch_predictor(self.model)(batch), dtype=np.float64)
                indices = self.calibrated(raw).argmax(axis=1)
            heatmaps, probabilities, explained = self.gradcam(batch, indices)
            chunks.append(self.calibrated(np.asarray(probabilities, dtype=np.float64)))
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
        threshold = (params or {}).get(THRESHOLD_PARAM)
        if threshold is not None:
            try:
                threshold = float(threshold)
            except (TypeError, ValueError):
                raise bad_input(f"threshold must be a number between 0 and 1, got {threshold!r}", "bad_param") from None
            if not 0.0 <= threshold <= 1.0:
                raise bad_input(f"threshold must be between 0 and 1, got {threshold}", "bad_param")
        frame = requested_frame(params)
        explain_index = explain_choice(params or {}, self.config)
        if len(model_input) == 0:
            raise bad_input("input has no rows; send one row per image", "no_rows")
        encoded, frames = [], []
        for row, value in enumerate(model_input[IMAGE_COLUMN].tolist()):
            data = decode_base64(value, row)
            frames.append(check_image(data, row, self.config.max_pixels, frame))
            encoded.append(data)
        if explain_index is None:
            return predictions_frame(self.predict_probabilities(encoded, frames), self.config, threshold, frames)
        probabilities, explanations = self.explain(encoded, frames, explain_index)
        answer = predictions_frame(probabilities, self.config, threshold, frames)
        return pd.concat([answer, explanations], axis=1)
