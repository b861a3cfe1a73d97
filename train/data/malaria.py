"""Loads the `malaria` dataset from TFDS or from the extracted cell_images/ folder; reads TFDS records or image files.

NIH malaria cell images: 27,558 thin blood smear cell crops, half parasitized, half uninfected.
Download: https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip (TFDS `malaria` fetches it).
Citation: Rajaraman S. et al., "Pre-trained convolutional neural networks as feature extractors toward
improved malaria parasite detection in thin blood smear images", PeerJ 6:e4568, 2018.
Labels here: class_names ["uninfected", "parasitized"]; 1.0 means parasitized (TFDS stores 0 = parasitized).
Splits: the extracted cell_images/ folder is split by smear (group_pattern `malaria`, train.data.groups),
so cells of one patient's slide never land in two splits; group_pattern=none splits per cell. The TFDS
copy has no file names, so it is split per cell and takes no group_pattern.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.data.groups import NO_GROUPS, resolve_group_pattern
from train.data.spec import SPLIT_NAMES, LoadedDataset

# No SNOMED CT concept fits a single cell crop: Malaria (disorder) is a patient's diagnosis, not a red cell's state,
# and no concept for a parasitized (or an uninfected) erythrocyte was found in DICOM PS3.16 or a checked SNOMED CT
# source, so both classes stay in medimg's private scheme (serve.concepts).
CLASS_NAMES = ["uninfected", "parasitized"]
# (class name, folder name) in label order, for the extracted cell_images/ layout.
CELL_IMAGE_CLASSES = [("uninfected", "Uninfected"), ("parasitized", "Parasitized")]
NAME = "malaria"
TFDS_NAME = NAME
TFDS_PARASITIZED = 0


def cell_images_folder(data_dir: str | Path) -> Path | None:
    """The folder holding Parasitized/ and Uninfected/ (data_dir itself or data_dir/cell_images), else None."""
    for candidate in (Path(data_dir), Path(data_dir) / "cell_images"):
        if candidate.is_dir():
            names = {entry.name.lower() for entry in candidate.iterdir() if entry.is_dir()}
            if {"parasitized", "uninfected"} <= names:
                return candidate
    return None


def load_malaria(
    *,
    data_dir: str | None = None,
    image_size: int = 128,
    seed: int = 42,
    max_examples: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    group_pattern: str = "",
) -> LoadedDataset:
    """Load malaria from the cell_images/ folder when data_dir holds one, else from TFDS (data_dir = TFDS data dir).

    group_pattern: "" groups the folder's cells by smear (the `malaria` preset); `none` splits per cell;
    another preset or regular expression groups by its first group.
    """
    folder = cell_images_folder(data_dir) if data_dir else None
    if folder is not None:
        from train.data.imagefolder import load_class_folders

        return load_class_folders(
            folder,
            name="malaria",
            image_size=image_size,
            seed=seed,
            max_examples=max_examples,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            classes=CELL_IMAGE_CLASSES,
            group_pattern=resolve_group_pattern(group_pattern, default="malaria"),
        )
    if group_pattern and group_pattern.strip().lower() != NO_GROUPS:
        raise ValueError(
            "the TFDS copy of malaria has no file names to group by; point data_dir at the extracted cell_images/ "
            "folder to split by smear, or leave group_pattern empty"
        )
    return load_malaria_tfds(
        data_dir=data_dir,
        image_size=image_size,
        seed=seed,
        max_examples=max_examples,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
    )


def load_malaria_tfds(
    *,
    data_dir: str | None,
    image_size: int,
    seed: int,
    max_examples: int,
    validation_fraction: float,
    test_fraction: float,
) -> LoadedDataset:
    """Prepare TFDS malaria (downloads 337 MB once) and split its single split by a seeded, stratified assignment."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from serve.preprocess import decode_and_resize
    from train.data.digest import array_digest
    from train.data.spec import Split
    from train.data.splits import stratified_choice, stratified_split

    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    builder.download_and_prepare()

    def encoded_examples():
        # SkipDecoding keeps the PNG bytes, so images are decoded by serve.preprocess like every other
        # dataset, and only after the split filter (each split decodes only its own images).
        return builder.as_dataset(
            split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
        ).enumerate()

    label_batches = encoded_examples().map(lambda index, example: example["label"]).batch(8192)
    tfds_labels = np.concatenate([batch for batch in label_batches.as_numpy_iterator()] or [np.zeros(0, np.int64)])
    positive = (tfds_labels == TFDS_PARASITIZED).astype(np.int64)

    # -1 marks examples left out by max_examples; 0/1/2 are train/val/test.
    split_ids = np.full(len(positive), -1, dtype=np.int64)
    kept = np.arange(len(positive))
    if max_examples and max_examples < len(positive):
        kept = stratified_choice(positive, max_examples, seed)
    split_ids[kept] = stratified_split(
        positive[kept], validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
    )
    split_table = tf.constant(split_ids)

    splits = {}
    for split_id, split_name in enumerate(SPLIT_NAMES):
        dataset = encoded_examples().filter(
            lambda index, example, split_id=split_id: tf.equal(tf.gather(split_table, index), split_id)
        )
        dataset = dataset.map(
            lambda index, example: (
                # TFDS stores every malaria cell as an 8-bit PNG, so TensorFlow's graph decoder alone reads them.
                decode_and_resize(example["image"], image_size, graph_only=True),
                tf.reshape(tf.cast(tf.equal(example["label"], TFDS_PARASITIZED), tf.float32), [1]),
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        ).ignore_errors(log_warning=True)
        members = split_ids == split_id
        splits[split_name] = Split(
            dataset=dataset,
            count=int(members.sum()),
            positives=np.array([positive[members].sum()], dtype=np.int64),
        )
    settings = {
        "name": "malaria",
        "source": f"tfds:{TFDS_NAME}:{builder.version}",
        "image_size": image_size,
        "seed": seed,
        "max_examples": max_examples,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
    }
    return LoadedDataset(
        name="malaria",
        task="binary",
        class_names=list(CLASS_NAMES),
        num_outputs=1,
        splits=splits,
        digest=array_digest(settings, tfds_labels, split_ids),
        source=f"tfds:{TFDS_NAME}",
    )


def finds_labels(folder: Path, class_names: list[str]) -> bool:
    """Whether the folder is the extracted cell_images/ layout and the model's classes are malaria's."""
    return cell_images_folder(folder) is not None and class_names == CLASS_NAMES
