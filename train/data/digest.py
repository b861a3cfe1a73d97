"""Stable content digests of datasets (files, labels, split assignment and settings): reads nothing, writes nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def settings_digest(hasher: Any, settings: dict[str, Any]) -> None:
    """Feed the settings that shape a dataset (image size, seed, fractions, ...) into `hasher`."""
    hasher.update(json.dumps(settings, sort_keys=True, default=str).encode())


def array_digest(settings: dict[str, Any], *arrays: np.ndarray) -> str:
    """SHA-256 hex digest of settings plus arrays (dtype, shape and bytes), e.g. for generated data."""
    hasher = hashlib.sha256()
    settings_digest(hasher, settings)
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def files_digest(
    settings: dict[str, Any],
    *,
    root: str | Path,
    paths: Sequence[str | Path],
    content_hashes: Sequence[str],
    labels: np.ndarray,
    split_ids: np.ndarray,
) -> str:
    """SHA-256 hex digest of file contents, labels and split assignment; paths count relative to `root`.

    Relative paths keep the digest stable when the dataset folder is moved or mounted elsewhere.
    """
    hasher = hashlib.sha256()
    settings_digest(hasher, settings)
    root = Path(root)
    records = []
    for path, content_hash, label, split_id in zip(paths, content_hashes, labels, split_ids, strict=True):
        path = Path(path)
        relative = path.relative_to(root) if path.is_relative_to(root) else path
        label_text = ",".join(f"{value:g}" for value in np.asarray(label, dtype=np.float64).reshape(-1))
        records.append(f"{relative.as_posix()}\t{content_hash}\t{label_text}\t{int(split_id)}\n")
    for record in sorted(records):
        hasher.update(record.encode())
    return hasher.hexdigest()
