"""Reads a folder written by `python -m train prepare` (manifest.json + sharded TFRecords) into train/val/test Splits.

Record format (one tf.train.Example per image): `image` holds the image after
`serve.preprocess.decode_and_resize` to the prepared size, rounded to uint8, with one gray channel when
the three channels are equal (as for X-rays), else RGB, stored as the manifest's `image_encoding` says:
`png-uint8` (lossless PNG, the default), `raw-uint8` (the pixels themselves, row-major [S, S, C] bytes:
no decoding at all, about 2.5 times PNG's size) or `jpeg-q95` (JPEG at quality 95: about half PNG's size
and several times faster to decode, but lossy: most pixels within 2 gray levels). `label` is the
float label vector; `id` names the source image. The manifest's `channels` is 1 when every stored image
is gray (format version 1 folders, written before it existed, read as 3).

Reading gives each split twice: `pixels`, the stored uint8 images, which the training input pipeline
caches, shuffles and batches before converting whole batches, and `dataset`, the float32 [S, S, 3]
images every other reader takes, converted image by image with the same train.data.pixels functions
(`serve.preprocess.resize` when the training image_size differs from the prepared size). At the
prepared size a lossless record gives the directly decoded tensor rounded to whole gray levels (8-bit
sources at that size: bit for bit the same tensor).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from train.data.spec import SPLIT_NAMES

if TYPE_CHECKING:
    import tensorflow as tf

    from train.data.spec import LoadedDataset

MANIFEST_NAME = "manifest.json"
STATE_NAME = "prepare_state.json"
FORMAT = "medimg-prepared-tfrecord"
# Version 2 added the raw and JPEG encodings and `channels`; version 1 folders (PNG only) still read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# The `image_encoding` setting of `prepare` -> what the manifest calls it.
ENCODINGS = {"png": "png-uint8", "raw": "raw-uint8", "jpeg": "jpeg-q95"}
DEFAULT_ENCODING = "png"
JPEG_QUALITY = 95
LOSSY_ENCODINGS = (ENCODINGS["jpeg"],)
IMAGE_FEATURE = "image"
LABEL_FEATURE = "label"
ID_FEATURE = "id"
# Shards read at once; a fixed number keeps the interleaved record order the same on every machine.
PARALLEL_READS = 8
# A TFRecord is: uint64 length, uint32 CRC of the length, the data, uint32 CRC of the data.
RECORD_HEADER_BYTES = 12
RECORD_FOOTER_BYTES = 4


class PreparedDataWarning(UserWarning):
    """Training settings that a prepared folder cannot honour (its split and view are fixed)."""


def is_prepared(data_dir: str | Path | None) -> bool:
    """True when data_dir holds a finished preparation (manifest.json)."""
    return bool(data_dir) and (Path(data_dir) / MANIFEST_NAME).is_file()


def is_unfinished(data_dir: str | Path | None) -> bool:
    """True when data_dir holds an interrupted preparation (prepare_state.json but no manifest.json)."""
    return bool(data_dir) and (Path(data_dir) / STATE_NAME).is_file() and not is_prepared(data_dir)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a prepared folder, after checking its format and version."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read ({error}); run `python -m train prepare` again") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path} is not a medimg prepared folder of format version {' or '.join(map(str, READABLE_VERSIONS))} "
            f"(format {manifest.get('format')!r}, version {manifest.get('format_version')!r}); run "
            "`python -m train prepare` into a new output_dir"
        )
    encoding = manifest.setdefault("image_encoding", ENCODINGS[DEFAULT_ENCODING])
    if encoding not in ENCODINGS.values():
        raise ValueError(
            f"{path} stores images as {encoding!r}, which this medimg cannot read (it reads "
            f"{', '.join(ENCODINGS.values())}); update medimg or run `python -m train prepare` into a new output_dir"
        )
    return manifest


def check_prepared_name(folder: str | Path, name: str) -> None:
    """Raise ValueError when the prepared folder holds another dataset than `name` (cheap: reads the manifest)."""
    prepared_name = read_manifest(folder).get("dataset")
    if prepared_name != name:
        raise ValueError(
            f"data_dir {folder} holds prepared {prepared_name!r} records, not {name!r}; use dataset={prepared_name}"
        )


def count_records(path: str | Path) -> int | None:
    """Number of records in a TFRecord file, read from the length fields only; None when the file is damaged."""
    try:
        size = os.path.getsize(path)
        count = 0
        with open(path, "rb") as handle:
            position = 0
            while position < size:
                header = handle.read(RECORD_HEADER_BYTES)
                if len(header) < RECORD_HEADER_BYTES:
                    return None
                (length,) = struct.unpack("<Q", header[:8])
                position += RECORD_HEADER_BYTES + length + RECORD_FOOTER_BYTES
                if position > size:
                    return None
                handle.seek(position)
                count += 1
    except OSError:
        return None
    return count


def encode_image(image, encoding: str = DEFAULT_ENCODING) -> tuple[tf.Tensor, tf.Tensor]:
    """(stored value, channels) of a float 0-255 [H, W, 3] image rounded to uint8, one gray channel when all are equal.

    encoding: a key of ENCODINGS. The stored value is PNG or JPEG bytes, or for `raw` the uint8 pixels
    themselves ([H, W, 1] or [H, W, 3]; `record_bytes` makes them the record's bytes).
    """
    import tensorflow as tf

    if encoding not in ENCODINGS:
        raise ValueError(f"unknown image_encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")
    pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    gray = tf.reduce_all(tf.equal(pixels, pixels[..., :1]))

    def stored(chosen):
        if encoding == "png":
            return tf.io.encode_png(chosen)
        if encoding == "jpeg":
            return tf.io.encode_jpeg(chosen, quality=JPEG_QUALITY, chroma_downsampling=False)
        return chosen

    value = tf.cond(gray, lambda: stored(pixels[..., :1]), lambda: stored(pixels))
    return value, tf.where(gray, 1, 3)


def record_bytes(value) -> bytes:
    """The bytes a record stores for `encode_image`'s value (as NumPy gives it): raw pixels as row-major uint8."""
    return value if isinstance(value, bytes) else np.ascontiguousarray(value, dtype=np.uint8).tobytes()


def decode_pixels(data, encoding: str, stored_size: int, channels: int) -> tf.Tensor:
    """A record's `image` bytes -> uint8 [stored_size, stored_size, channels] (gray records made RGB when channels=3)."""
    import tensorflow as tf

    if encoding == ENCODINGS["png"]:
        pixels = tf.io.decode_png(data, channels=channels)
    elif encoding == ENCODINGS["jpeg"]:
        pixels = tf.io.decode_jpeg(data, channels=channels)
    else:
        pixels = tf.reshape(tf.io.decode_raw(data, tf.uint8), [stored_size, stored_size, -1])
        if channels == 3:
            pixels = tf.cond(
                tf.equal(tf.shape(pixels)[-1], 1), lambda: tf.tile(pixels, [1, 1, 3]), lambda: tf.identity(pixels)
            )
    pixels.set_shape([stored_size, stored_size, channels])
    return pixels


def serialize_example(image: bytes, label: np.ndarray, example_id: str) -> bytes:
    """One tf.train.Example with the stored image bytes, the float label vector and the source id."""
    import tensorflow as tf

    feature = {
        IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        LABEL_FEATURE: tf.train.Feature(
            float_list=tf.train.FloatList(value=np.asarray(label, dtype=np.float32).reshape(-1).tolist())
        ),
        ID_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized, num_outputs: int) -> dict:
    import tensorflow as tf

    return tf.io.parse_single_example(
        serialized,
        {
            IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string),
            LABEL_FEATURE: tf.io.FixedLenFeature([num_outputs], tf.float32),
            ID_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
        },
    )


def shard_paths(folder: str | Path, manifest: dict[str, Any], split: str) -> list[Path]:
    """Paths of the shards of one split, in manifest order; ValueError naming a missing one."""
    paths = [Path(folder) / shard["file"] for shard in manifest["splits"][split]["shards"]]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{path} is missing; run `python -m train prepare` again to rewrite it")
    return paths


def _records(paths: list[str], count: int | None, total: int):
    """The serialized records of some shards; with `count`, `count` of the `total` records spaced evenly."""
    import tensorflow as tf

    records = tf.data.TFRecordDataset(paths, num_parallel_reads=min(PARALLEL_READS, len(paths)))
    if count is not None and count < total:
        # Every k-th record, then a cut: spread over the whole split, not its first shards.
        records = records.shard(max(1, total // count), 0).take(count)
    return records


def split_pixels(
    folder: str | Path,
    manifest: dict[str, Any],
    split: str,
    *,
    include_ids: bool = False,
    count: int | None = None,
) -> tf.data.Dataset:
    """(uint8 pixels [s, s, C], label) elements of one prepared split as stored, or (id, pixels, label) with include_ids.

    s is the prepared size and C the manifest's `channels`. count: read only this many records, spaced
    evenly over the split (None = all).
    """
    import tensorflow as tf

    paths = [str(path) for path in shard_paths(folder, manifest, split)]
    num_outputs = int(manifest["num_outputs"])
    stored_size = int(manifest["image_size"])
    encoding = manifest["image_encoding"]
    channels = int(manifest.get("channels", 3))

    def decode(serialized):
        example = parse_example(serialized, num_outputs)
        pixels = decode_pixels(example[IMAGE_FEATURE], encoding, stored_size, channels)
        if include_ids:
            return example[ID_FEATURE], pixels, example[LABEL_FEATURE]
        return pixels, example[LABEL_FEATURE]

    if not paths:
        return tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string)).map(decode)
    total = int(manifest["splits"][split]["count"])
    records = _records(paths, count, total)
    dataset = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The manifest knows the exact count; Keras then knows the steps per epoch from the first epoch on.
    return dataset.apply(tf.data.experimental.assert_cardinality(min(total, count) if count is not None else total))


def split_records(
    folder: str | Path,
    manifest: dict[str, Any],
    split: str,
    image_size: int,
    *,
    include_ids: bool = False,
    count: int | None = None,
) -> tf.data.Dataset:
    """(image float32 [S, S, 3], label) elements of one prepared split, or (id, image, label) with include_ids.

    The stored pixels of `split_pixels`, made images one by one by train.data.pixels.to_images (resized
    when image_size differs from the prepared size). count: as for split_pixels.
    """
    import tensorflow as tf

    from train.data.pixels import to_images

    pixels = split_pixels(folder, manifest, split, include_ids=include_ids, count=count)
    if include_ids:
        return pixels.map(
            lambda example_id, image, label: (example_id, to_images(image, image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return pixels.map(
        lambda image, label: (to_images(image, image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _check_settings(manifest: dict[str, Any], folder: str | Path, image_size: int, view: str, validation_fraction):
    settings = manifest.get("settings", {})
    prepared_view = str(settings.get("view", "all"))
    if view and view.lower() != "all" and view.lower() != prepared_view.lower():
        raise ValueError(
            f"data_dir {folder} was prepared with view={prepared_view}, but view={view} was asked for; "
            f"prepare it again with view={view} into another output_dir, or train with view=all"
        )
    prepared_fraction = settings.get("validation_fraction")
    if validation_fraction is not None and prepared_fraction is not None and validation_fraction != prepared_fraction:
        warnings.warn(
            f"{folder} was prepared with validation_fraction={prepared_fraction}; its splits are fixed, so "
            f"validation_fraction={validation_fraction} has no effect",
            PreparedDataWarning,
            stacklevel=3,
        )
    if image_size > int(manifest["image_size"]):
        warnings.warn(
            f"{folder} holds {manifest['image_size']}px images; training at image_size={image_size} upsamples them. "
            f"Prepare again with image_size={image_size} for full detail",
            PreparedDataWarning,
            stacklevel=3,
        )


def apportion(counts: dict[str, int], cap: int) -> dict[str, int]:
    """Split sizes summing to `cap`, in proportion to `counts` (largest remainders), each non-empty split keeping one."""
    total = sum(counts.values())
    shares = {name: cap * count / total for name, count in counts.items()}
    sizes = {name: min(count, max(1 if count else 0, int(shares[name]))) for name, count in counts.items()}
    by_remainder = sorted(counts, key=lambda name: shares[name] - int(shares[name]), reverse=True)
    while sum(sizes.values()) < cap:
        grew = False
        for name in by_remainder:
            if sum(sizes.values()) < cap and sizes[name] < counts[name]:
                sizes[name] += 1
                grew = True
        if not grew:
            break
    return sizes


def load_prepared(
    folder: str | Path,
    *,
    name: str,
    image_size: int,
    max_examples: int = 0,
    view: str = "all",
    validation_fraction: float | None = None,
    **_: object,
) -> LoadedDataset:
    """Wrap a prepared folder as a LoadedDataset; max_examples keeps an evenly spaced sample of each split, in proportion.

    Each Split carries the stored `pixels` (which make_batches caches, shuffles and batches) and the float32
    `dataset` made from them image by image.
    """
    import tensorflow as tf

    from train.data.pixels import to_images
    from train.data.spec import LoadedDataset, Split

    folder = Path(folder)
    manifest = read_manifest(folder)
    check_prepared_name(folder, name)
    _check_settings(manifest, folder, image_size, view, validation_fraction)
    counts = {split: int(manifest["splits"][split]["count"]) for split in SPLIT_NAMES}
    total = sum(counts.values())
    capped = apportion(counts, max_examples) if max_examples and max_examples < total else counts
    splits = {}
    for split in SPLIT_NAMES:
        count = capped[split]
        positives = np.array(manifest["splits"][split]["positives"], dtype=np.int64)
        if count < counts[split]:
            positives = _sample_positives(folder, manifest, split, count)
        pixels = split_pixels(folder, manifest, split, count=count)
        dataset = pixels.map(
            lambda image, label: (to_images(image, image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        splits[split] = Split(dataset=dataset, count=count, positives=positives, pixels=pixels)
        if split != "train" and manifest.get("examples"):
            splits[split].groups, splits[split].metadata = _examples_of(folder, manifest, split, count)
    described = {
        "source_digest": manifest["source_digest"],
        "prepared_size": manifest["image_size"],
        "image_size": image_size,
        "max_examples": max_examples,
        "counts": {split: splits[split].count for split in SPLIT_NAMES},
    }
    # PNG and raw records hold the same pixels, so the same data; JPEG's pixels differ a little.
    if manifest["image_encoding"] in LOSSY_ENCODINGS:
        described["image_encoding"] = manifest["image_encoding"]
    hasher = hashlib.sha256()
    hasher.update(json.dumps(described, sort_keys=True).encode())
    skipped = manifest.get("skipped", {})
    return LoadedDataset(
        name=name,
        task=manifest["task"],
        class_names=list(manifest["class_names"]),
        num_outputs=int(manifest["num_outputs"]),
        splits=splits,
        digest=hasher.hexdigest(),
        source=str(folder),
        skipped_images=int(skipped.get("count", 0)),
        skipped_examples=list(skipped.get("examples", []))[:10],
    )


def _examples_of(folder: Path, manifest: dict[str, Any], split: str, count: int):
    """Patient groups and subgroup attributes of the records split_records(count=count) reads, in their order.

    Reads only the records' ids and looks them up in the manifest's `examples` table (written by prepare).
    """
    import tensorflow as tf

    table = manifest["examples"]
    columns, rows = table["columns"], table["rows"]
    paths = [str(path) for path in shard_paths(folder, manifest, split)]
    if not paths or count == 0:
        return None, {}
    records = _records(paths, count, int(manifest["splits"][split]["count"]))
    ids = records.map(
        lambda serialized: tf.io.parse_single_example(serialized, {ID_FEATURE: tf.io.FixedLenFeature([], tf.string)})[
            ID_FEATURE
        ]
    )
    found = [rows.get(value.decode()) for batch in ids.batch(4096).as_numpy_iterator() for value in batch]
    if any(row is None for row in found):
        return None, {}
    groups = np.array([row[0] for row in found], dtype=np.int64)
    metadata = {name: np.array([row[index] for row in found]) for index, name in enumerate(columns) if name != "group"}
    return groups, metadata


def _sample_positives(folder: Path, manifest: dict[str, Any], split: str, count: int) -> np.ndarray:
    """Per-output positive counts of the `count` records split_records(count=count) reads (parses labels only)."""
    import tensorflow as tf

    paths = [str(path) for path in shard_paths(folder, manifest, split)]
    num_outputs = int(manifest["num_outputs"])
    if not paths or count == 0:
        return np.zeros(num_outputs, dtype=np.int64)
    records = _records(paths, count, int(manifest["splits"][split]["count"]))
    labels = records.map(
        lambda serialized: tf.io.parse_single_example(
            serialized, {LABEL_FEATURE: tf.io.FixedLenFeature([num_outputs], tf.float32)}
        )[LABEL_FEATURE]
    )
    total = np.zeros(num_outputs, dtype=np.float64)
    for batch in labels.batch(4096).as_numpy_iterator():
        total += batch.sum(axis=0)
    return total.astype(np.int64)
