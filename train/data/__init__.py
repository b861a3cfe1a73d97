"""Dataset registry and tf.data input pipelines: maps dataset names to loaders that read images into Splits.

Importing this package is cheap (no TensorFlow import), so CLI help and config validation can call
`available_datasets()` and `validate_dataset_args()`. Loaders import TensorFlow when they run.
A new dataset module adds itself with `register_dataset(DatasetSpec(...))` and reuses
`files.scan_images`, `splits.*` and `pipeline.loaded_from_files` / `pipeline.files_split`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from train.data.chestxray14 import load_chestxray14
from train.data.imagefolder import load_imagefolder
from train.data.malaria import load_malaria
from train.data.prepared import check_prepared_name, is_prepared, is_unfinished
from train.data.spec import SPLIT_NAMES, TASKS, DatasetSpec, LoadedDataset, Split
from train.data.splits import check_fractions
from train.data.synthetic import SYNTHETIC_TASKS, load_synthetic

if TYPE_CHECKING:
    import tensorflow as tf

    from train.data.augment import Augmentation

__all__ = [
    "SPLIT_NAMES",
    "TASKS",
    "DatasetSpec",
    "LoadedDataset",
    "Split",
    "available_datasets",
    "get_dataset_spec",
    "load_dataset",
    "make_batches",
    "register_dataset",
    "validate_dataset_args",
]

MINIMUM_IMAGE_SIZE = 8

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


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int = 128,
    seed: int = 42,
    max_examples: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    synthetic_task: str = "binary",
    synthetic_examples: int = 600,
    view: str = "all",
    group_pattern: str = "",
) -> LoadedDataset:
    """Load dataset `name` into train/val/test Splits of (image float32 [S, S, 3] in 0-255, label float32).

    A data_dir holding a `python -m train prepare` manifest is read from its TFRecords, whatever
    the dataset; its splits are fixed by the preparation. `view` (all, PA, AP) filters chestxray14.
    `group_pattern` (imagefolder, malaria) keeps each patient's or slide's images in one split: a preset
    (`pneumonia`, `malaria`), a regular expression whose first group is the key in each file name, or
    `none`; "" is the dataset's default (malaria's cell_images/ folder: by smear; imagefolder: per image).
    The LoadedDataset's `group_counts` then gives the number of groups per split.
    """
    validate_dataset_args(name, data_dir)
    if image_size < MINIMUM_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MINIMUM_IMAGE_SIZE}, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be zero or positive, got {seed}")
    if max_examples < 0:
        raise ValueError(f"max_examples must be 0 (all) or positive, got {max_examples}")
    if synthetic_task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic_task {synthetic_task!r}; valid choices: {', '.join(SYNTHETIC_TASKS)}")
    check_fractions(validation_fraction, test_fraction)
    if is_prepared(data_dir):
        from train.data.prepared import load_prepared

        return load_prepared(
            data_dir,
            name=name,
            image_size=image_size,
            max_examples=max_examples,
            view=view,
            validation_fraction=validation_fraction,
        )
    loaded = get_dataset_spec(name).loader(
        data_dir=data_dir or None,
        image_size=image_size,
        seed=seed,
        max_examples=max_examples,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        synthetic_task=synthetic_task,
        synthetic_examples=synthetic_examples,
        view=view,
        group_pattern=group_pattern,
    )
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
        name="synthetic",
        description="generated round cells, parasitized ones with dark dots (binary) or dots/ring/stripes (multilabel)",
        requires_data_dir=False,
        loader=load_synthetic,
    )
)
register_dataset(
    DatasetSpec(
        name="malaria",
        description="NIH malaria cell images from TFDS (data_dir: optional TFDS data dir) or an extracted cell_images/ folder",
        requires_data_dir=False,
        loader=load_malaria,
    )
)
register_dataset(
    DatasetSpec(
        name="chestxray14",
        description=(
            "NIH ChestX-ray14 folder (Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt, "
            "images_*/images/) or a folder written by `python -m train prepare`"
        ),
        requires_data_dir=True,
        loader=load_chestxray14,
    )
)
register_dataset(
    DatasetSpec(
        name="imagefolder",
        description="a folder with one subfolder per class, optionally under train/ val/ test/",
        requires_data_dir=True,
        loader=load_imagefolder,
    )
)
