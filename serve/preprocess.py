"""Turns encoded image bytes (PNG, JPEG, BMP, GIF, DICOM) into RGB float32 tensors in the 0-255 range.

This is the one preprocessing path of medimg: the training input pipelines map
`decode_and_resize` over file contents, and the served model calls
`load_image_tensor` on request bytes, so one file gives the same tensor both ways.
"""

from __future__ import annotations

import io

import numpy as np

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"


def is_dicom(data: bytes) -> bool:
    """Return True when `data` carries the DICOM Part 10 preamble and magic."""
    return len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def decode_image(image_bytes, channels: int = 3):
    """Decode a scalar string tensor of PNG/JPEG/BMP/GIF bytes to float32 HxWx3 in 0-255.

    8-bit and 16-bit images are both mapped to 0-255; grayscale, palette and RGBA
    images become RGB (alpha is dropped). Graph-safe: usable inside `tf.data.map`.
    """
    import tensorflow as tf

    # dtype=float32 makes TensorFlow scale by the type's maximum (255 or 65535),
    # so 16-bit PNGs land in the same range as 8-bit ones.
    image = tf.io.decode_image(image_bytes, channels=channels, dtype=tf.float32, expand_animations=False)
    image.set_shape([None, None, channels])
    return image * 255.0


def resize(image, image_size: int):
    """Resize an HxWx3 float image to image_size x image_size (bilinear, antialiased), clipped to 0-255."""
    import tensorflow as tf

    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def decode_and_resize(image_bytes, image_size: int):
    """Decode encoded bytes and resize: the function every training pipeline maps over files."""
    return resize(decode_image(image_bytes), image_size)


def one_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception message, shortened, for error messages that must stay on one line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_dicom(data: bytes, *, pixels: bool = True):
    """Parse DICOM bytes with pydicom; `pixels=False` stops before the pixel data (a cheap header read)."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not pixels)
    except Exception as error:  # pydicom raises many exception types for broken files.
        raise ValueError(f"not a readable DICOM file: {one_line(error)}") from error


def dicom_dimensions(data: bytes) -> tuple[int, int, int]:
    """Width, height and number of frames from the DICOM header, without decoding pixel data."""
    dataset = read_dicom(data, pixels=False)
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ValueError("DICOM file has no image (Rows and Columns are missing)")
    frames = dataset.get("NumberOfFrames", 1)
    return int(dataset.Columns), int(dataset.Rows), max(1, int(frames or 1))


def _voi_unit_range(values: np.ndarray, dataset) -> np.ndarray | None:
    """Apply the file's VOI LUT or window and scale its output range to 0-1; None when the file has neither.

    The scale comes from the window's output range, not from the image's own minimum and maximum,
    so a window that the image does not fill keeps the contrast a DICOM viewer shows.
    """
    from pydicom.pixels import apply_voi_lut, apply_windowing

    if dataset.get("VOILUTSequence"):
        output = apply_voi_lut(values, dataset).astype(np.float64)
        low, high = 0.0, float(2 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        output = apply_windowing(values.astype(np.float64), dataset)
        # The window's output range depends on BitsStored, PixelRepresentation and the rescale; the
        # window maps values far outside it to exactly its two ends, so this reads the range off pydicom.
        low, high = apply_windowing(np.array([-1e30, 1e30]), dataset).tolist()
    else:
        return None
    if high <= low:
        return np.zeros_like(output)
    return np.clip((output - low) / (high - low), 0.0, 1.0)


def dicom_to_array(data: bytes) -> np.ndarray:
    """Read DICOM bytes into an HxWx3 float32 array in 0-255.

    Applies the rescale slope/intercept (modality LUT) and the VOI LUT or window stored in the
    file (without one, the image's own range is stretched to 0-255), inverts MONOCHROME1 so that
    bone is bright as in MONOCHROME2, and raises ValueError with a one-line reason when the file
    has no pixel data or its pixel data cannot be decoded.
    """
    from pydicom.pixels import apply_modality_lut

    dataset = read_dicom(data)
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise ValueError("DICOM file has no pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # Missing decoders and truncated data raise different types.
        raise ValueError(f"DICOM pixel data cannot be decoded: {one_line(error)}") from error
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        if pixels.ndim != 2:
            # Multi-frame grayscale: the first frame is the image we classify.
            pixels = pixels[0]
        values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
        unit = _voi_unit_range(values, dataset)
        if unit is None:
            low, high = float(values.min()), float(values.max())
            unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
        if photometric == "MONOCHROME1":
            unit = 1.0 - unit
        rgb = np.repeat(unit[..., None] * 255.0, 3, axis=-1)
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        if pixels.ndim == 3:
            pixels = pixels[0]
        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        rgb = apply_color_lut(pixels, dataset).astype(np.float64) * (255.0 / float(2**bits - 1))
    else:
        # pydicom 3 already returns YBR_* pixel data converted to RGB.
        if pixels.ndim == 4:
            pixels = pixels[0]
        maximum = float(2 ** int(dataset.get("BitsStored", 8)) - 1)
        rgb = pixels.astype(np.float64) * (255.0 / maximum)
    if not np.all(np.isfinite(rgb)):
        raise ValueError("DICOM pixel data holds values that are not finite")
    return rgb.astype(np.float32)


def load_image_tensor(data: bytes, image_size: int):
    """Decode any supported encoded image (DICOM included) to a float32 image_size x image_size x 3 tensor."""
    import tensorflow as tf

    if is_dicom(data):
        return resize(tf.constant(dicom_to_array(data)), image_size)
    return decode_and_resize(tf.constant(data), image_size)
