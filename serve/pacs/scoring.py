"""The worker's model and its eligibility rules: reads a registered model (MLflow) and instance attributes, writes answer rows in memory.

`Scorer` holds the worker's `serve.loaded.LoadedModel` (resolved once, loaded once) and scores image bytes
through the model's own pyfunc (decoder, calibration, operating points, Grad-CAM), exactly as
`mlflow models serve` and the clinician app do. `Eligibility` decides from the attributes QIDO-RS
lists (and again from the retrieved header) whether an instance is an image the model should score.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.common import first_line
from serve.concepts import concepts_of
from serve.contract import EXPLAIN_PARAM
from serve.following import Refused, loading_refusal, same_outputs
from serve.loaded import LoadedModel, Rejected
from serve.model_uri import ModelUriError, ResolvedModel
from serve.pacs.dicomweb import InstanceRow
from serve.pacs.reports import (
    MANUFACTURER,
    PM_SERIES_DESCRIPTION,
    SC_SERIES_DESCRIPTION,
    SR_SERIES_DESCRIPTION,
    Algorithm,
)
from serve.preprocess import NON_IMAGE_MODALITIES, NON_IMAGE_SOP_WORDS

# A DICOM Modality value (PS3.3 C.7.3.1.1.1 defined terms are 2-3 letters; CS allows 16 characters).
MODALITY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
OWN_SERIES = frozenset({SR_SERIES_DESCRIPTION, SC_SERIES_DESCRIPTION, PM_SERIES_DESCRIPTION})


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
    """The worker's view of one loaded model (serve.loaded.LoadedModel): scores image bytes with Grad-CAM."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.resolved = model.resolved
        # The served model's own configuration: outputs, task and the modalities it was trained on.
        self.config = model.image_classifier().config
        # The coded concept of each output (SNOMED CT where the model carries one, else medimg's private code).
        self.concepts = concepts_of(self.config)
        self.explains = model.explains
        self.algorithm = Algorithm(
            name=model.resolved.name or "medimg-model",
            version=model.resolved.version or "unregistered",
            model_id=model.resolved.model_id,
            uri=model.resolved.uri,
        )

    @classmethod
    def load(cls, uri: str) -> Scorer:
        """Resolve and load the model; ValueError with one line when it cannot be found or loaded."""
        return cls(LoadedModel.load(uri))

    @property
    def outputs(self) -> list[str]:
        return list(self.config.output_columns)

    @property
    def label(self) -> str:
        return self.resolved.label

    def score(self, data: bytes) -> dict:
        """The model's answer row for one image (with the Grad-CAM columns when the model explains)."""
        try:
            return self.model.score(data, {EXPLAIN_PARAM: True} if self.explains else None)
        except Rejected as rejected:
            # The pyfunc's rejections name their reason (serve.pyfunc.InvalidImageInput); a fault is the model's.
            if rejected.fault:
                raise BadInstance("model_error", rejected.message) from None
            raise BadInstance(rejected.reason) from None


def load_candidate(target: ResolvedModel, current: Scorer) -> Scorer:
    """The version an alias moved to, as the worker would score with it; Refused when it cannot take the served
    one's place: it does not load or is not a medimg classifier, answers another task or other classes, has no
    coded concept for a class (every finding of the SR needs one), or fails its own input example."""
    try:
        candidate = Scorer(LoadedModel.load(target.uri, target))
    except ModelUriError as error:
        raise loading_refusal(error) from None
    except Exception as error:  # Whatever a broken model's loader raises: the worker must keep scoring.
        raise Refused("unloadable", f"{type(error).__name__}: {first_line(error)}") from None
    same_outputs(current.outputs, current.config.task, candidate.outputs, candidate.config.task)
    uncoded = [name for name, concept in zip(candidate.outputs, candidate.concepts, strict=False) if not concept.value]
    if uncoded or len(candidate.concepts) != len(candidate.outputs):
        raise Refused("incompatible", f"no coded concept for {', '.join(uncoded) or 'every class'}: the SR needs one")
    try:
        candidate.model.warm_up()
    except Rejected as rejected:
        raise Refused("warm_up_failed", rejected.message) from None
    return candidate
