"""Dataset registry and tf.data input pipelines: maps dataset names to loaders that read images into Splits.

Importing this package is cheap (no TensorFlow import), so CLI help and config validation can call
`available_datasets()` and `validate_dataset_args()`. Loaders import TensorFlow when they run.
A new dataset module adds itself with `register_dataset(DatasetSpec(...))` and reuses
`files.scan_images`, `splits.*` and `pipeline.loaded_from_files` / `pipeline.files_split`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields, replace
from typing import TYPE_CHECKING

from train.data import chestxray14, imagefolder, malaria, synthetic
from train.data.chestxray14 import CONCEPTS as CHESTXRAY14_CONCEPTS
from train.data.chestxray14 import load_chestxray14
from train.data.imagefolder import load_imagefolder
from train.data.malaria import load_malaria
from train.data.prepared import check_prepared_name, is_prepared, is_unfinished
from train.data.spec import (
    MINIMUM_IMAGE_SIZE,
    SPLIT_NAMES,
    TASKS,
    TEST_FRACTION,
    DatasetSpec,
    LoadedDataset,
    LoadOptions,
    Split,
)
from train.data.synthetic import load_synthetic

if TYPE_CHECKING:
    import tensorflow as tf

    from train.data.augment import Augmentation

__all__ = [
    "MINIMUM_IMAGE_SIZE",
    "TEST_FRACTION",
    "LoadOptions",
    "SPLIT_NAMES",
    "TASKS",
    "DatasetSpec",
    "LoadedDataset",
    "Split",
    "available_datasets",
    "check_options",
    "get_dataset_spec",
    "load_dataset",
    "make_batches",
    "register_dataset",
    "validate_dataset_args",
]

# Options every loader takes.
COMMON_OPTIONS = ("image_size", "seed", "max_examples", "validation_fraction")
# The demo and test dataset: the default of `main` and of a search space without fixed.dataset.
DEFAULT_DATASET = synthetic.NAME
# The dataset `prepare` was made for (a 45 GB folder of 1024 px PNGs): its default.
DEFAULT_PREPARED_DATASET = chestxray14.NAME

_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    """Add a dataset to the registry; registering a name twice with a different spec is an error."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"dataset {spec.name!r} is already registered; pick another name")
    _REGISTRY[spec.name] = spec


def available_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def labelled_datasets() -> list[str]:
    """Datasets that can be read with their labels from a folder (a batch input can be back-tested on them)."""
    return [name for name in available_datasets() if _REGISTRY[name].reads_labelled_folders]


def datasets_where(fact: Callable[[DatasetSpec], bool]) -> list[str]:
    """Registered dataset names whose spec has a fact, sorted (help texts name them instead of spelling them)."""
    return [name for name in available_datasets() if fact(_REGISTRY[name])]


def labels_in(input_path: str | os.PathLike, class_names: list[str]) -> str:
    """The dataset whose labels a folder carries for a model with these classes, or '' when it carries none that fit.

    A folder written by `prepare` names its dataset; otherwise each spec's `finds_labels` is asked, in
    registration order (so class folders, the catch-all, come last).
    """
    from pathlib import Path

    from train.data.prepared import read_manifest

    folder = Path(input_path)
    if not folder.is_dir():
        return ""
    if is_prepared(folder):
        return str(read_manifest(folder).get("dataset", ""))
    for name, spec in _REGISTRY.items():
        if spec.finds_labels is not None and spec.finds_labels(folder, class_names):
            return name
    return ""


def get_dataset_spec(name: str) -> DatasetSpec:
    """The spec registered as `name`; unknown names raise ValueError listing the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(available_datasets())}")
    return _REGISTRY[name]


def validate_dataset_args(name: str, data_dir: str | None) -> None:
    """Cheap checks before heavy work: known name, data_dir given when required, data_dir exists.

    A data_dir written by `python -m train prepare` must hold the same dataset, and must be finished.
    """
    spec = get_dataset_spec(name)
    if spec.requires_data_dir and not data_dir:
        raise ValueError(f"dataset {name!r} needs data_dir: {spec.description}")
    if data_dir and not os.path.isdir(data_dir):
        raise ValueError(f"data_dir {data_dir} does not exist or is not a folder; check the path for dataset {name!r}")
    if is_unfinished(data_dir):
        raise ValueError(
            f"data_dir {data_dir} holds an unfinished preparation; run `python -m train prepare` again with the "
            "same settings to finish it"
        )
    if is_prepared(data_dir):
        check_prepared_name(data_dir, name)


def check_options(name: str, options: LoadOptions) -> None:
    """ValueError naming the first option that dataset `name` does not take but was set to a non-default value."""
    spec = get_dataset_spec(name)
    defaults = LoadOptions()
    for option in fields(LoadOptions):
        value = getattr(options, option.name)
        if option.name in spec.options or value in (getattr(defaults, option.name), None, ""):
            continue
        takers = ", ".join(other for other in available_datasets() if option.name in _REGISTRY[other].options)
        grouping = f"; {name} splits {spec.grouping}" if option.name == "group_pattern" else ""
        raise ValueError(
            f"{option.name}={value} does not apply to dataset {name} (only to {takers}){grouping}; "
            "leave it at its default"
        )


def load_dataset(name: str, **options) -> LoadedDataset:
    """Load dataset `name` into train/val/test Splits of (image float32 [S, S, 3] in 0-255, label float32).

    `options` are LoadOptions fields (data_dir, image_size, seed, max_examples, validation_fraction,
    test_fraction, synthetic_task, synthetic_examples, view, group_pattern, max_missing_fraction); an
    option the dataset does not take must be left at its default. A data_dir holding a
    `python -m train prepare` manifest is read from its TFRecords, whatever the dataset; its splits are
    fixed by the preparation. The LoadedDataset's `group_counts` gives the number of patients or slides
    per split when splits keep them whole.
    """
    try:
        chosen = LoadOptions(**options)
    except TypeError:
        unknown = sorted(set(options) - {option.name for option in fields(LoadOptions)})
        raise ValueError(f"unknown dataset option(s) {', '.join(unknown)}") from None
    validate_dataset_args(name, chosen.data_dir)
    if chosen.image_size < MINIMUM_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MINIMUM_IMAGE_SIZE}, got {chosen.image_size}")
    if chosen.seed < 0:
        raise ValueError(f"seed must be zero or positive, got {chosen.seed}")
    if chosen.max_examples < 0:
        raise ValueError(f"max_examples must be 0 (all) or positive, got {chosen.max_examples}")
    spec = get_dataset_spec(name)
    spec.check_fractions(chosen.validation_fraction, chosen.test_fraction)
    check_options(name, replace(chosen, data_dir=None))
    if is_prepared(chosen.data_dir):
        from train.data.prepared import load_prepared

        return load_prepared(
            chosen.data_dir,
            name=name,
            image_size=chosen.image_size,
            max_examples=chosen.max_examples,
            view=chosen.view,
            validation_fraction=chosen.validation_fraction,
        )
    loaded = spec.load(replace(chosen, data_dir=chosen.data_dir or None))
    if loaded.task not in TASKS:
        raise ValueError(f"loader for {name!r} returned task {loaded.task!r}; it must be one of {', '.join(TASKS)}")
    return loaded


def make_batches(
    split: Split, *, batch_size: int, training: bool, augmentation: Augmentation | None, seed: int
) -> tf.data.Dataset:
    """Cache, (training: shuffle and augment), batch and prefetch a Split; see train.data.pipeline.make_batches."""
    from train.data.pipeline import make_batches as build_batches

    return build_batches(split, batch_size=batch_size, training=training, augmentation=augmentation, seed=seed)


register_dataset(
    DatasetSpec(
        name=synthetic.NAME,
        description="generated round cells, parasitized ones with dark dots (binary) or dots/ring/stripes (multilabel)",
        loader=load_synthetic,
        options=(*COMMON_OPTIONS, "test_fraction", "synthetic_task", "synthetic_examples"),
        augmentation="cells",
        limitations="Trained and tested on generated images: it demonstrates the workflow and says nothing about patients.",
        grouping="per image (generated images have no patients)",
        task_option="synthetic_task",
    )
)
register_dataset(
    DatasetSpec(
        name=malaria.NAME,
        description="NIH malaria cell images from TFDS (data_dir: optional TFDS data dir) or an extracted cell_images/ folder",
        loader=load_malaria,
        options=(*COMMON_OPTIONS, "data_dir", "test_fraction", "group_pattern"),
        augmentation="cells",
        limitations="Thin blood smear cell crops from one source (NIH malaria dataset); whole-slide behaviour is untested.",
        grouping="by smear in the cell_images/ folder (group_pattern), per cell from TFDS",
        # Microscope pictures of blood smears: general and slide microscopy.
        modalities=("GM", "SM"),
        finds_labels=malaria.finds_labels,
    )
)
register_dataset(
    DatasetSpec(
        name=chestxray14.NAME,
        description=(
            "NIH ChestX-ray14 folder (Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt, "
            "images_*/images/) or a folder written by `python -m train prepare`"
        ),
        loader=load_chestxray14,
        options=(*COMMON_OPTIONS, "data_dir", "view", "max_missing_fraction"),
        augmentation="radiograph",
        limitations=(
            "ChestX-ray14 labels were text-mined from radiology reports (estimated above 90% accurate, not "
            "radiologist-read), so some test labels are wrong; the images come from one hospital (NIH Clinical "
            "Center), frontal views only."
        ),
        requires_data_dir=True,
        official_test_split=True,
        grouping="always by patient (the official patient-wise split)",
        reads_listed_files=True,
        # Frontal chest radiographs: computed and digital radiography.
        modalities=("CR", "DX"),
        concepts=CHESTXRAY14_CONCEPTS,
        finds_labels=chestxray14.finds_labels,
        prepared_from_index=True,
    )
)
register_dataset(
    DatasetSpec(
        name=imagefolder.NAME,
        description="a folder with one subfolder per class, optionally under train/ val/ test/",
        loader=load_imagefolder,
        options=(*COMMON_OPTIONS, "data_dir", "test_fraction", "group_pattern"),
        augmentation="radiograph",
        limitations="Tested on one split of one folder of images; performance on other sites and scanners is unknown.",
        requires_data_dir=True,
        grouping="per image unless group_pattern names the patient in the file name",
        finds_labels=imagefolder.finds_labels,
    )
)
