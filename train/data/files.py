"""Lists image files under a folder and checks, in a thread pool, that each one decodes; reads files, writes nothing."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serve.contract import DECODABLE_FORMATS, IMAGE_EXTENSIONS

# TensorFlow's BMP decoder reads 24/32-bit and 8-bit gray BMPs; it ignores palettes and fails on 1-bit files.
DECODABLE_BMP_MODES = frozenset({"RGB", "RGBA", "L"})
MAX_SKIP_WARNINGS = 10
MAX_SKIPPED_EXAMPLES = 10


class UnreadableImageWarning(UserWarning):
    """An image file was skipped because it cannot be decoded."""


def has_image_extension(path: str | Path) -> bool:
    """True for .png, .jpg, .jpeg, .bmp, .gif, .dcm and .dicom names, in any letter case."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def is_image_file(path: str | Path) -> bool:
    """An image name (has_image_extension), or a DICOM file named without an image extension.

    PACS exports name files without extension (`IM00001`, or the SOP Instance UID, whose last part is
    digits); those count when their first bytes are DICOM (serve.preprocess.is_dicom, with or without
    the preamble). The DICOMDIR index of a DICOM media folder holds no image and is left out.
    """
    from serve.preprocess import DICOM_MAGIC, DICOM_MAGIC_OFFSET

    path = Path(path)
    if has_image_extension(path):
        return True
    if not may_be_extensionless_dicom(path.name):
        return False
    try:
        with open(path, "rb") as handle:
            return is_image_content(path.name, handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)))
    except OSError:
        return False


def may_be_extensionless_dicom(name: str) -> bool:
    """Whether a name without an image extension may still be a DICOM file: no suffix, or a numeric one (a UID)."""
    suffix = Path(name).suffix
    return not (suffix and not suffix[1:].isdigit()) and name.upper() != "DICOMDIR"


def is_image_content(name: str, head: bytes) -> bool:
    """is_image_file from a file's name and its first 132 bytes, for readers that hold the bytes already (Spark)."""
    from serve.preprocess import is_dicom

    return has_image_extension(name) or (may_be_extensionless_dicom(name) and is_dicom(head))


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files (is_image_file) under `folder`, recursively, sorted; hidden files such as macOS '._x.png' are left out."""
    found = []
    for directory, subdirectories, names in os.walk(folder):
        # Hidden folders (.ipynb_checkpoints, .git) hold no dataset images.
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        found.extend(
            Path(directory) / name
            for name in names
            if not name.startswith(".") and is_image_file(Path(directory) / name)
        )
    return sorted(found)


@dataclass
class ScanResult:
    """What a scan found: which files decode, their content hashes, and why the others were skipped."""

    readable: np.ndarray
    # Hex content hash per file ("" for unreadable files); feeds the dataset digest.
    content_hashes: list[str]
    # True per file that TensorFlow's graph decoder reads (8-bit PNG, JPEG, GIF, BMP); False for DICOM and
    # 16-bit PNG, which the numpy decoder reads. Lets the pipeline skip the per-file choice when all are True.
    graph_decodable: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # One "path: reason" line per skipped file.
    skipped: list[str] = field(default_factory=list)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def readable_hashes(self) -> list[str]:
        """Content hashes of the readable files, in scan order."""
        return [value for value, readable in zip(self.content_hashes, self.readable, strict=True) if readable]

    def readable_graph_decodable(self) -> np.ndarray:
        """graph_decodable of the readable files, in scan order."""
        return self.graph_decodable[self.readable]


def check_image(path: str | Path) -> tuple[str, str | None]:
    """Read and fully decode one file; return (content hash, None) or ("", reason it cannot be used)."""
    content_hash, reason, _ = _check_file(path)
    return content_hash, reason


def _check_file(path: str | Path) -> tuple[str, str | None, bool]:
    """check_image, plus whether TensorFlow's graph decoder reads the file.

    DICOM and 16-bit PNG files are decoded by serve.preprocess.decode_array, the decoder training uses for
    them; the others by PIL, which reads every format that TensorFlow's graph decoder reads.
    """
    from PIL import Image

    from serve.preprocess import PNG_SIGNATURE, decode_array, is_dicom, is_graph_decodable

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return "", f"cannot be read ({error.strerror or error})", False
    if not data:
        return "", "empty file", False
    content_hash = hashlib.blake2b(data, digest_size=16).hexdigest()
    if not is_graph_decodable(data) and (is_dicom(data) or data.startswith(PNG_SIGNATURE)):
        try:
            decode_array(data)
        except ValueError as error:
            return "", str(error), False
        return content_hash, None, False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, mode = image.format, image.mode
            if image_format not in DECODABLE_FORMATS:
                return "", f"{image_format} data cannot be decoded by TensorFlow; convert it to PNG", False
            if image_format == "BMP" and mode not in DECODABLE_BMP_MODES:
                return "", f"BMP in mode {mode} cannot be decoded by TensorFlow; convert it to PNG", False
            # load() decodes every pixel, which catches truncated files that open() accepts.
            image.load()
    except Exception as error:  # PIL raises many exception types (OSError, SyntaxError, struct.error) for bad bytes.
        message = str(error).strip() or type(error).__name__
        return "", f"not a decodable image ({message})", False
    return content_hash, None, is_graph_decodable(data)


def scan_images(paths: Sequence[str | Path], *, description: str = "checking images", workers: int = 0) -> ScanResult:
    """Check every file in a thread pool with a progress bar; warn once per skipped file (first 10, then a summary)."""
    from tqdm.auto import tqdm

    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    results: list[tuple[str, str | None, bool]] = []
    with (
        ThreadPoolExecutor(max_workers=workers) as executor,
        # disable=None turns the bar off when stderr is not a terminal (CI logs, MLflow runs).
        tqdm(total=len(paths), desc=description, unit="img", disable=None) as progress,
    ):
        for result in executor.map(_check_file, paths):
            results.append(result)
            progress.update(1)
    readable = np.array([reason is None for _, reason, _ in results], dtype=bool)
    skipped = [f"{path}: {reason}" for path, (_, reason, _) in zip(paths, results, strict=True) if reason is not None]
    for line in skipped[:MAX_SKIP_WARNINGS]:
        warnings.warn(f"skipping unreadable image {line}", UnreadableImageWarning, stacklevel=2)
    if len(skipped) > MAX_SKIP_WARNINGS:
        warnings.warn(
            f"skipped {len(skipped)} unreadable images in all ({len(skipped) - MAX_SKIP_WARNINGS} more not listed)",
            UnreadableImageWarning,
            stacklevel=2,
        )
    return ScanResult(
        readable=readable,
        content_hashes=[content_hash for content_hash, _, _ in results],
        skipped=skipped,
        graph_decodable=np.array([graph for _, _, graph in results], dtype=bool),
    )
