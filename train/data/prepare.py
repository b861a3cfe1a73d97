"""Turns a raw dataset into resized, sharded TFRecords plus manifest.json; reads the raw dataset (the command is train/prepare.py).

Usage:

    python -m train prepare --dataset chestxray14 --data-dir /data/nih --output-dir /data/nih-256
    python -m train main --dataset chestxray14 --data-dir /data/nih-256 --image-size 224

Each image is decoded and resized once with `serve.preprocess.decode_and_resize` and stored as uint8
pixels, encoded as `image_encoding` says: a lossless PNG (default), the raw pixels or a quality-95 JPEG
(train.data.prepared documents the record format). chestxray14 is prepared by
a pool of worker processes, one shard per task; the other datasets (malaria from TFDS or its
cell_images/ folder, imagefolder, synthetic) go through their loaders, whose tf.data maps decode
on all cores. Each shard is written to a temporary name and renamed when complete, so an
interrupted run resumes with the shards that are missing; a run whose manifest already matches
the source and settings does nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from train.data.labels import is_positive
from train.data.prepared import (
    DEFAULT_ENCODING,
    ENCODINGS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STATE_NAME,
    count_records,
)
from train.data.spec import SPLIT_NAMES

# Lines of skipped images kept in the manifest; the count covers all of them.
MAX_SKIPPED_IN_MANIFEST = 100
# Without a terminal (CI logs, `mlflow run`), progress is printed about this many times.
PROGRESS_LINES = 10
TEMPORARY_SUFFIX = ".partial"
# The version of the records' contents in the fingerprint: PNG shards are written as in format version 1, so
# a version 1 folder prepared again with the same settings is recognised, not redone.
RECORDS_VERSION = 1


class PrepareConfig(Protocol):
    """What the writer reads of its settings (train.settings.PrepareSettings has these fields)."""

    dataset: str
    data_dir: str
    output_dir: str
    image_size: int
    shard_size: int
    image_encoding: str
    workers: int
    seed: int
    validation_fraction: float
    view: str
    group_pattern: str
    max_missing_fraction: float

    @property
    def worker_count(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class ShardPlan:
    """One output shard: its split and file name, and what goes in it."""

    split: str
    file: str
    # Position of the shard's first example in its split, and how many examples it takes.
    start: int
    count: int
    # File-backed datasets: (source path, label vector, example id) per example.
    entries: list[tuple[str, list[float], str]] = field(default_factory=list)


@dataclass
class PreparedSource:
    """What is being prepared: label space, a digest of the source, the split sizes and the shard plans."""

    task: str
    class_names: list[str]
    source: str
    source_digest: str
    plans: list[ShardPlan]
    # "path: reason" lines of images left out before writing (missing files).
    skipped: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # For loader-backed datasets: the LoadedDataset whose splits are written.
    loaded: Any = None
    # Per example id: its patient group (an integer code, never the patient id) and subgroup attributes,
    # in the order of `example_columns`, so a prepared folder keeps patient-level intervals and subgroups.
    example_columns: list[str] = field(default_factory=list)
    examples: dict[str, list] = field(default_factory=dict)


@dataclass
class PrepareResult:
    """What one `prepare` call did."""

    output_dir: Path
    manifest: dict[str, Any]
    written_shards: list[str]
    reused_shards: list[str]
    seconds: float
    # Time the writers spent on the written shards, summed over processes (start-up not included).
    writer_seconds: float = 0.0
    # Processes that wrote the shards: 1 is this one, more are a pool of workers.
    processes: int = 1

    @property
    def images_written(self) -> int:
        written = set(self.written_shards)
        return sum(
            shard["count"]
            for split in self.manifest["splits"].values()
            for shard in split["shards"]
            if shard["file"] in written
        )


def shard_file(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord"


def _plan_split(split: str, count: int, shard_size: int) -> list[ShardPlan]:
    total = math.ceil(count / shard_size)
    return [
        ShardPlan(
            split=split,
            file=shard_file(split, index, total),
            start=index * shard_size,
            count=min(shard_size, count - index * shard_size),
        )
        for index in range(total)
    ]


def chestxray14_source(config: PrepareConfig) -> PreparedSource:
    """Index the NIH folder (no pixels read) and plan shards of file paths, each split in a seeded random order."""
    from train.data.chestxray14 import CLASS_NAMES, build_index

    index = build_index(
        config.data_dir,
        seed=config.seed,
        validation_fraction=config.validation_fraction,
        view=config.view,
        max_missing_fraction=config.max_missing_fraction,
    )
    plans = []
    for split_id, split in enumerate(SPLIT_NAMES):
        members = np.flatnonzero(index.split_ids == split_id)
        # Shuffled once here, so shards mix patients and any prefix of a split is a random sample.
        members = np.random.default_rng([config.seed, split_id]).permutation(members)
        for plan in _plan_split(split, len(members), config.shard_size):
            plan.entries = [
                (str(index.paths[member]), index.labels[member].tolist(), index.names[member])
                for member in members[plan.start : plan.start + plan.count]
            ]
            plans.append(plan)
    _, patients = np.unique(index.patient_ids, return_inverse=True)
    attributes = list(index.subgroups)
    examples = {
        name: [int(patients.reshape(-1)[position]), *(str(index.subgroups[key][position]) for key in attributes)]
        for position, name in enumerate(index.names)
    }
    return PreparedSource(
        task="multilabel",
        class_names=list(CLASS_NAMES),
        source=str(index.root.resolve()),
        source_digest=index.source_digest(),
        plans=plans,
        skipped=list(index.missing),
        details={"metadata_file": index.metadata_file.name, "left_out": index.left_out},
        example_columns=["group", *attributes],
        examples=examples,
    )


def loader_source(config: PrepareConfig) -> PreparedSource:
    """Load the dataset with its registered loader at the prepared size and plan shards over its splits."""
    from train.data import load_dataset

    loaded = load_dataset(
        config.dataset,
        data_dir=config.data_dir or None,
        image_size=config.image_size,
        seed=config.seed,
        validation_fraction=config.validation_fraction,
        view=config.view,
        group_pattern=config.group_pattern,
    )
    plans = []
    for split in SPLIT_NAMES:
        plans.extend(_plan_split(split, loaded.splits[split].count, config.shard_size))
    columns, examples = loaded_examples(loaded)
    return PreparedSource(
        task=loaded.task,
        class_names=list(loaded.class_names),
        source=loaded.source,
        source_digest=loaded.digest,
        plans=plans,
        skipped=list(loaded.skipped_examples),
        details={"skipped_by_loader": loaded.skipped_images},
        loaded=loaded,
        example_columns=columns,
        examples=examples,
    )


def loaded_examples(loaded) -> tuple[list[str], dict[str, list]]:
    """Groups and subgroup attributes of a loader's splits, keyed by the ids the writer gives their records."""
    reference = loaded.splits["test"]
    attributes = list(reference.metadata)
    if reference.groups is None and not attributes:
        return [], {}
    examples = {}
    for split in SPLIT_NAMES:
        part = loaded.splits[split]
        for position in range(part.count):
            group = int(part.groups[position]) if part.groups is not None else position
            values = [str(part.metadata[key][position]) if key in part.metadata else "unknown" for key in attributes]
            examples[f"{split}-{position:07d}"] = [group, *values]
    return ["group", *attributes], examples


def fingerprint(config: PrepareConfig, source: PreparedSource) -> str:
    """Digest of everything that decides the shards' contents; a manifest with the same one needs no work."""
    settings = {
        "format_version": RECORDS_VERSION,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "shard_size": config.shard_size,
        "seed": config.seed,
        "validation_fraction": config.validation_fraction,
        "view": config.view.lower(),
        "source_digest": source.source_digest,
        "shards": [(plan.file, plan.count) for plan in source.plans],
    }
    # Left out for PNG, so fingerprints of folders written before there was a choice stay the same.
    if config.image_encoding != DEFAULT_ENCODING:
        settings["image_encoding"] = config.image_encoding
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


# --- workers ----------------------------------------------------------------------------------------

# A pool worker costs a process start and a TensorFlow import, about 5 s of CPU. With workers 0 (all cores) one
# is started per this many images, so a small folder is written in this process, sooner and with less CPU.
IMAGES_PER_WORKER = 500


def process_count(config: PrepareConfig, source: PreparedSource, pending: list[ShardPlan]) -> int:
    """Processes that write `pending`: 1 (this one) for a loaded dataset; else `workers` when set, or one per
    IMAGES_PER_WORKER images up to the cores; never more than there are shards."""
    if source.loaded is not None:
        return 1
    wanted = config.worker_count
    if not config.workers:
        wanted = min(wanted, sum(plan.count for plan in pending) // IMAGES_PER_WORKER)
    return max(1, min(wanted, len(pending)))


# One compiled encoder per image size and encoding, per process (each worker process builds its own).
_ENCODERS: dict[tuple[int, str], Any] = {}


def _encoder(image_size: int, encoding: str):
    """A tf.function: encoded source bytes -> (stored value, channels) of the resized uint8 image (serve.preprocess)."""
    if (image_size, encoding) not in _ENCODERS:
        import tensorflow as tf

        from serve.preprocess import decode_and_resize
        from train.data.prepared import encode_image

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def encode(data):
            return encode_image(decode_and_resize(data, image_size), encoding)

        _ENCODERS[(image_size, encoding)] = encode
    return _ENCODERS[(image_size, encoding)]


def initialize_worker() -> None:
    """Process-pool initializer: CPU only, one thread per process (the pool supplies the parallelism)."""
    # Every worker would otherwise claim the memory of every GPU it sees.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def write_file_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Read, decode, resize and encode the files of one shard; write it under a temporary name, then rename it."""
    import tensorflow as tf

    from serve.common import first_line
    from train.data.prepared import record_bytes, serialize_example

    encoding = task["image_encoding"]
    encode = _encoder(task["image_size"], encoding)
    final = Path(task["output_dir"]) / task["file"]
    temporary = final.with_name(f".{final.name}{TEMPORARY_SUFFIX}")
    positives = np.zeros(task["num_outputs"], dtype=np.int64)
    skipped = []
    count = channels = 0
    started = time.perf_counter()
    with tf.io.TFRecordWriter(str(temporary)) as writer:
        for path, label, example_id in task["entries"]:
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
                stored, image_channels = encode(tf.constant(data))
            except OSError as error:
                skipped.append(f"{path}: cannot be read ({error.strerror or error})")
                continue
            except tf.errors.OpError as error:
                skipped.append(f"{path}: not a decodable image ({first_line(error)})")
                continue
            writer.write(serialize_example(record_bytes(stored.numpy()), np.asarray(label), example_id))
            positives += is_positive(label)
            channels = max(channels, int(image_channels))
            count += 1
    os.replace(temporary, final)
    seconds = time.perf_counter() - started
    return {
        "file": task["file"],
        "count": count,
        "positives": positives.tolist(),
        "skipped": skipped,
        "channels": channels or 1,
        "seconds": seconds,
    }


def _write_loaded_split(
    split: str, plans: list[ShardPlan], pending: set[str], loaded, output_dir: Path, encoding: str
) -> Iterator[dict[str, Any]]:
    """Write the pending shards of one loader split in order; the loader's tf.data map decodes on all cores."""
    import tensorflow as tf

    from train.data.prepared import encode_image, record_bytes, serialize_example

    encoded = loaded.splits[split].dataset.map(
        lambda image, label: (*encode_image(image, encoding), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    elements = encoded.as_numpy_iterator()
    for plan in plans:
        if plan.file not in pending:
            # The elements of shards already written still pass through the pipeline, unwritten.
            for _ in range(plan.count):
                next(elements, None)
            continue
        final = output_dir / plan.file
        temporary = final.with_name(f".{final.name}{TEMPORARY_SUFFIX}")
        positives = np.zeros(loaded.num_outputs, dtype=np.int64)
        count = channels = 0
        started = time.perf_counter()
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for position in range(plan.start, plan.start + plan.count):
                element = next(elements, None)
                if element is None:
                    break
                stored, image_channels, label = element
                writer.write(serialize_example(record_bytes(stored), label, f"{split}-{position:07d}"))
                positives += is_positive(label)
                channels = max(channels, int(image_channels))
                count += 1
        os.replace(temporary, final)
        yield {
            "file": plan.file,
            "count": count,
            "positives": positives.tolist(),
            "skipped": [],
            "channels": channels or 1,
            "seconds": time.perf_counter() - started,
        }


# --- state, manifest and progress -------------------------------------------------------------------


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)


def _finished_shards(output_dir: Path, key: str) -> dict[str, dict[str, Any]]:
    """Shards recorded by an earlier run with the same fingerprint; ValueError when the folder holds another preparation."""
    finished: dict[str, dict[str, Any]] = {}
    for name in (MANIFEST_NAME, STATE_NAME):
        path = output_dir / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError:
            # A state file cut short by a crash only loses what it recorded; its shards get rewritten.
            continue
        if content.get("fingerprint") != key:
            settings = content.get("settings", {})
            raise ValueError(
                f"{output_dir} already holds a different preparation (dataset {content.get('dataset')!r}, "
                f"image_size {settings.get('image_size')}, image_encoding {settings.get('image_encoding', DEFAULT_ENCODING)}, "
                "source or settings changed); choose another output_dir "
                "or delete that folder"
            )
        if name == MANIFEST_NAME:
            for split in content.get("splits", {}).values():
                finished.update({shard["file"]: shard for shard in split.get("shards", [])})
        else:
            finished.update(content.get("shards", {}))
    return finished


def _remove_partial_files(output_dir: Path) -> None:
    for path in output_dir.glob(f".*{TEMPORARY_SUFFIX}"):
        path.unlink(missing_ok=True)


class Progress:
    """A tqdm bar in a terminal; otherwise about PROGRESS_LINES printed lines, so logs show progress too."""

    def __init__(self, total: int, description: str):
        from tqdm.auto import tqdm

        self.total = total
        self.done = 0
        self.started = time.perf_counter()
        self.next_line = 1
        self.bar = tqdm(total=total, desc=description, unit="img", disable=None, smoothing=0.1)
        self.description = description

    def update(self, images: int) -> None:
        self.done += images
        self.bar.update(images)
        if self.bar.disable and self.total and self.done * PROGRESS_LINES >= self.next_line * self.total:
            self.next_line = self.done * PROGRESS_LINES // self.total + 1
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            print(f"{self.description}: {self.done}/{self.total} images ({rate:.0f} img/s)", flush=True)

    def close(self) -> None:
        self.bar.close()


def build_manifest(
    config: PrepareConfig, source: PreparedSource, key: str, shards: dict[str, dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """The manifest: settings, source digest, class names, task, and per split counts, prevalence and shards."""
    from importlib.metadata import PackageNotFoundError, version

    splits = {}
    skipped = list(source.skipped)
    num_outputs = 1 if source.task == "binary" else len(source.class_names)
    # A binary task has one output, the positive (second) class.
    output_names = source.class_names[-1:] if source.task == "binary" else source.class_names
    for split in SPLIT_NAMES:
        split_shards = [shards[plan.file] for plan in source.plans if plan.split == split]
        count = sum(shard["count"] for shard in split_shards)
        positives = [0] * num_outputs
        for shard in split_shards:
            positives = [total + value for total, value in zip(positives, shard["positives"], strict=True)]
            skipped.extend(shard.get("skipped", []))
        splits[split] = {
            "count": count,
            "positives": positives,
            "prevalence": {
                name: round(value / count, 6) if count else 0.0
                for name, value in zip(output_names, positives, strict=True)
            },
            "shards": [
                {
                    "file": shard["file"],
                    "count": shard["count"],
                    "positives": shard["positives"],
                    "skipped": shard.get("skipped", []),
                    **({"channels": shard["channels"]} if "channels" in shard else {}),
                }
                for shard in split_shards
            ],
        }
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "numpy", "tensorflow-datasets"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    total = sum(split["count"] for split in splits.values())
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": config.dataset,
        "task": source.task,
        "class_names": source.class_names,
        "num_outputs": num_outputs,
        "image_size": config.image_size,
        "image_encoding": ENCODINGS[config.image_encoding],
        # 1 when every stored image is gray; a shard recorded before channels were (format version 1) counts as RGB.
        "channels": max(shard.get("channels", 3) for shard in shards.values()) if shards else 3,
        "counts": {split: splits[split]["count"] for split in SPLIT_NAMES},
        "total": total,
        "splits": splits,
        "skipped": {"count": len(skipped), "examples": skipped[:MAX_SKIPPED_IN_MANIFEST]},
        "source": source.source,
        "source_digest": source.source_digest,
        "fingerprint": key,
        "settings": {
            "dataset": config.dataset,
            "image_size": config.image_size,
            "shard_size": config.shard_size,
            "image_encoding": config.image_encoding,
            "seed": config.seed,
            "validation_fraction": config.validation_fraction,
            "view": config.view,
            "max_missing_fraction": config.max_missing_fraction,
        },
        "details": source.details,
        **({"examples": {"columns": source.example_columns, "rows": source.examples}} if source.examples else {}),
        "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "prepare_seconds": round(seconds, 3),
    }


# --- the command ------------------------------------------------------------------------------------


def prepare(config: PrepareConfig) -> PrepareResult:
    """Write (or finish, or confirm) the prepared folder for `config`; return what was done."""
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # A dataset prepared from its index (its metadata lists the files) is written by worker processes without going
    # through its loader; the rest go through their loaders.
    from train.data import get_dataset_spec

    indexed = get_dataset_spec(config.dataset).prepared_from_index
    source = chestxray14_source(config) if indexed else loader_source(config)
    key = fingerprint(config, source)
    finished = _finished_shards(output_dir, key)
    reused = {
        plan.file: finished[plan.file]
        for plan in source.plans
        if plan.file in finished and count_records(output_dir / plan.file) == finished[plan.file]["count"]
    }
    pending = [plan for plan in source.plans if plan.file not in reused]
    if not pending and (output_dir / MANIFEST_NAME).is_file():
        manifest = json.loads((output_dir / MANIFEST_NAME).read_text())
        print(f"{output_dir} is already prepared ({manifest['counts']}); nothing to do", flush=True)
        return PrepareResult(output_dir, manifest, [], list(reused), time.perf_counter() - started)

    _remove_partial_files(output_dir)
    # The manifest goes while shards are rewritten, so nothing trains from a half-repaired folder.
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    state = {"fingerprint": key, "dataset": config.dataset, "settings": config.to_dict(), "shards": dict(reused)}
    _write_json(output_dir / STATE_NAME, state)
    progress = Progress(sum(plan.count for plan in pending), f"preparing {config.dataset}")
    writer_seconds = 0.0
    processes = process_count(config, source, pending)
    try:
        for result in _write_pending(config, source, pending, output_dir, processes):
            writer_seconds += result.pop("seconds", 0.0)
            state["shards"][result["file"]] = result
            _write_json(output_dir / STATE_NAME, state)
            progress.update(result["count"] + len(result["skipped"]))
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    manifest = build_manifest(config, source, key, state["shards"], seconds)
    _write_json(output_dir / MANIFEST_NAME, manifest)
    (output_dir / STATE_NAME).unlink(missing_ok=True)
    shards = [plan.file for plan in pending]
    result = PrepareResult(output_dir, manifest, shards, list(reused), seconds, writer_seconds, processes)
    written = result.images_written
    print(
        f"prepared {config.dataset} into {output_dir}: {manifest['counts']}, {len(pending)} shard(s) written, "
        f"{len(reused)} kept, {manifest['skipped']['count']} image(s) skipped, "
        f"{written / max(seconds, 1e-9):.1f} img/s",
        flush=True,
    )
    return result


def _write_pending(
    config: PrepareConfig, source: PreparedSource, pending: list[ShardPlan], output_dir: Path, processes: int
) -> Iterator[dict[str, Any]]:
    """Write the pending shards with `processes` processes, yielding each shard's summary as it completes."""
    if source.loaded is not None:
        names = {plan.file for plan in pending}
        for split in SPLIT_NAMES:
            plans = [plan for plan in source.plans if plan.split == split]
            if any(plan.file in names for plan in plans):
                yield from _write_loaded_split(split, plans, names, source.loaded, output_dir, config.image_encoding)
        return
    tasks = [
        {
            "file": plan.file,
            "entries": plan.entries,
            "image_size": config.image_size,
            "image_encoding": config.image_encoding,
            "output_dir": str(output_dir),
            "num_outputs": len(source.class_names),
        }
        for plan in pending
    ]
    if processes <= 1:
        for task in tasks:
            yield write_file_shard(task)
        return
    import multiprocessing

    # spawn, not fork: a forked child of a process that already runs TensorFlow threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes=processes, initializer=initialize_worker) as pool:
        yield from pool.imap_unordered(write_file_shard, tasks)
