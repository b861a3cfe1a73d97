"""DICOM results of one scored image: reads the source data set and the model's answer, writes (in memory) a TID 1500 Comprehensive 3D SR and a Secondary Capture overlay with highdicom.

Both go into the source's study, each in a series of its own (an SR series and an OT series: a series
has one modality), with patient and study modules copied from the source. Their series and instance
UIDs are derived from the source's UIDs, the model version and the SR template version (name-based UUIDs
under the 2.25 root), so storing the results of one image twice stores the same instances, never a second
report.

The SR is encoded as the IHE Radiology AI Results (AIR) profile encodes its result primitives: a Comprehensive
3D SR (TID 1500 Measurement Report) with one measurement group (TID 1501) per finding, each carrying a
tracking identifier and UID (TID 4108), the algorithm identification (TID 4019: registered model name, version,
model id and URI), the finding's coded concept (SNOMED CT where the model carries one, else medimg's private
code) as the finding type and as a qualitative evaluation whose value is Present or Absent (CID 240), the
calibrated probability as a measurement (DCM 122157 "Probability"), the operating point it was decided at, and
the scored image (and frame) as the source. With a Parametric Map of the heatmap (serve.pacs.heatmap), the
explained finding's group names it as its best illustration (CID 7003) and the SR lists it as evidence (highdicom's
TID 1600 image library takes no Parametric Map). The Secondary Capture is the scored picture with the Grad-CAM
heatmap and the findings burned in, marked as not for diagnostic use.
"""

from __future__ import annotations

import base64
import io
import uuid
from dataclasses import dataclass

import numpy as np

from serve.concepts import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME, Concept
from serve.contract import MODEL_ID_COLUMN, has_thresholds, read_answer

MANUFACTURER = "medimg"
SR_SERIES_DESCRIPTION = "medimg AI findings"
SC_SERIES_DESCRIPTION = "medimg AI heatmap - NOT FOR DIAGNOSTIC USE"
PM_SERIES_DESCRIPTION = "medimg AI heatmap data - NOT FOR DIAGNOSTIC USE"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
NOT_FOR_DIAGNOSIS_TEXT = (
    f"{NOT_FOR_DIAGNOSIS}: output of an AI model (medimg), not reviewed by a radiologist; "
    "its findings and heatmap are burned into the picture."
)
# Series numbers of the results, high so that viewers list them after the acquired series.
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
PM_SERIES_NUMBER = 9903
# The SR template version the worker writes now, recorded in the ledger beside each reported image (the one before,
# a Comprehensive SR with private finding codes, is serve.pacs.ledger.LEGACY_SR_TEMPLATE). Part of the SR's UIDs:
# a report of another template is another object, never the same UID with other content.
SR_TEMPLATE = "air-3d-sr-2"
# The calibrated probability: DICOM's own code (PS3.16 Annex D). The operating point has none that fits (DCM 122411
# "Threshold Value" is defined for wall motion), so it stays in medimg's private scheme.
PROBABILITY = ("122157", "DCM", "Probability")
THRESHOLD = ("THRESHOLD", PRIVATE_SCHEME, "Operating point threshold")
# How a finding's group names the Parametric Map of its heatmap (PS3.16 CID 7003 Purpose of Reference).
BEST_ILLUSTRATION = ("121080", "DCM", "Best illustration of finding")
# The namespace of the name-based UUIDs of result UIDs (PS3.5 B.2: 2.25 followed by the UUID as an integer).
UID_NAMESPACE = uuid.UUID("6f0d5a47-2f53-4c1e-9a7c-2f64a3e1b0d4")
# Secondary Captures shown in a viewer: small pictures are enlarged so that the burned-in text stays legible,
# large ones reduced so that an overlay stays a few megabytes.
SC_MIN_SIDE = 512
SC_MAX_SIDE = 1024
HEATMAP_OPACITY = 0.5
# Patient and study attributes that a DICOM object must carry (Type 2: present, empty when unknown).
TYPE_2_HEADER = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime")
TYPE_2_HEADER += ("ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class Algorithm:
    """The model that scored the image, as the SR names it: registered name, version and logged-model id."""

    name: str
    version: str
    model_id: str = ""
    uri: str = ""

    @property
    def parameters(self) -> list[str]:
        """The SR's Algorithm Parameters: the model id and the URI the worker was given."""
        labels = ((MODEL_ID_COLUMN, self.model_id), ("model_uri", self.uri))
        return [f"{label}={value}" for label, value in labels if value]


@dataclass(frozen=True)
class Finding:
    """One output of the answer: its calibrated probability, the threshold it was decided at (None for a
    multi-class answer, where the most probable class wins) and the decision."""

    name: str
    probability: float
    threshold: float | None
    present: bool


def findings_of(row: dict, outputs: list[str], task: str) -> list[Finding]:
    """The findings of one answer row, read through the answer contract."""
    answer = read_answer(row, outputs)
    findings = []
    for name in outputs:
        threshold = answer.thresholds.get(name) if has_thresholds(task) else None
        findings.append(Finding(name, answer.probabilities[name], threshold, name in answer.predicted))
    return findings


def derived_uid(*parts: str) -> str:
    """A UID that the same parts always give: 2.25 and a name-based (SHA-1) UUID of the parts."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '|'.join(parts)).int}"


@dataclass(frozen=True)
class ResultUids:
    """The series and instance UIDs of one image's SR, Secondary Capture and Parametric Map under one model version.

    The SR's instance UID also depends on the SR template version: a report of another template (another SOP class
    and content) gets its own UID.
    """

    sr_series: str
    sr_instance: str
    sc_series: str
    sc_instance: str
    pm_series: str
    pm_instance: str

    @classmethod
    def of(cls, study_uid: str, sop_uid: str, algorithm: Algorithm) -> ResultUids:
        model = f"{algorithm.name}/{algorithm.version}/{algorithm.model_id}"
        return cls(
            sr_series=derived_uid("sr-series", study_uid, model),
            sr_instance=derived_uid("sr", sop_uid, model, SR_TEMPLATE),
            sc_series=derived_uid("sc-series", study_uid, model),
            sc_instance=derived_uid("sc", sop_uid, model),
            pm_series=derived_uid("pm-series", study_uid, model),
            pm_instance=derived_uid("pm", sop_uid, model),
        )


def header_of(source):
    """The source's attributes without pixel data, Type 2 patient and study attributes present (empty when absent)."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in source:
        if element.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(element)
    for keyword in TYPE_2_HEADER:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def coded(concept: Concept | tuple[str, str, str]):
    """highdicom's CodedConcept of a medimg concept or a (value, scheme, meaning) triple."""
    from highdicom.sr import CodedConcept

    value, scheme, meaning = (
        (concept.value, concept.scheme, concept.meaning) if isinstance(concept, Concept) else concept
    )
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _coding_scheme():
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME)


def finding_group(finding: Finding, concept: Concept, source, frame: int | None, algorithm: Algorithm, uid: str):
    """The TID 1501 measurement group of one finding: its concept, probability, threshold, decision, algorithm, image."""
    from highdicom.sr import (
        AlgorithmIdentification,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        SourceImageForMeasurement,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    frames = [frame + 1] if frame is not None else None
    algorithm_id = AlgorithmIdentification(algorithm.name, algorithm.version, parameters=algorithm.parameters or None)
    unit = codes.UCUM.NoUnits
    measurements = [
        Measurement(
            name=coded(PROBABILITY),
            value=round(finding.probability, 6),
            unit=unit,
            referenced_images=[SourceImageForMeasurement.from_source_image(source, frames)],
        )
    ]
    if finding.threshold is not None:
        measurements.append(Measurement(name=coded(THRESHOLD), value=round(finding.threshold, 6), unit=unit))
    decision = codes.SCT.Present if finding.present else codes.SCT.Absent
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier=f"{finding.name} (medimg)"[:64]),
        finding_type=coded(concept),
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=[QualitativeEvaluation(name=coded(concept), value=decision)],
        source_images=[SourceImageForMeasurementGroup.from_source_image(source, frames)],
    )


def device_observer(algorithm: Algorithm):
    """The SR's observer: the model as a device (TID 1004), its UID derived from the model version."""
    from highdicom.sr import DeviceObserverIdentifyingAttributes, ObservationContext, ObserverContext
    from pydicom.sr.codedict import codes

    device = ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", algorithm.name, algorithm.version, algorithm.model_id),
            name=f"{algorithm.name} {algorithm.version}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.name[:64],
            serial_number=algorithm.version[:64],
        ),
    )
    return ObservationContext(observer_device_context=device)


@dataclass(frozen=True)
class Scored:
    """What one SR reports: the findings of one answer, their concepts (in output order) and the frame scored."""

    findings: list[Finding]
    concepts: list[Concept]
    frame: int | None = None
    # The output the heatmap explains ('' without one).
    explained: str = ""

    @property
    def uses_private_codes(self) -> bool:
        return any(concept.is_private for concept in self.concepts) or any(
            finding.threshold is not None for finding in self.findings
        )


def illustration(heatmap):
    """The content item that points a finding's group at the Parametric Map of its heatmap (PS3.16 CID 7003)."""
    from highdicom.sr import ImageContentItem, RelationshipTypeValues

    return ImageContentItem(
        name=coded(BEST_ILLUSTRATION),
        referenced_sop_class_uid=heatmap.SOPClassUID,
        referenced_sop_instance_uid=heatmap.SOPInstanceUID,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )


def structured_report(source, scored: Scored, algorithm: Algorithm, uids: ResultUids, heatmap=None):
    """The Comprehensive 3D SR (TID 1500) of one scored image: unverified, preliminary, complete.

    `heatmap`: the Parametric Map of the explained finding's heatmap, referenced from that finding's group.
    """
    from highdicom.sr import Comprehensive3DSR, MeasurementReport

    header = header_of(source)
    groups = []
    for finding, concept in zip(scored.findings, scored.concepts, strict=True):
        uid = derived_uid("finding", uids.sr_instance, finding.name)
        groups.append(finding_group(finding, concept, header, scored.frame, algorithm, uid))
        if heatmap is not None and finding.name == scored.explained:
            groups[-1][0].ContentSequence.append(illustration(heatmap))
    report = MeasurementReport(
        observation_context=device_observer(algorithm),
        procedure_reported=_imaging_procedure(),
        imaging_measurements=groups,
    )
    return Comprehensive3DSR(
        evidence=[header] if heatmap is None else [header, heatmap],
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        coding_schemes=[_coding_scheme()] if scored.uses_private_codes else None,
    )


def _imaging_procedure():
    from highdicom.sr import CodedConcept

    # SNOMED CT 363679005 "Imaging procedure": the report is about the image, whatever the exam was.
    return CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging procedure")


def burned_in_picture(picture: np.ndarray, overlay_png: str | None, lines: list[str]) -> np.ndarray:
    """The scored picture (H, W, 3 in 0-255) with the heatmap (an RGBA PNG, base64; none for models that do not
    explain) laid over it and a black band
    of text lines above it; uint8 RGB, the long side between SC_MIN_SIDE and SC_MAX_SIDE."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.rint(np.clip(picture, 0.0, 255.0)).astype(np.uint8))
    scale = min(max(SC_MIN_SIDE / max(image.size), 1.0), SC_MAX_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    blended = np.asarray(image, dtype=np.float64)
    if overlay_png:
        with Image.open(io.BytesIO(base64.b64decode(overlay_png))) as heat:
            heat = np.asarray(heat.convert("RGBA").resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
        weight = heat[..., 3:] / 255.0 * HEATMAP_OPACITY
        blended = blended * (1.0 - weight) + heat[..., :3] * weight
    font_size = max(12, size[0] // 30)
    font = ImageFont.load_default(size=font_size)
    band = round(font_size * 1.3) * len(lines) + font_size // 2
    canvas = Image.new("RGB", (size[0], size[1] + band), (0, 0, 0))
    canvas.paste(Image.fromarray(np.rint(blended).astype(np.uint8)), (0, band))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        colour = (255, 64, 64) if number == 0 else (255, 255, 255)
        draw.text((font_size // 3, font_size // 4 + number * round(font_size * 1.3)), line, fill=colour, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def overlay_lines(findings: list[Finding], algorithm: Algorithm, explained: str) -> list[str]:
    """The text burned into the Secondary Capture: the warning, the model, each finding and the heatmap's class."""
    lines = [f"{NOT_FOR_DIAGNOSIS} - AI output", f"{algorithm.name} version {algorithm.version}"]
    for finding in findings:
        decision = "PRESENT" if finding.present else "absent"
        operating = f" (threshold {finding.threshold:.2f})" if finding.threshold is not None else ""
        lines.append(f"{finding.name}: {finding.probability:.2f}{operating} {decision}")
    if explained:
        lines.append(f"heatmap: {explained}")
    return lines


def secondary_capture(source, pixels: np.ndarray, algorithm: Algorithm, uids: ResultUids, explained: str):
    """The Secondary Capture of burned-in `pixels` (uint8 RGB) in the source's study, marked not for diagnosis."""
    from highdicom.sc import SCImage
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    header = header_of(source)
    orientation = [str(value) for value in (source.get("PatientOrientation") or [])]
    capture = SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uids.sc_series,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uids.sc_instance,
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        # The rows and columns keep the source's directions; highdicom needs two, the source may have none.
        patient_orientation=tuple(orientation) if len(orientation) == 2 else ("L", "F"),
        series_description=SC_SERIES_DESCRIPTION,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
    )
    # Type 2: the source's orientation, empty when it gave none (unknown).
    capture.PatientOrientation = orientation if len(orientation) == 2 else ""
    capture.copy_patient_and_study_information(header)
    # Type 2C: the source's laterality (of a paired body part), empty when unknown.
    capture.Laterality = str(source.get("Laterality") or source.get("ImageLaterality") or "").strip()
    capture.BurnedInAnnotation = "YES"
    capture.RecognizableVisualFeatures = "NO"
    heatmap = f" Grad-CAM heatmap of {explained}." if explained else ""
    capture.ImageComments = f"{NOT_FOR_DIAGNOSIS_TEXT}{heatmap}"
    capture.DerivationDescription = f"{NOT_FOR_DIAGNOSIS_TEXT} Model {algorithm.name} version {algorithm.version}."[
        :1024
    ]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    return capture
