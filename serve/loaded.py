"""One loaded model for every consumer: resolves a model URI, loads that version once, describes it and scores image bytes; reads the registry and the model's files.

`LoadedModel.load(uri)` is the one place that calls `mlflow.pyfunc.load_model` for serving, evaluation,
batch scoring and the benchmarks, and the one place that words a model that cannot be loaded (a URI that does
not resolve is worded by `serve.model_uri`). The object says what the model is: its registered identity
(`resolved`), its answer's classes, default threshold and params, and, for a medimg model, its
`ImageClassifier` (`classifier`) with the `ClassifierConfig` (task, class names, operating points,
calibration, monitoring reference, modalities). `predict` and `score` send one image or many through the
pyfunc (decoder, calibration, operating points, Grad-CAM), in the request frame `serve.contract.request_frame`
builds; a refusal comes back as `Rejected` with the pyfunc's reason, a fault of the model as `Rejected` with
`fault=True` and the place it happened, never its message (it could quote request content).

The clinician app (`serve.app.ServedModel`), the PACS worker (`serve.pacs.scoring.Scorer`), `batch` and
`evaluate` hold one; swapping a model is replacing that one reference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from serve.common import first_line
from serve.contract import EXPLAIN_PARAM, IMAGE_COLUMN, THRESHOLD_PARAM, THRESHOLD_PREFIX, request_frame
from serve.model_uri import ModelUriError, ResolvedModel, resolve_model_uri


class ModelLoadError(ModelUriError):
    """A model URI that resolves but cannot be loaded, or is not a medimg image classifier; one line."""


class Rejected(Exception):
    """The model did not answer: `reason` is a short label (metrics, ledgers), `message` one line for the user.

    `fault` is False for input the model refuses (an undecodable image, a bad param) and True for a failure of the
    model itself; then `message` is the error's type and `origin` where it happened, never the error's text.
    """

    def __init__(self, reason: str, message: str, *, fault: bool = False, origin: str = ""):
        super().__init__(reason)
        self.reason, self.message, self.fault, self.origin = reason, message, fault, origin


def fault_origin(error: BaseException) -> str:
    """`file:line in function` of the innermost frame of the error's traceback (the place the fault happened)."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    innermost = frames[-1]
    return f"{Path(innermost.filename).name}:{innermost.lineno} in {innermost.name}"


def rejected(error: Exception) -> Rejected:
    """The Rejected for an exception of the pyfunc's predict."""
    from mlflow.exceptions import MlflowException

    reason = getattr(error, "reason", None)
    if reason:
        # The pyfunc names the row; one image per answer says nothing more to its reader.
        return Rejected(str(reason), re.sub(r"^row 0: ", "", first_line(getattr(error, "message", error))))
    if isinstance(error, MlflowException) and error.error_code == "INVALID_PARAMETER_VALUE":
        return Rejected("bad_param", first_line(error.message))
    return Rejected("model_error", type(error).__name__, fault=True, origin=fault_origin(error))


def python_model(pyfunc_model):
    """The medimg ImageClassifier inside a loaded pyfunc (its Keras model and ClassifierConfig), else None."""
    unwrap = getattr(pyfunc_model, "unwrap_python_model", None)
    if unwrap is None:
        return None
    try:
        inner = unwrap()
    except Exception:  # MLflow raises its own exception for pyfuncs that are not Python models.
        return None
    return inner if hasattr(inner, "model") and hasattr(inner, "config") else None


class LoadedModel:
    """One model version, loaded once: what it is and how it answers (see the module docstring)."""

    def __init__(self, pyfunc_model, resolved: ResolvedModel):
        """pyfunc_model: mlflow.pyfunc.load_model(resolved.load_uri); resolved: serve.model_uri.ResolvedModel."""
        self.pyfunc = pyfunc_model
        self.resolved = resolved
        self.param_specs = {spec.name: spec for spec in (pyfunc_model.metadata.get_params_schema() or [])}
        outputs = pyfunc_model.metadata.get_output_schema()
        # Probability columns are the doubles of the output schema; threshold_<column> columns are operating points.
        self.classes = [
            spec.name
            for spec in (outputs.inputs if outputs is not None else [])
            if spec.type.name == "double" and not spec.name.startswith(THRESHOLD_PREFIX)
        ]
        # None when the model has no single default: its stored per-class operating points decide.
        threshold = self.param_specs.get(THRESHOLD_PARAM)
        self.default_threshold = None if threshold is None or threshold.default is None else float(threshold.default)
        self.classifier = python_model(pyfunc_model)
        # The medimg pyfunc's ClassifierConfig; None for other pyfuncs.
        self.config = getattr(self.classifier, "config", None)

    @classmethod
    def load(cls, uri: str, resolved: ResolvedModel | None = None) -> LoadedModel:
        """Resolve (unless `resolved` is given) and load; ModelUriError or ModelLoadError with one line."""
        import mlflow
        from mlflow.exceptions import MlflowException

        resolved = resolved if resolved is not None else resolve_model_uri(uri)
        try:
            return cls(mlflow.pyfunc.load_model(resolved.load_uri), resolved)
        except (MlflowException, OSError) as error:
            raise ModelLoadError(f"cannot load {uri}: {first_line(getattr(error, 'message', error))}") from None

    def image_classifier(self):
        """The medimg ImageClassifier; ModelLoadError for a pyfunc that is not one."""
        if self.classifier is None:
            raise ModelLoadError(
                f"{self.resolved.uri} is not a medimg image classifier (serve.pyfunc.ImageClassifier: no classifier "
                "configuration)"
            )
        return self.classifier

    @property
    def label(self) -> str:
        return self.resolved.label

    @property
    def explains(self) -> bool:
        """Whether the model takes the `explain` param (models logged before it existed do not)."""
        return EXPLAIN_PARAM in self.param_specs

    @property
    def modalities(self) -> tuple[str, ...]:
        """The DICOM Modality values of the images it was trained on; empty: any image modality."""
        return tuple(self.config.modalities) if self.config is not None else ()

    def predict(self, images: bytes | Sequence[bytes | str], params: dict | None = None):
        """The answer frame, one row per image (bytes, or base64 text); Rejected when the model does not answer."""
        try:
            return self.pyfunc.predict(request_frame(images), params=params or None)
        except Exception as error:
            raise rejected(error) from None

    def score(self, image: bytes, params: dict | None = None) -> dict:
        """The answer row of one image, as a dict of column -> value."""
        return self.predict(image, params).iloc[0].to_dict()

    def example_image(self) -> bytes | str:
        """The first image of the input example the model was logged with (base64 text), else a grey 64 px PNG."""
        example = getattr(self.pyfunc, "input_example", None)
        if example is not None and IMAGE_COLUMN in getattr(example, "columns", ()) and len(example):
            return str(example[IMAGE_COLUMN].iloc[0])
        import numpy as np

        from serve.explain import png_base64

        return png_base64(np.full((64, 64, 3), 128, dtype=np.uint8))

    def warm_up(self) -> dict:
        """Score the model's own input example (with Grad-CAM when it explains), so the first request does not wait
        for TensorFlow to trace the model; its answer row, or Rejected."""
        return self.score(self.example_image(), {EXPLAIN_PARAM: True} if self.explains else None)
