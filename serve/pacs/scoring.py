"""The worker's model and its eligibility rules: reads a registered model (MLflow) and instance attributes, writes answer rows in memory.

`Scorer` resolves the model URI once (`serve.model_uri`), loads that version with `mlflow.pyfunc.load_model`
and scores image bytes through the model's own pyfunc (decoder, calibration, operating points, Grad-CAM),
exactly as `mlflow models serve` and the clinician app do. `Eligibility` decides from the attributes QIDO-RS
lists (and again from the retrieved header) whether an instance is an image the model should score.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from serve.common import first_line
from serve.contract import EXPLAIN_PARAM, IMAGE_COLUMN
from serve.pacs.dicomweb import InstanceRow
from serve.pacs.reports import MANUFACTURER, SC_SERIES_DESCRIPTION, SR_SERIES_DESCRIPTION, Algorithm
from serve.preprocess import NON_IMAGE_MODALITIES, NON_IMAGE_SOP_WORDS

# A DICOM Modality value (PS3.3 C.7.3.1.1.1 defined terms are 2-3 letters; CS allows 16 characters).
MODALITY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
OWN_SERIES = frozenset({SR_SERIES_DESCRIPTION, SC_SERIES_DESCRIPTION})


class BadInstance(Exception):
    """An instance that cannot be scored; `reason` is a short label (metrics, ledger, log)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def parse_modalities(text: str) -> tuple[str, ...]:
    """`CR,DX` -> ("CR", "DX"); ValueError with one line for anything that is not a list of Modality values."""
    values = tuple(dict.fromkeys(part.strip().upper() for part in text.split(",") if part.strip()))
    for value in values:
        if len(value) > 16 or not set(value) <= MODALITY_CHARACTERS:
            raise ValueError(f"--modalities: {value!r} is not a DICOM Modality value; give e.g. CR,DX")
        if value in NON_IMAGE_MODALITIES:
            raise ValueError(f"--modalities: {value} objects hold no image to score; give image modalities, e.g. CR,DX")
    if not values:
        raise ValueError("--modalities is empty; give e.g. CR,DX")
    return values


def sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return "" if name == uid else name


@dataclass(frozen=True)
class Eligibility:
    """Which instances are scored: images of `modalities` (empty: any image modality), never the worker's own output."""

    modalities: tuple[str, ...]

    def reason(self, row: InstanceRow) -> str | None:
        """Why QIDO-RS's attributes rule the instance out, or None."""
        if row.manufacturer == MANUFACTURER or row.series_description in OWN_SERIES:
            return "own_output"
        name = sop_class_name(row.sop_class_uid)
        if row.modality in NON_IMAGE_MODALITIES or any(word in name for word in NON_IMAGE_SOP_WORDS):
            return "not_an_image"
        if self.modalities and row.modality not in self.modalities:
            return "modality"
        return None

    def header_reason(self, dataset) -> str | None:
        """Why the retrieved header rules it out (attributes QIDO-RS may not list), or None."""
        from serve.preprocess import non_image_reason

        if str(dataset.get("Manufacturer", "")).strip() == MANUFACTURER:
            return "own_output"
        if non_image_reason(dataset):
            return "not_an_image"
        modality = str(dataset.get("Modality", "")).strip().upper()
        if self.modalities and modality not in self.modalities:
            return "modality"
        return None

    def describe(self) -> str:
        return ", ".join(self.modalities) if self.modalities else "any image modality"


class Scorer:
    """One registered model version, loaded once, scoring image bytes through its pyfunc with Grad-CAM."""

    def __init__(self, pyfunc_model, resolved):
        """pyfunc_model: mlflow.pyfunc.load_model(resolved.load_uri); resolved: serve.model_uri.ResolvedModel."""
        self.pyfunc = pyfunc_model
        self.resolved = resolved
        # The served model's own configuration: outputs, task and the modalities it was trained on.
        self.config = pyfunc_model.unwrap_python_model().config
        params = pyfunc_model.metadata.get_params_schema()
        self.explains = params is not None and EXPLAIN_PARAM in {spec.name for spec in params}
        self.algorithm = Algorithm(
            name=resolved.name or "medimg-model",
            version=resolved.version or "unregistered",
            model_id=resolved.model_id,
            uri=resolved.uri,
        )

    @classmethod
    def load(cls, uri: str) -> Scorer:
        """Resolve and load the model; ValueError with one line when it cannot be found or loaded."""
        import mlflow
        from mlflow.exceptions import MlflowException

        from serve.model_uri import resolve_model_uri

        resolved = resolve_model_uri(uri)
        try:
            return cls(mlflow.pyfunc.load_model(resolved.load_uri), resolved)
        except MlflowException as error:
            raise ValueError(f"cannot load {uri}: {first_line(error.message)}") from None
        except AttributeError:
            raise ValueError(f"{uri} is not a medimg image classifier (no classifier configuration)") from None

    @property
    def outputs(self) -> list[str]:
        return list(self.config.output_columns)

    @property
    def label(self) -> str:
        return self.resolved.label

    def score(self, data: bytes) -> dict:
        """The model's answer row for one image (with the Grad-CAM columns when the model explains)."""
        import pandas as pd

        frame = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(data).decode("ascii")]})
        try:
            answer = self.pyfunc.predict(frame, params={EXPLAIN_PARAM: True} if self.explains else None)
        except Exception as error:
            # The pyfunc's rejections name their reason (serve.pyfunc.InvalidImageInput); anything else is the model's.
            reason = getattr(error, "reason", None)
            if reason:
                raise BadInstance(str(reason)) from None
            raise BadInstance("model_error", type(error).__name__) from None
        return answer.iloc[0].to_dict()
