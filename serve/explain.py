"""Grad-CAM answer columns of the served model: reads model-input images and heatmaps (NumPy), writes base64 PNG strings.

With the request param `explain=true` every answer row gains three columns (named in serve.contract):
`gradcam_class` (the output the heatmap explains), `gradcam_overlay` (an RGBA PNG the size of the
model input: jet colours, alpha = heat 0-255, transparent where the class has no evidence; lay it over
the image, stretched to the image's size) and `gradcam_input` (a PNG of the image the model saw,
decoded, windowed and resized, so a DICOM can be shown in a browser).
"""

from __future__ import annotations

import base64
import io

import numpy as np

from serve.contract import EXPLAINED_CLASS_COLUMN, EXPLAINED_INPUT_COLUMN, OVERLAY_COLUMN

# Centres of the red, green and blue ramps of the jet colour map on the heat axis (times 4).
JET_CENTRES = np.array([3.0, 2.0, 1.0])


def overlay_rgba(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) heat in [0, 1] -> (H, W, 4) uint8: jet colours (blue cold, red hot), alpha = heat."""
    heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, 1.0)[..., np.newaxis]
    rgb = np.clip(1.5 - np.abs(4.0 * heat - JET_CENTRES), 0.0, 1.0)
    return np.rint(np.concatenate([rgb, heat], axis=-1) * 255.0).astype(np.uint8)


def png_base64(pixels: np.ndarray) -> str:
    """Base64 text of a lossless PNG of uint8 (H, W, 3 or 4) pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explanation_columns(images: np.ndarray, heatmaps: np.ndarray, classes: list[str]) -> dict[str, list[str]]:
    """The three Grad-CAM columns for a batch: model inputs (B, S, S, 3) in 0-255, heatmaps (B, S, S), class names."""
    inputs = [png_base64(np.rint(np.clip(image, 0.0, 255.0)).astype(np.uint8)) for image in images]
    overlays = [png_base64(overlay_rgba(heatmap)) for heatmap in heatmaps]
    return {EXPLAINED_CLASS_COLUMN: list(classes), OVERLAY_COLUMN: overlays, EXPLAINED_INPUT_COLUMN: inputs}
