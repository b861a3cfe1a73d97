"""Benchmarks the training input pipeline on prepared folders and on the image files: writes NIH-layout PNGs and prepared folders, prints images/s.

For each `--encodings` choice it prepares the same generated radiographs (bench/prepare.py's NIH
layout) with `python -m train prepare`'s code, then builds the training split's pipeline exactly as
`main` does (train.job.stages.load_data and batches: shuffle, radiograph augmentation, batching,
prefetch) at each of `--table-sizes`, for the generated PNG files themselves and for each prepared
folder, with radiograph augmentation and without, iterates it for one epoch and `--epochs` more, and
prints bench/epochs.py's table (both paths, per core; the same table bench/pipeline.py prints) and, at
`--image-size`,

    feed at 224 px with augmentation: N images/s on C cores, M per core
    feed at 224 px with augment=none: N images/s on C cores, M per core

By default the split is read from disk and decoded every epoch (MEDIMG_CACHE_BUDGET_GB=0), as for a
dataset larger than the cache budget; `--cached` measures epochs served from the in-memory cache
instead. Timings depend on what else the machine runs: the load average is printed beside them, and
so are images per CPU second of this process, which other work moves less. Last, how many such cores
keep a GPU busy (`--gpu-images-per-second`, from bench/gpu.py on that GPU). Usage:

    .venv/bin/python bench/feed.py --images 1000 --prepared-size 256 --image-size 224 --encodings png,raw,jpeg
    .venv/bin/python bench/feed.py --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# ResNet50 training at 224 px with mixed precision on a current GPU, about (issue #27); bench/gpu.py measures yours.
GPU_IMAGES_PER_SECOND_AT_224 = 3000.0
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="number of radiographs to generate and prepare")
    parser.add_argument("--source-size", type=int, default=1024, help="side of the generated PNGs (NIH: 1024)")
    parser.add_argument("--prepared-size", type=int, default=256, help="image_size given to prepare")
    parser.add_argument("--image-size", type=int, default=224, help="training image_size of the feed lines")
    parser.add_argument("--table-sizes", default="128,224", help="training sizes of the table of both paths")
    parser.add_argument("--skip-files", action="store_true", help="leave the image-file rows out of the table")
    parser.add_argument("--quick", action="store_true", help="a short run: 200 images, png only, one timed epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, after one untimed")
    parser.add_argument("--encodings", default="png,raw,jpeg", help="comma-separated prepare image_encoding values")
    parser.add_argument("--cached", action="store_true", help="time epochs served from the in-memory cache")
    parser.add_argument("--shard-size", type=int, default=128, help="images per shard")
    parser.add_argument("--workdir", default="", help="folder for the PNGs and prepared folders, kept for reruns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gpu-images-per-second",
        type=float,
        default=0.0,
        help="what the GPU trains at --image-size (bench/gpu.py); 0 = 3,000 at 224 px (ResNet50, mixed precision, "
        "a current GPU), scaled by pixel count to other sizes",
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.images, arguments.encodings, arguments.epochs = min(arguments.images, 200), "png", 1
    sizes = [int(word) for word in arguments.table_sizes.split(",") if word.strip()]
    if arguments.image_size not in sizes:
        arguments.table_sizes = ",".join(str(size) for size in [*sizes, arguments.image_size])
    return arguments


def prepared_folder(raw: Path, output: Path, arguments: argparse.Namespace, encoding: str) -> Path:
    """Prepare the generated NIH folder with `encoding` (a no-op when `output` already holds it)."""
    from train.data.chestxray14 import NAME as CHESTXRAY14
    from train.data.prepare import prepare
    from train.settings import PrepareSettings

    config = PrepareSettings.from_dict(
        {
            "dataset": CHESTXRAY14,
            "data_dir": str(raw),
            "output_dir": str(output),
            "image_size": arguments.prepared_size,
            "image_encoding": encoding,
            "shard_size": arguments.shard_size,
            "seed": arguments.seed,
            "validation_fraction": 0.1,
        }
    )
    prepare(config)
    return output


def gpu_rate(arguments: argparse.Namespace) -> float:
    """Images/s the GPU to feed trains at: the given figure, or 3,000 at 224 px scaled by pixel count."""
    if arguments.gpu_images_per_second:
        return arguments.gpu_images_per_second
    return GPU_IMAGES_PER_SECOND_AT_224 * (224 / arguments.image_size) ** 2


def feed_line(image_size: int, label: str, rate: float, count: int) -> str:
    return f"feed at {image_size} px with {label}: {rate:.0f} images/s on {count} cores, {rate / count:.0f} per core"


def feed_lines(rows, arguments: argparse.Namespace) -> None:
    """Per source at --image-size: the feed line with augmentation and without, and the cores a GPU needs."""
    from bench.epochs import cores

    gpu = gpu_rate(arguments)
    for path in dict.fromkeys(row.path for row in rows):
        chosen = {row.augment: row for row in rows if row.path == path and row.image_size == arguments.image_size}
        augmented, plain = chosen["radiograph"], chosen["none"]
        print(f"{path}:")
        for label, row in (("augmentation", augmented), ("augment=none", plain)):
            line = feed_line(arguments.image_size, label, row.later, cores())
            print(f"  {line} ({row.later_per_cpu_second:.0f} images per CPU second of this process)")
        print(
            f"  a GPU training at {gpu:.0f} images/s needs about {gpu / (augmented.later / cores()):.1f} such cores "
            f"with augmentation ({gpu / augmented.later_per_cpu_second:.1f} at this process's images per CPU second)"
        )


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not arguments.cached:
        os.environ["MEDIMG_CACHE_BUDGET_GB"] = "0"
    from bench.epochs import IMAGE_FILES, PREPARED, cores, load_text, measure_table, print_table
    from bench.prepare import folder_megabytes, write_nih_layout

    with tempfile.TemporaryDirectory(prefix="medimg-bench-feed-") as temporary:
        workdir = Path(arguments.workdir) if arguments.workdir else Path(temporary)
        raw = workdir / "nih"
        write_nih_layout(raw, arguments.images, arguments.source_size, arguments.seed)
        import tensorflow as tf

        from train.data.chestxray14 import NAME as CHESTXRAY14

        sources = [] if arguments.skip_files else [(IMAGE_FILES, CHESTXRAY14, raw)]
        for encoding in [name.strip() for name in arguments.encodings.split(",") if name.strip()]:
            folder = prepared_folder(
                raw, workdir / f"prepared-{arguments.prepared_size}-{encoding}", arguments, encoding
            )
            megabytes = folder_megabytes(folder, "*.tfrecord")
            print(f"image_encoding={encoding}: {megabytes:.1f} MB of records")
            sources.append((f"{PREPARED} ({encoding})", CHESTXRAY14, folder))
        rows = measure_table(sources, "radiograph", arguments)
        source = "the in-memory cache" if arguments.cached else "disk, decoded every epoch"
        print()
        print(
            f"host: {platform.processor() or platform.machine()}, {cores()} cores, TensorFlow {tf.__version__}; "
            f"training split of {rows[0].images if rows else 0} images: the {arguments.source_size} px PNGs, and "
            f"prepared at {arguments.prepared_size} px; later epochs read from {source}; {load_text()}"
        )
        print_table(
            rows,
            f"both paths, NIH-layout radiographs, batch {arguments.batch_size}, {arguments.epochs} later epoch(s) "
            f"from {source}",
        )
        print()
        feed_lines(rows, arguments)


if __name__ == "__main__":
    main()
