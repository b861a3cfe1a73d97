"""Turns encoded image bytes (PNG, JPEG, BMP, GIF, DICOM) into RGB float32 tensors in the 0-255 range.

This is the one preprocessing path of medimg: the training input pipelines map
`decode_and_resize` over file contents, and the served model calls
`load_image_tensor` on request bytes, so one file gives the same tensor both ways.

Two decoders sit behind both entry points, chosen per file by its first bytes:
- 8-bit PNG, JPEG (MPO included: its first picture), GIF and BMP are decoded by TensorFlow in the graph;
- DICOM (with or without the Part 10 preamble) and 16-bit PNG are decoded by `decode_array` in numpy
  (inside training graphs through `tf.numpy_function`), which keeps their true bit depth.
"""

from __future__ import annotations

import functools
import io

import numpy as np

from serve.common import first_line
from serve.contract import ACCEPTED_FORMATS_TEXT, MIDDLE_FRAME

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The IHDR chunk always comes first, so bytes 24 and 25 of every PNG are its bit depth and color type.
PNG_BIT_DEPTH_OFFSET = 24
PNG_COLOR_TYPE_OFFSET = 25
# Signatures of the formats TensorFlow decodes in the graph (a 16-bit PNG is routed to numpy).
GRAPH_SIGNATURES = (PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
# The first element of a DICOM data set without preamble: file meta (0002,xxxx) or identifying group (0008,xxxx).
RAW_DICOM_GROUPS = (0x0002, 0x0008)
# DICOM objects that carry no picture to classify, by Modality; the SOP class name is checked too.
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "KO", "PR", "REG", "ECG", "HD", "AU", "DOC"}
)
NON_IMAGE_SOP_WORDS = ("SR Storage", "Segmentation", "RT Structure", "RT Plan", "RT Dose", "Waveform")
NON_IMAGE_SOP_WORDS += ("Presentation State", "Key Object", "Encapsulated", "Registration", "Raw Data")
NOT_AN_IMAGE = f"not a {ACCEPTED_FORMATS_TEXT} image"


def is_graph_decodable(data: bytes) -> bool:
    """True for 8-bit PNG, JPEG, GIF and BMP bytes: the files TensorFlow decodes in the graph."""
    if data.startswith(PNG_SIGNATURE):
        return len(data) > PNG_BIT_DEPTH_OFFSET and data[PNG_BIT_DEPTH_OFFSET] != 16
    return data.startswith(GRAPH_SIGNATURES[1:])


def graph_decodable(image_bytes):
    """The graph twin of `is_graph_decodable` for a scalar string tensor (a test keeps the two equal)."""
    import tensorflow as tf

    # Only the first bytes are looked at; padding lets files shorter than the PNG header compare safely.
    head = tf.strings.substr(image_bytes, 0, 32) + b"\0" * 32
    png = tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE),
        tf.not_equal(tf.strings.substr(head, PNG_BIT_DEPTH_OFFSET, 1), b"\x10"),
    )
    others = [tf.equal(tf.strings.substr(head, 0, len(signature)), signature) for signature in GRAPH_SIGNATURES[1:]]
    return tf.reduce_any(tf.stack([png, *others]))


@functools.cache
def _dicom_vrs() -> frozenset[str]:
    from pydicom.valuerep import VR

    return frozenset(name for name in VR.__members__ if len(name) == 2)


def is_dicom(data: bytes) -> bool:
    """True for DICOM bytes: Part 10 files (preamble + `DICM`) and raw data sets that start with a DICOM element."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC:
        return True
    if len(data) < 8:
        return False
    for byteorder in ("little", "big"):
        if int.from_bytes(data[0:2], byteorder) not in RAW_DICOM_GROUPS:
            continue
        if data[4:6].decode("latin-1") in _dicom_vrs():
            return True
        # Implicit VR: a 4-byte value length that fits in the data follows the tag.
        if int.from_bytes(data[4:8], byteorder) <= len(data) - 8:
            return True
    return False


def decode_in_graph(image_bytes):
    """TensorFlow's graph decoder alone: 8-bit PNG, JPEG, GIF or BMP bytes -> float32 HxWx3 in 0-255."""
    import tensorflow as tf

    # dtype=float32 scales 8-bit values by 1/255; 16-bit PNGs never take this branch.
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.float32, expand_animations=False)
    image.set_shape([None, None, 3])
    return image * 255.0


def _as_bytes(value) -> bytes:
    # tf.numpy_function hands a string tensor over as bytes in graphs and as a 0-d object array when eager.
    return value.item() if isinstance(value, np.ndarray) else bytes(value)


def _decode_in_numpy(image_bytes):
    import tensorflow as tf

    image = tf.numpy_function(lambda data: decode_array(_as_bytes(data)), [image_bytes], tf.float32, stateful=False)
    image.set_shape([None, None, 3])
    return image


def decode_image(image_bytes):
    """Decode a scalar string tensor of PNG/JPEG/BMP/GIF/DICOM bytes to float32 HxWx3 in 0-255.

    Grayscale, palette and RGBA images become RGB (alpha is dropped). DICOM and 16-bit PNG go
    through `decode_array` (the middle frame of a multi-frame DICOM). Graph-safe: usable in `tf.data.map`.
    """
    import tensorflow as tf

    image = tf.cond(
        graph_decodable(image_bytes), lambda: decode_in_graph(image_bytes), lambda: _decode_in_numpy(image_bytes)
    )
    image.set_shape([None, None, 3])
    return image


def resize(image, image_size: int):
    """Resize an HxWx3 float image to image_size x image_size (bilinear, antialiased), clipped to 0-255."""
    import tensorflow as tf

    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def decode_and_resize(image_bytes, image_size: int, *, graph_only: bool = False):
    """Decode encoded bytes and resize: the function every training pipeline maps over files.

    graph_only=True skips the per-file choice for files known to be 8-bit PNG, JPEG, GIF or BMP.
    """
    return resize(decode_in_graph(image_bytes) if graph_only else decode_image(image_bytes), image_size)


def png_significant_bits(data: bytes) -> int | None:
    """Significant bits of a PNG's color samples from its sBIT chunk, or None when the file has none."""
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        if kind == b"sBIT":
            values = data[position + 8 : position + 8 + length]
            # Color types 2 and 6 give red, green, blue (then alpha); gray types give gray (then alpha).
            color = values[:3] if data[PNG_COLOR_TYPE_OFFSET] in (2, 6) else values[:1]
            return max(color) if color else None
        if kind in (b"IDAT", b"IEND"):
            return None
        position += 12 + length
    return None


def sixteen_bit_to_unit(values: np.ndarray, significant_bits: int | None) -> np.ndarray:
    """Scale unsigned 16-bit samples to 0-1 by their true bit depth.

    The depth is the PNG sBIT value (values that exceed it were scaled up to 16 bits as the PNG
    specification asks, and are shifted back); without one, the fewest bits (at least 8) that hold
    the image's largest value, so a 12-bit radiograph in a 16-bit file is scaled by 1/4095.
    """
    values = np.asarray(values, dtype=np.uint32)
    largest = int(values.max()) if values.size else 0
    bits = significant_bits if significant_bits and 1 <= significant_bits <= 16 else max(8, largest.bit_length())
    if largest > 2**bits - 1:
        values = values >> (16 - bits)
    return np.clip(values / float(2**bits - 1), 0.0, 1.0)


def sixteen_bit_png_to_array(data: bytes) -> np.ndarray:
    """Read 16-bit PNG bytes into an HxWx3 float32 array in 0-255, scaled by the image's true bit depth."""
    import tensorflow as tf

    try:
        pixels = tf.io.decode_png(data, channels=3, dtype=tf.uint16).numpy()
    except tf.errors.OpError as error:
        raise ValueError(f"PNG cannot be decoded: {first_line(error)}") from None
    return (sixteen_bit_to_unit(pixels, png_significant_bits(data)) * 255.0).astype(np.float32)


def read_dicom(data: bytes, *, pixels: bool = True):
    """Parse DICOM bytes with pydicom; `pixels=False` stops before the pixel data (a cheap header read)."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not pixels)
    except Exception as error:  # pydicom raises many exception types for broken files.
        raise ValueError(f"not a readable DICOM file: {first_line(error)}") from error
    if "TransferSyntaxUID" not in dataset.file_meta:
        # A data set without file meta (no preamble) is uncompressed; its syntax is the encoding pydicom read it in.
        implicit, little = dataset.original_encoding
        if implicit is not None:
            syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            dataset.file_meta.TransferSyntaxUID = syntax
    return dataset


def non_image_reason(dataset) -> str | None:
    """A one-line reason when a DICOM object holds no picture to classify (SR, SEG, RT, ...), else None."""
    modality = str(dataset.get("Modality", "")).strip().upper()
    sop_class = dataset.get("SOPClassUID")
    sop_name = sop_class.name if sop_class is not None and hasattr(sop_class, "name") else ""
    if modality in NON_IMAGE_MODALITIES or any(word in sop_name for word in NON_IMAGE_SOP_WORDS):
        kind = sop_name if sop_name and sop_name != str(sop_class) else f"modality {modality}"
        return f"DICOM file holds no image to classify ({kind}); send an image such as CR, DX, CT, MR or US"
    if "Rows" not in dataset or "Columns" not in dataset:
        return "DICOM file has no image (Rows and Columns are missing)"
    return None


def frame_index(frames: int, requested: int = MIDDLE_FRAME) -> int:
    """The 0-based frame to score: `requested`, or the middle frame (frames // 2) for -1; ValueError when out of range."""
    if requested == MIDDLE_FRAME:
        return frames // 2
    if not 0 <= requested < frames:
        valid = "0" if frames == 1 else f"0-{frames - 1}"
        raise ValueError(
            f"frame {requested} is out of range: the image has {frames} frame(s), {valid}; -1 picks the middle one"
        )
    return requested


def dicom_frames(dataset) -> int:
    frames = dataset.get("NumberOfFrames", 1)
    try:
        return max(1, int(frames or 1))
    except (TypeError, ValueError):
        return 1


def dicom_dimensions(data: bytes) -> tuple[int, int, int]:
    """Width, height and number of frames from the DICOM header, without decoding pixel data."""
    dataset = read_dicom(data, pixels=False)
    reason = non_image_reason(dataset)
    if reason:
        raise ValueError(reason)
    return int(dataset.Columns), int(dataset.Rows), dicom_frames(dataset)


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


def decode_dicom_frame(dataset, index: int) -> np.ndarray:
    """Pixels of one frame; pylibjpeg first (the plugin family the served model installs), then any other plugin."""
    from pydicom.pixels import pixel_array

    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    # Preferring one plugin makes the decoder the same wherever other plugins (GDCM, Pillow) happen to be installed.
    plugins = ["pylibjpeg", ""] if syntax is not None and syntax.is_encapsulated else [""]
    failure: Exception | None = None
    for plugin in plugins:
        try:
            return pixel_array(dataset, index=index, decoding_plugin=plugin)
        except Exception as error:  # Missing decoders and truncated data raise different types.
            failure = error
    # pydicom lists each plugin's failure on its own line; one line keeps them all, shortened.
    reason = " ".join(
        str(failure).replace("Unable to decode as exceptions were raised by all available plugins:", "").split()
    )
    raise ValueError(f"DICOM pixel data cannot be decoded: {reason[:160] or type(failure).__name__}") from None


def _monochrome_unit(pixels: np.ndarray, dataset) -> np.ndarray:
    """Grayscale pixels after rescale and VOI (or stretched to their own range), 0-1, bone bright."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    unit = _voi_unit_range(values, dataset)
    if unit is None:
        low, high = float(values.min()), float(values.max())
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def dicom_to_array(data: bytes, frame: int = MIDDLE_FRAME) -> np.ndarray:
    """Read one frame of DICOM bytes into an HxWx3 float32 array in 0-255.

    Applies the rescale slope/intercept (modality LUT) and the VOI LUT or window stored in the
    file (without one, the image's own range is stretched to 0-255), inverts MONOCHROME1 so that
    bone is bright as in MONOCHROME2, and raises ValueError with a one-line reason when the file
    holds no image, has no pixel data, `frame` does not exist or its pixel data cannot be decoded.
    `frame` is 0-based; -1 is the middle frame.
    """
    dataset = read_dicom(data)
    reason = non_image_reason(dataset)
    if reason:
        raise ValueError(reason)
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise ValueError("DICOM file has no pixel data")
    pixels = decode_dicom_frame(dataset, frame_index(dicom_frames(dataset), frame))
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        rgb = np.repeat(_monochrome_unit(pixels, dataset)[..., None] * 255.0, 3, axis=-1)
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        rgb = apply_color_lut(pixels, dataset).astype(np.float64) * (255.0 / float(2**bits - 1))
    else:
        # pydicom 3 already returns YBR_* pixel data converted to RGB.
        maximum = float(2 ** int(dataset.get("BitsStored", 8)) - 1)
        rgb = pixels.astype(np.float64) * (255.0 / maximum)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"DICOM pixel data has an unexpected shape {tuple(rgb.shape)} for one frame")
    if not np.all(np.isfinite(rgb)):
        raise ValueError("DICOM pixel data holds values that are not finite")
    return rgb.astype(np.float32)


def decode_array(data: bytes, frame: int = MIDDLE_FRAME) -> np.ndarray:
    """The numpy decoder: DICOM or 16-bit PNG bytes -> HxWx3 float32 in 0-255; ValueError for anything else."""
    if is_dicom(data):
        return dicom_to_array(data, frame)
    if data.startswith(PNG_SIGNATURE):
        frame_index(1, frame)
        return sixteen_bit_png_to_array(data)
    raise ValueError(NOT_AN_IMAGE)


def load_image_tensor(data: bytes, image_size: int, frame: int = MIDDLE_FRAME):
    """Decode any supported encoded image to a float32 image_size x image_size x 3 tensor.

    `frame` (0-based, -1 = middle) picks the frame of a multi-frame DICOM; other images have one frame.
    """
    import tensorflow as tf

    if is_graph_decodable(data):
        frame_index(1, frame)
        return _graph_decoder(image_size)(tf.constant(data))
    return resize(tf.constant(decode_array(data, frame)), image_size)


@functools.cache
def _graph_decoder(image_size: int):
    """decode_in_graph and resize to image_size, traced once: one call per image instead of an eager dispatch per op.

    The same ops and values; about a third less CPU per 256 px PNG, which batch scoring spends beside the
    model (bench/batch.py). No autograph: it would write converted source to TMPDIR.
    """
    import tensorflow as tf

    def decode(image_bytes):
        return resize(decode_in_graph(image_bytes), image_size)

    return tf.function(decode, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
