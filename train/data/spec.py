"""Dataset data types shared by every loader: reads nothing, writes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serve.concepts import Concept

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
    # The image files of a split read from files (None for generated, TFDS or prepared data): monitoring reads
    # their headers (size, bit depth, modality) for the model's reference.
    paths: list[str] | None = None
    # The same elements as stored, when that is cheaper to cache, shuffle and batch than float32 (a prepared
    # folder): (uint8 [s, s, C] pixels, label), which train.data.pixels.to_images makes `dataset`'s images.
    # make_batches then converts whole batches; None: make_batches uses `dataset`.
    pixels: tf.data.Dataset | None = None


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


# The smallest square input every model family takes (VGG16 halves its input five times).
MINIMUM_IMAGE_SIZE = 32
# Datasets without an official test split hold out this share of their images for testing, besides validation.
TEST_FRACTION = 0.15


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Raise ValueError unless both fractions are in (0, 1) and leave room for training examples."""
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"validation_fraction + test_fraction must be below 1 to leave training examples, "
            f"got {validation_fraction} + {test_fraction}"
        )


@dataclass(frozen=True)
class LoadOptions:
    """Every option a loader may take; a DatasetSpec names the ones its loader uses (the others must stay default)."""

    data_dir: str | None = None
    image_size: int = 128
    seed: int = 42
    max_examples: int = 0
    validation_fraction: float = 0.15
    test_fraction: float = TEST_FRACTION
    synthetic_task: str = "binary"
    synthetic_examples: int = 600
    view: str = "all"
    group_pattern: str = ""
    max_missing_fraction: float = 0.01


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset and the facts the rest of medimg asks about it (no code outside train/data/ compares names).

    `options` are the LoadOptions fields its loader takes as keyword arguments; giving any other option a
    non-default value is a mistake named in one line. `augmentation` is the policy `augment=auto` picks.
    `official_test_split`: the test images are fixed by the dataset (validation is carved out of the rest by
    patient), so test_fraction does not apply. `task_option` names the option that chooses the task (the
    synthetic variants): `evaluate` sets it from the model's task. `reads_listed_files`: the loader reads only
    files its metadata lists, so a folder written inside data_dir is never read as data. `modalities`: the DICOM
    Modality values of the images the dataset holds (e.g. CR, DX for chest radiographs); the served model keeps
    them and the PACS worker scores only those by default; empty means any image modality. `concepts`: (class name,
    coded concept) pairs for the classes that have a standard code, each with the source it was looked up in; the
    served model keeps them, and the PACS worker's SR, the app's answer and the model card name them. Classes
    without one are coded in medimg's private scheme.
    `finds_labels(folder, class_names)`: whether a folder holds this dataset's labels for a model with these classes
    (batch back-tests find their labels with it; datasets are asked in registration order). `prepared_from_index`:
    `prepare` indexes the files the metadata lists and writes them with worker processes instead of going through the
    loader.
    """

    name: str
    description: str
    loader: Callable[..., LoadedDataset]
    options: tuple[str, ...]
    augmentation: str
    limitations: str
    requires_data_dir: bool = False
    official_test_split: bool = False
    grouping: str = "per image"
    task_option: str = ""
    reads_listed_files: bool = False
    modalities: tuple[str, ...] = ()
    concepts: tuple[tuple[str, Concept], ...] = ()
    finds_labels: Callable[[Path, list[str]], bool] | None = None
    prepared_from_index: bool = False

    def stored_concepts(self, class_names: list[str]) -> dict[str, dict[str, str]]:
        """The concepts of `class_names` that this dataset knows, as the served model's classifier.json keeps them."""
        known = dict(self.concepts)
        return {name: known[name].stored() for name in class_names if name in known}

    @property
    def reads_labelled_folders(self) -> bool:
        """Whether the dataset can be read from a folder with its labels (a batch input can be back-tested on it)."""
        return self.requires_data_dir or "data_dir" in self.options

    def load(self, options: LoadOptions) -> LoadedDataset:
        """Call the loader with the options it takes (train.data.check_options checks the others first)."""
        return self.loader(**{name: getattr(options, name) for name in self.options})

    def check_fractions(self, validation_fraction: float, test_fraction: float = TEST_FRACTION) -> None:
        """ValueError unless validation_fraction (and, without an official test split, test_fraction) leave a train split."""
        if self.official_test_split:
            if not 0.0 < validation_fraction < 1.0:
                raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
            return
        check_fractions(validation_fraction, test_fraction)
