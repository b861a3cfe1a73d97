"""The input-pipeline table that bench/pipeline.py and bench/feed.py both print: reads a folder of image files and a prepared folder of the same images, writes nothing.

For each path (the image files, read through their dataset loader, and the prepared folder), each training
size and each augmentation choice, the training split's pipeline is built exactly as `main` builds it
(train.job.stages.load_data and batches) and iterated: one first epoch (decoding, and filling the cache
when the split fits MEDIMG_CACHE_BUDGET_GB) and `epochs` later ones. Rates are images/s per core (the
cores this process may run on); later epochs also per CPU second of this process, which other work on
the machine moves less; the cache column is what the split's cache holds (0 when it does not fit the
budget and every epoch decodes again). The table is Markdown, as docs/BENCHMARKS.md keeps it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

IMAGE_FILES, PREPARED = "image files", "prepared folder"


@dataclass
class EpochRow:
    """One line of the table: a path at one size with or without augmentation, and what it measured."""

    path: str
    image_size: int
    augment: str
    images: int
    first: float
    later: float
    later_per_cpu_second: float
    cache_mb: float
    load: float


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def parse_sizes(text: str) -> list[int]:
    """`--table-sizes` as integers: "128,224" -> [128, 224]; an empty text is no table."""
    return [int(word) for word in text.split(",") if word.strip()]


def measure(path: str, dataset: str, folder: Path, image_size: int, augment: str, arguments) -> EpochRow:
    """Iterate the training split's batches as `main` builds them: the first epoch, then `arguments.epochs` more."""
    from train.data.pipeline import cache_budget_bytes, split_bytes
    from train.job.stages import batches, load_data
    from train.settings import MainSettings

    settings = MainSettings.from_dict(
        {
            "dataset": dataset,
            "data_dir": str(folder),
            "image_size": image_size,
            "batch_size": arguments.batch_size,
            "augment": augment,
            "seed": arguments.seed,
        }
    )
    split = load_data(settings).splits["train"]
    pipeline = batches(split, settings, training=True)
    started = time.perf_counter()
    first = sum(int(images.shape[0]) for images, _ in pipeline)
    first_seconds = time.perf_counter() - started
    later, started, cpu_started = 0, time.perf_counter(), time.process_time()
    for _ in range(max(1, arguments.epochs)):
        later += sum(int(images.shape[0]) for images, _ in pipeline)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    needed = split_bytes(split)
    return EpochRow(
        path=path,
        image_size=image_size,
        augment=augment,
        images=first,
        first=first / first_seconds,
        later=later / seconds,
        later_per_cpu_second=later / max(cpu_seconds, 1e-9),
        cache_mb=needed / 1e6 if needed <= cache_budget_bytes() else 0.0,
        load=os.getloadavg()[0],
    )


def measure_table(sources: list[tuple[str, str, Path]], policy: str, arguments) -> list[EpochRow]:
    """Every row: each (path label, dataset, folder) of `sources` at each of `--table-sizes`, with `policy` and without."""
    rows = []
    for size in parse_sizes(arguments.table_sizes):
        for path, dataset, folder in sources:
            for augment in (policy, "none"):
                rows.append(measure(path, dataset, folder, size, augment, arguments))
    return rows


def print_table(rows: list[EpochRow], title: str) -> None:
    """The rows as one Markdown table, per core, with the 1-minute load average at the end of each row."""
    if not rows:
        return
    count = cores()
    print(f"\n{title}; {count} cores, {load_text()} at the end")
    print(
        "| path | px | augment | images | epoch 1, per core | later epochs, per core | later, per CPU second "
        "| cache MB | load |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.path} | {row.image_size} | {row.augment} | {row.images} | {row.first / count:,.0f} "
            f"| {row.later / count:,.0f} | {row.later_per_cpu_second:,.0f} | {row.cache_mb:,.0f} | {row.load:.2f} |"
        )
