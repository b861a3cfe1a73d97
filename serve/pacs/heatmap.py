"""The Grad-CAM heatmap of one scored image as data: reads the answer's heatmap PNG and the source data set, writes (in memory) a DICOM Parametric Map with highdicom.

The answer's `gradcam_overlay` is an RGBA PNG the size of the model input whose alpha channel is the heat (0-255,
serve.explain); the map stretches it to the source image's rows and columns, as the overlay is laid over the image,
and stores it as 16-bit integers with a Real World Value Mapping back to heat 0-1 whose quantity is DICOM's
"Gradient-weighted class activation" (DCM 130403, CID 217 Visual Explanation). Its series and instance UIDs are
derived like the other results' (serve.pacs.reports.ResultUids), so a second store is the same instance.

The Parametric Map IOD needs a frame of reference, pixel measures and a plane position and orientation, which a
projection radiograph does not have: the map gets a frame of reference of its own (a UID derived from the source
image's), a nominal position (0, 0, 0) and orientation (rows along x, columns along y), and the source's pixel
spacing (Pixel Spacing, else Imager Pixel Spacing, else 1 mm, the last an assumption, not a measurement). It names
the source image in its Derivation Image Sequence with Spatial Locations Preserved YES: a viewer aligns it with the
image pixel for pixel, not through patient coordinates. Multi-frame sources get no map.
"""

from __future__ import annotations

import base64
import copy
import io

import numpy as np

from serve.pacs.reports import (
    MANUFACTURER,
    PM_SERIES_DESCRIPTION,
    PM_SERIES_NUMBER,
    Algorithm,
    ResultUids,
    derived_uid,
    header_of,
)

HEATMAP_LABEL = "GRADCAM"
# The Grad-CAM quantity: PS3.16 CID 217 Visual Explanation.
GRADCAM_QUANTITY = ("130403", "DCM", "Gradient-weighted class activation")
# Heat 0-1 is stored as 0-65535 (the Parametric Map IOD takes 16-bit integers, not 8-bit ones).
STORED_MAXIMUM = 65535
NOMINAL_PIXEL_SPACING = (1.0, 1.0)


def heat_of(overlay_png: str, rows: int, columns: int) -> np.ndarray:
    """The heat (0-1, float) of an answer's RGBA heatmap PNG, stretched to rows x columns."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(overlay_png))) as picture:
        alpha = picture.convert("RGBA").getchannel("A").resize((columns, rows), Image.Resampling.BILINEAR)
        return np.asarray(alpha, dtype=np.float64) / 255.0


def pixel_spacing(source) -> tuple[float, float]:
    """The source's Pixel Spacing, else its Imager Pixel Spacing, else a nominal 1 mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = source.get(keyword)
        if values is not None and len(values) == 2 and all(float(value) > 0 for value in values):
            return float(values[0]), float(values[1])
    return NOMINAL_PIXEL_SPACING


def geometry_of(source):
    """The source header with the plane geometry a Parametric Map needs (see the module docstring)."""
    geometric = copy.deepcopy(header_of(source))
    geometric.FrameOfReferenceUID = derived_uid("pm-frame-of-reference", str(source.SOPInstanceUID))
    geometric.PositionReferenceIndicator = ""
    geometric.ImagePositionPatient = [0.0, 0.0, 0.0]
    geometric.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    geometric.PixelSpacing = list(pixel_spacing(source))
    geometric.SliceThickness = 1.0
    return geometric


def value_mapping(explained: str):
    """The Real World Value Mapping from the stored integers back to heat 0-1 of the explained class."""
    from highdicom.pm import RealWorldValueMapping
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return RealWorldValueMapping(
        lut_label=HEATMAP_LABEL,
        lut_explanation=f"Grad-CAM heat 0-1 of {explained}"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0, STORED_MAXIMUM),
        slope=1.0 / STORED_MAXIMUM,
        intercept=0.0,
        quantity_definition=CodedConcept(*GRADCAM_QUANTITY),
    )


def parametric_map(source, overlay_png: str, explained: str, algorithm: Algorithm, uids: ResultUids):
    """The Parametric Map of one answer's heatmap in the source's study; None for a multi-frame source."""
    from highdicom import VOILUTTransformation
    from highdicom.pm import ParametricMap

    if int(source.get("NumberOfFrames") or 1) > 1:
        return None
    heat = heat_of(overlay_png, int(source.Rows), int(source.Columns))
    heatmap = ParametricMap(
        source_images=[geometry_of(source)],
        pixel_array=np.rint(heat * STORED_MAXIMUM).astype(np.uint16),
        series_instance_uid=uids.pm_series,
        series_number=PM_SERIES_NUMBER,
        sop_instance_uid=uids.pm_instance,
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.version[:64],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[value_mapping(explained)],
        voi_lut_transformations=[VOILUTTransformation(window_center=STORED_MAXIMUM / 2, window_width=STORED_MAXIMUM)],
        content_label=HEATMAP_LABEL,
        content_description=f"Grad-CAM heatmap of {explained}"[:64],
        series_description=PM_SERIES_DESCRIPTION,
    )
    # Type 2C: the source's laterality (of a paired body part), empty when unknown; as the Secondary Capture's.
    heatmap.Laterality = str(source.get("Laterality") or source.get("ImageLaterality") or "").strip()
    heatmap.copy_patient_and_study_information(header_of(source))
    return heatmap
