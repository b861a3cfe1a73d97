"""Benchmarks the training input pipeline on prepared folders: writes NIH-layout PNGs and prepared folders, prints images/s.

For each `--encodings` choice it prepares the same generated radiographs (bench/prepare.py's NIH
layout) with `python -m train prepare`'s code, then builds the training split's pipeline exactly as
`main` does (train.job.stages.load_data and batches: shuffle, radiograph augmentation, batching,
prefetch) at `--image-size`, iterates it for one untimed epoch and `--epochs` timed ones, and prints

    feed at 224 px with augmentation: N images/s on C cores, M per core
    feed at 224 px with augment=none: N images/s on C cores, M per core

By default the split is read from disk and decoded every epoch (MEDIMG_CACHE_BUDGET_GB=0), as for a
dataset larger than the cache budget; `--cached` measures epochs served from the in-memory cache
instead. Timings depend on what else the machine runs: the load average is printed beside them, and
so are images per CPU second of this process, which other work moves less. Last, how many such cores
keep a GPU busy (`--gpu-images-per-second`, from bench/gpu.py on that GPU). Usage:

    .venv/bin/python bench/feed.py --images 1000 --prepared-size 256 --image-size 224 --encodings png,raw,jpeg
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
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
    parser.add_argument("--image-size", type=int, default=224, help="training image_size")
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
    return parser.parse_args(argv)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


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


def epoch_rate(folder: Path, arguments: argparse.Namespace, augment: str) -> tuple[float, float, int]:
    """Images/s over the timed epochs of the training split's pipeline as `main` builds it, images per CPU second
    of this process over the same epochs (less sensitive to other work on the machine), and the split's count."""
    from train.data.chestxray14 import NAME as CHESTXRAY14
    from train.job.stages import batches, load_data
    from train.settings import MainSettings

    settings = MainSettings.from_dict(
        {
            "dataset": CHESTXRAY14,
            "data_dir": str(folder),
            "image_size": arguments.image_size,
            "batch_size": arguments.batch_size,
            "augment": augment,
            "seed": arguments.seed,
        }
    )
    data = load_data(settings)
    dataset = batches(data.splits["train"], settings, training=True)
    images = 0
    for epoch in range(arguments.epochs + 1):
        if epoch == 1:
            started, cpu_started, images = time.perf_counter(), time.process_time(), 0
        for batch, _ in dataset:
            images += int(batch.shape[0])
    cpu_seconds = time.process_time() - cpu_started
    return images / (time.perf_counter() - started), images / cpu_seconds, data.splits["train"].count


def gpu_rate(arguments: argparse.Namespace) -> float:
    """Images/s the GPU to feed trains at: the given figure, or 3,000 at 224 px scaled by pixel count."""
    if arguments.gpu_images_per_second:
        return arguments.gpu_images_per_second
    return GPU_IMAGES_PER_SECOND_AT_224 * (224 / arguments.image_size) ** 2


def feed_line(image_size: int, label: str, rate: float, count: int) -> str:
    return f"feed at {image_size} px with {label}: {rate:.0f} images/s on {count} cores, {rate / count:.0f} per core"


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not arguments.cached:
        os.environ["MEDIMG_CACHE_BUDGET_GB"] = "0"
    from bench.prepare import folder_megabytes, write_nih_layout

    with tempfile.TemporaryDirectory(prefix="medimg-bench-feed-") as temporary:
        workdir = Path(arguments.workdir) if arguments.workdir else Path(temporary)
        raw = workdir / "nih"
        write_nih_layout(raw, arguments.images, arguments.source_size, arguments.seed)
        import tensorflow as tf

        results = []
        for encoding in [name.strip() for name in arguments.encodings.split(",") if name.strip()]:
            folder = prepared_folder(
                raw, workdir / f"prepared-{arguments.prepared_size}-{encoding}", arguments, encoding
            )
            before = load_text()
            augmented = epoch_rate(folder, arguments, "radiograph")
            plain = epoch_rate(folder, arguments, "none")
            results.append((encoding, folder_megabytes(folder, "*.tfrecord"), augmented, plain, before))

        print()
        source = "the in-memory cache" if arguments.cached else "disk, decoded every epoch"
        print(
            f"host: {platform.processor() or platform.machine()}, {cores()} cores, TensorFlow {tf.__version__}; "
            f"training split of {results[0][2][2] if results else 0} images prepared at {arguments.prepared_size} px, "
            f"read from {source}, batch {arguments.batch_size}, {arguments.epochs} timed epoch(s)"
        )
        for encoding, megabytes, augmented, plain, before in results:
            print(f"image_encoding={encoding}: {megabytes:.1f} MB of records; {before} before, {load_text()} after")
            for label, (rate, per_cpu_second, _) in (("augmentation", augmented), ("augment=none", plain)):
                line = feed_line(arguments.image_size, label, rate, cores())
                print(f"  {line} ({per_cpu_second:.0f} images per CPU second of this process)")
            gpu = gpu_rate(arguments)
            print(
                f"  a GPU training at {gpu:.0f} images/s needs about {gpu / (augmented[0] / cores()):.1f} such cores "
                f"with augmentation ({gpu / augmented[1]:.1f} at this process's images per CPU second)"
            )


if __name__ == "__main__":
    main()
