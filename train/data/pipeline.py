"""Builds tf.data pipelines: files or arrays -> unbatched Splits, Splits -> cached, shuffled, augmented batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from train.data.augment import Augmentation
from train.data.digest import files_digest
from train.data.files import MAX_SKIPPED_EXAMPLES
from train.data.groups import groups_per_split
from train.data.spec import SPLIT_NAMES, LoadedDataset, Split

logger = logging.getLogger(__name__)

# The shuffle buffer holds decoded images: at most this many, and at most SHUFFLE_BUFFER_BYTES of them
# (1 GB is ~1,600 float32 RGB images at 224 px, ~15,000 stored gray uint8 ones at 256 px), so shuffling
# never costs more memory than the model.
SHUFFLE_BUFFER_LIMIT = 10_000
SHUFFLE_BUFFER_BYTES = 1e9
# Decoded images are cached in memory only while they fit this budget (GB); larger splits are decoded
# again each epoch. Files decode to float32 (ChestX-ray14's ~78,000 training images at 224 px: ~47 GB);
# a prepared folder's splits are cached as stored uint8 pixels (the same images at 256 px: ~5 GB).
CACHE_BUDGET_ENV = "MEDIMG_CACHE_BUDGET_GB"
DEFAULT_CACHE_BUDGET_GB = 8.0


def cache_budget_bytes() -> float:
    text = os.environ.get(CACHE_BUDGET_ENV, "").strip()
    try:
        return float(text) * 1e9 if text else DEFAULT_CACHE_BUDGET_GB * 1e9
    except ValueError:
        raise ValueError(f"{CACHE_BUDGET_ENV}={text!r} is not a number of gigabytes") from None


def split_bytes(split: Split) -> float:
    """Bytes of the split as make_batches caches it: count x H x W x C x 4 (float32), or x 1 for uint8 `pixels`."""
    stored = split.pixels if split.pixels is not None else split.dataset
    spec = stored.element_spec[0]
    pixels = 1
    for dimension in spec.shape:
        pixels *= dimension if dimension is not None else 512
    return float(split.count) * pixels * spec.dtype.size


def _label_matrix(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise ValueError(f"labels must be a [examples, outputs] matrix, got shape {labels.shape}")
    return labels


def files_split(
    paths: Sequence[str | Path],
    labels: np.ndarray,
    image_size: int,
    graph_decodable: Sequence[bool] | np.ndarray | None = None,
) -> Split:
    """A Split that reads each file and decodes it with serve.preprocess.decode_and_resize.

    8-bit PNG, JPEG, GIF and BMP decode in the graph; DICOM (middle frame) and 16-bit PNG through
    serve.preprocess.decode_array, chosen per file by its first bytes. graph_decodable (from
    scan_images; read from each file's first bytes when None) tells whether every file is of the first
    kind, and then the map is TensorFlow's graph decoder alone, as fast as before DICOM was supported.

    labels: float32 [N, num_outputs] (a 1-D array is taken as one binary output). The files should
    have passed scan_images; ignore_errors() only drops files that broke after the scan.
    """
    import tensorflow as tf

    from serve.preprocess import decode_and_resize

    labels = _label_matrix(labels)
    if len(paths) != len(labels):
        raise ValueError(f"got {len(paths)} paths but {len(labels)} label rows; pass one label row per file")
    graph_only = bool(np.all(graph_decodable if graph_decodable is not None else _graph_decodable_files(paths)))

    def load(path, label):
        return decode_and_resize(tf.io.read_file(path), image_size, graph_only=graph_only), label

    path_tensor = tf.constant([str(path) for path in paths], dtype=tf.string, shape=[len(paths)])
    dataset = tf.data.Dataset.from_tensor_slices((path_tensor, labels))
    # deterministic=True keeps the file order, so the cache and the seeded shuffle repeat run to run.
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors(log_warning=True)
    positives = labels.sum(axis=0).astype(np.int64)
    return Split(dataset=dataset, count=len(paths), positives=positives, paths=[str(path) for path in paths])


def _graph_decodable_files(paths: Sequence[str | Path]) -> list[bool]:
    """Whether TensorFlow's graph decoder reads each file, from its first bytes (unreadable files count as no)."""
    from serve.preprocess import DICOM_MAGIC_OFFSET, is_graph_decodable

    found = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                found.append(is_graph_decodable(handle.read(DICOM_MAGIC_OFFSET)))
        except OSError:
            found.append(False)
    return found


def arrays_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """A Split over in-memory images ([N, S, S, 3], uint8 or float in 0-255), cast to float32 on the fly."""
    import tensorflow as tf

    labels = _label_matrix(labels)
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label rows; pass one label row per image")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.map(
        lambda image, label: (tf.cast(image, tf.float32), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return Split(dataset=dataset, count=len(images), positives=labels.sum(axis=0).astype(np.int64))


# Where make_batches augments (the run's `augmentation_placement` param, train.tracking.names).
PER_IMAGE, PER_BATCH, NOT_AUGMENTED = "per_image", "per_batch", "none"


def augmentation_placement(split: Split, augmentation: Augmentation | None) -> str:
    """Where make_batches augments a training split: `per_batch` for stored uint8 pixels, `per_image` otherwise.

    Both run in tf.data on the host's CPU, whatever device trains, so the choice follows what the cache holds,
    not the device. Stored pixels become float32 batch by batch (one banded matrix product resizes the whole
    batch), and flipping them before the conversion moves a quarter of the bytes (a twelfth for gray). Images
    decoded from files are cached as float32 at the training size: transforming each one before batching
    computes only the flips it takes, on an image that stays in the core's cache, where a batch-wide select
    moves every pixel of the batch once per possible flip (issue #36: cached epochs ran at half their speed).
    """
    if augmentation is None:
        return NOT_AUGMENTED
    return PER_BATCH if split.pixels is not None else PER_IMAGE


def make_batches(split: Split, *, batch_size: int, training: bool, augmentation: Augmentation | None, seed: int):
    """Batches of (images [B, S, S, 3] float32 0-255, labels [B, num_outputs]) ready for Keras.

    Order: cache the split (while it fits MEDIMG_CACHE_BUDGET_GB), then (training only) a seeded shuffle that
    changes every epoch and, with an `augmentation` policy, one seed per image; then batch and prefetch.
    Images decoded from files are augmented one by one before batching; a split with stored `pixels` is
    cached, shuffled and batched as uint8, and each batch is made into float32 RGB images (cast, resize,
    gray to RGB) and augmented together (`augmentation_placement` says why). Either way each image is
    transformed as its own seed says (train.data.augment), with the same values. Every step keeps its order,
    so the same seed gives the same batches. `augmentation` has no effect when training is False.
    """
    import tensorflow as tf

    from train.data.augment import augment_image

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = _cached(split)
    placement = augmentation_placement(split, augmentation if training else None)
    if training:
        dataset = dataset.shuffle(_shuffle_buffer(split), seed=seed, reshuffle_each_iteration=True)
    if placement != NOT_AUGMENTED:
        # One [2]-shaped seed per element, new each epoch and reproducible from `seed`.
        element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, element_seeds))
    if placement == PER_IMAGE:
        dataset = dataset.map(
            lambda element, element_seed: (augment_image(element[0], element_seed, augmentation), element[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if split.pixels is not None:
        image_size = split.dataset.element_spec[0].shape[0]
        finish = _finish_batch(image_size, augmentation if placement == PER_BATCH else None)
        dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _finish_batch(image_size: int, augmentation: Augmentation | None):
    """The batch map of stored pixels: uint8 -> float32 RGB images at image_size, augmented when `augmentation` is given.

    Flips move the stored uint8 pixels (they commute with the resize, and uint8 is a quarter of the bytes);
    the jitter runs on the float image before gray becomes RGB, so on one channel instead of three.
    """
    from train.data.augment import batch_parameters, flip_batch, jitter_batch
    from train.data.pixels import to_float, to_rgb

    def augmented(element, seeds):
        images, labels = element
        parameters = batch_parameters(seeds, augmentation)
        images = to_float(flip_batch(images, parameters, augmentation), image_size)
        return to_rgb(jitter_batch(images, parameters)), labels

    def plain(images, labels):
        return to_rgb(to_float(images, image_size)), labels

    return plain if augmentation is None else augmented


def _cached(split: Split):
    """The split's elements (stored pixels when it has them), cached in memory when they fit the budget."""
    dataset = split.pixels if split.pixels is not None else split.dataset
    needed = split_bytes(split)
    if needed <= cache_budget_bytes():
        return dataset.cache()
    logger.warning(
        "not caching %d decoded images (%.1f GB > %s budget of %.1f GB): decoding every epoch; "
        "`python -m train prepare` makes that cheap",
        split.count,
        needed / 1e9,
        CACHE_BUDGET_ENV,
        cache_budget_bytes() / 1e9,
    )
    return dataset


def _shuffle_buffer(split: Split) -> int:
    """Elements the shuffle buffer holds: the split, at most SHUFFLE_BUFFER_LIMIT and SHUFFLE_BUFFER_BYTES of them."""
    image_bytes = split_bytes(split) / max(split.count, 1)
    return max(1, min(split.count, SHUFFLE_BUFFER_LIMIT, int(SHUFFLE_BUFFER_BYTES / max(image_bytes, 1))))


def check_splits_not_empty(split_ids: np.ndarray, source: str | Path) -> None:
    """Raise ValueError naming the split that ended up with no examples."""
    for split_id, split_name in enumerate(SPLIT_NAMES):
        if not np.any(split_ids == split_id):
            raise ValueError(
                f"the {split_name} split of {source} has no readable images; add images or change "
                "validation_fraction/test_fraction"
            )


def loaded_from_files(
    *,
    name: str,
    task: str,
    class_names: list[str],
    source: str | Path,
    paths: Sequence[str | Path],
    labels: np.ndarray,
    split_ids: np.ndarray,
    content_hashes: Sequence[str],
    skipped: Sequence[str],
    image_size: int,
    settings: dict[str, Any],
    groups: np.ndarray | None = None,
    metadata: dict[str, np.ndarray] | None = None,
    graph_decodable: np.ndarray | None = None,
) -> LoadedDataset:
    """Assemble a LoadedDataset from readable files, their labels and split ids (0 train, 1 val, 2 test).

    `paths`, `labels`, `split_ids` and `content_hashes` (from scan_images) describe only the files
    that passed the scan, in the same order; `skipped` holds the scan's "path: reason" lines.
    `groups` (an integer patient or slide id per file) makes each Split carry its examples' groups, for
    patient-level confidence intervals, and the dataset count groups per split; `metadata` (attribute ->
    one value per file, e.g. view or sex) goes to each Split for subgroup metrics.
    `graph_decodable` (scan_images, per file) spares files_split reading each file's first bytes again.
    """
    labels = _label_matrix(labels)
    split_ids = np.asarray(split_ids)
    if not (len(paths) == len(labels) == len(split_ids) == len(content_hashes)):
        raise ValueError(
            f"paths ({len(paths)}), labels ({len(labels)}), split ids ({len(split_ids)}) and content hashes "
            f"({len(content_hashes)}) must have the same length"
        )
    check_splits_not_empty(split_ids, source)
    digest = files_digest(
        {"name": name, "task": task, "class_names": class_names, "image_size": image_size, **settings},
        root=source,
        paths=paths,
        content_hashes=content_hashes,
        labels=labels,
        split_ids=split_ids,
    )
    splits = {}
    for split_id, split_name in enumerate(SPLIT_NAMES):
        members = np.flatnonzero(split_ids == split_id)
        graph = np.asarray(graph_decodable)[members] if graph_decodable is not None else None
        split = files_split([paths[index] for index in members], labels[members], image_size, graph)
        split.groups = np.asarray(groups)[members] if groups is not None else None
        split.metadata = {attribute: np.asarray(values)[members] for attribute, values in (metadata or {}).items()}
        splits[split_name] = split
    return LoadedDataset(
        name=name,
        task=task,
        class_names=list(class_names),
        num_outputs=labels.shape[1],
        splits=splits,
        digest=digest,
        source=str(source),
        skipped_images=len(skipped),
        skipped_examples=list(skipped[:MAX_SKIPPED_EXAMPLES]),
        group_counts=groups_per_split(groups, split_ids) if groups is not None else {},
    )
