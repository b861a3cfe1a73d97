"""Dataset data types shared by every loader: reads nothing, writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

TASKS = ("binary", "multilabel", "multiclass")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """One split: unbatched (image float32 [S, S, 3] in 0-255, label float32 [num_outputs]) elements."""

    dataset: tf.data.Dataset
    count: int
    # Per-output count of positive labels in this split (binary: shape [1]; multiclass: per-class counts).
    positives: np.ndarray
    # Per example, in the dataset's order: the patient (or slide) it comes from, when known. Confidence
    # intervals resample whole patients, since one patient's images are not independent.
    groups: np.ndarray | None = None
    # Per example, in the dataset's order: subgroup attributes (e.g. view, sex, age band) for subgroup metrics.
    metadata: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class LoadedDataset:
    """A dataset ready for training: its label space, its three splits and what it was built from."""

    name: str
    task: str
    class_names: list[str]
    # 1 for binary, the number of classes or labels otherwise.
    num_outputs: int
    splits: dict[str, Split]
    # Stable content digest: the same files, labels and settings give the same digest.
    digest: str
    # A folder path or "tfds:<name>".
    source: str
    skipped_images: int = 0
    # Up to 10 "path: reason" lines for the skipped images.
    skipped_examples: list[str] = field(default_factory=list)
    # Patient or slide groups per split ({"train": 41, "val": 9, "test": 9}) when the split kept groups
    # whole (group_pattern); empty otherwise. Counts only: group keys are never kept.
    group_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """A registered dataset: its name, a one-line description and its loader.

    The loader is called as loader(data_dir=..., image_size=..., seed=..., max_examples=...,
    validation_fraction=..., test_fraction=..., synthetic_task=..., synthetic_examples=..., view=...,
    group_pattern=...)
    and returns a LoadedDataset; loaders ignore the keyword arguments they do not use.
    """

    name: str
    description: str
    requires_data_dir: bool
    loader: Callable[..., LoadedDataset]
