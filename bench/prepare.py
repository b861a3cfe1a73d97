"""Benchmarks `prepare`: writes N gray 1024x1024 PNGs in an NIH layout to a temp dir, prints images/s raw vs prepared.

Measures, in one run: (1) direct training input, each PNG read, decoded and resized by
train.data.pipeline.files_split (serve.preprocess.decode_and_resize, parallel tf.data map);
(2) the same images read back from the prepared TFRecords (train.data.prepared, resized from the
prepared size to the training size); their ratio; and (3) `prepare` itself: wall-clock images/s
with all worker processes (start-up included) and images/s per core (worker time only). Usage:

    .venv/bin/python bench/prepare.py --images 200 --prepared-size 256 --image-size 224
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
FINDINGS = ("Atelectasis", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="number of PNGs to generate")
    parser.add_argument("--source-size", type=int, default=1024, help="side of the generated PNGs (NIH: 1024)")
    parser.add_argument("--prepared-size", type=int, default=256, help="image_size given to prepare")
    parser.add_argument("--image-size", type=int, default=224, help="training image_size both readers produce")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=25, help="images per shard (small, so every core gets one)")
    parser.add_argument("--workers", type=int, default=0, help="prepare worker processes, 0 = as prepare chooses")
    parser.add_argument("--workdir", default="", help="folder for the PNGs and records (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def radiograph(generator: np.random.Generator, size: int) -> np.ndarray:
    """A gray uint8 image with chest-like structure (two dark lung fields, a bright spine, ribs) plus noise."""
    coordinates = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    rows, columns = np.meshgrid(coordinates, coordinates, indexing="ij")
    image = 170.0 - 40.0 * rows**2 + generator.uniform(-10, 10)
    for side in (-1.0, 1.0):
        center = side * generator.uniform(0.35, 0.45)
        lung = ((columns - center) / 0.28) ** 2 + ((rows + 0.05) / 0.6) ** 2 < 1.0
        image = np.where(lung, image - 80.0, image)
    image += 40.0 * np.exp(-((columns / 0.06) ** 2))
    image += 12.0 * np.sin(rows * generator.uniform(25, 35)) * (np.abs(columns) > 0.1)
    image += generator.normal(0.0, 6.0, size=(size, size)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_nih_layout(root: Path, count: int, size: int, seed: int) -> list[Path]:
    """NIH-style folder: Data_Entry_2017_v2020.csv, split lists, images_001/images/*.png (two images per patient)."""
    from PIL import Image

    folder = root / "images_001" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{index // 2 + 1:08d}_{index % 2:03d}.png" for index in range(count)]

    def write(index: int) -> Path:
        path = folder / names[index]
        if not path.exists():
            Image.fromarray(radiograph(np.random.default_rng([seed, index]), size), mode="L").save(path)
        return path

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor:
        paths = list(executor.map(write, range(count)))
    generator = np.random.default_rng(seed)
    rows, train_val, test = [], [], []
    for index, name in enumerate(names):
        patient = index // 2 + 1
        present = [finding for finding in FINDINGS if generator.random() < 0.3]
        findings = "|".join(present) or "No Finding"
        rows.append(f"{name},{findings},{index % 2},{patient},50,M,PA,{size},{size},0.143,0.143")
        # Every fifth patient goes to the test list, as in the official 80/20 patient split.
        (test if patient % 5 == 0 else train_val).append(name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return paths


def read_rate(splits: dict, batch_size: int) -> tuple[float, int]:
    """Images/s of a pass over every split, batched; the second of two passes is timed (the first warms up)."""

    def one_pass() -> int:
        images = 0
        for split in splits.values():
            for batch, _ in split.dataset.batch(batch_size).prefetch(2):
                images += int(batch.shape[0])
        return images

    one_pass()
    started = time.perf_counter()
    images = one_pass()
    return images / (time.perf_counter() - started), images


def folder_megabytes(folder: Path, pattern: str) -> float:
    return sum(path.stat().st_size for path in folder.glob(pattern)) / 1e6


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="medimg-bench-prepare-") as temporary:
        workdir = Path(arguments.workdir) if arguments.workdir else Path(temporary)
        raw, prepared = workdir / "nih", workdir / f"prepared-{arguments.prepared_size}"
        started = time.perf_counter()
        paths = write_nih_layout(raw, arguments.images, arguments.source_size, arguments.seed)
        print(
            f"wrote {len(paths)} gray PNGs of {arguments.source_size}x{arguments.source_size} "
            f"({folder_megabytes(raw, 'images_*/images/*.png'):.0f} MB) in {time.perf_counter() - started:.1f}s"
        )

        import tensorflow as tf

        from train.data import load_dataset
        from train.data.chestxray14 import NAME as CHESTXRAY14
        from train.data.prepare import prepare
        from train.settings import PrepareSettings

        common = {"seed": arguments.seed, "validation_fraction": 0.1}
        direct = load_dataset(CHESTXRAY14, data_dir=str(raw), image_size=arguments.image_size, **common)
        direct_rate, direct_count = read_rate(direct.splits, arguments.batch_size)

        config = PrepareSettings.from_dict(
            {
                "dataset": CHESTXRAY14,
                "data_dir": str(raw),
                "output_dir": str(prepared),
                "image_size": arguments.prepared_size,
                "shard_size": arguments.shard_size,
                "workers": arguments.workers,
                **common,
            }
        )
        result = prepare(config)
        if not result.written_shards:
            print("note: the prepared folder already existed; prepare timings below are of a no-op run")
        workers = result.processes
        from_records = load_dataset(CHESTXRAY14, data_dir=str(prepared), image_size=arguments.image_size, **common)
        prepared_rate, prepared_count = read_rate(from_records.splits, arguments.batch_size)
        same_size = load_dataset(CHESTXRAY14, data_dir=str(prepared), image_size=arguments.prepared_size, **common)
        same_size_rate, _ = read_rate(same_size.splits, arguments.batch_size)
        if direct_count != prepared_count:
            raise ValueError(f"the readers saw {direct_count} and {prepared_count} images; expected the same number")

        written = result.images_written
        print()
        print(
            f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, TensorFlow "
            f"{tf.__version__}; {direct_count} images, source {arguments.source_size}px, prepared "
            f"{arguments.prepared_size}px ({folder_megabytes(prepared, '*.tfrecord'):.1f} MB), read at "
            f"{arguments.image_size}px, batch {arguments.batch_size}"
        )
        print(f"{'measurement':<58}{'images/s':>12}")
        print(f"{'direct: read + PNG decode + resize (files_split)':<58}{direct_rate:>12.1f}")
        print(f"{'prepared: read TFRecords + PNG decode + resize':<58}{prepared_rate:>12.1f}")
        print(f"{'ratio prepared / direct':<58}{prepared_rate / direct_rate:>11.1f}x")
        label = f"prepared, read at the prepared {arguments.prepared_size}px (no resize)"
        print(f"{label:<58}{same_size_rate:>12.1f}")
        print(f"{'ratio prepared (no resize) / direct':<58}{same_size_rate / direct_rate:>11.1f}x")
        print(
            f"{f'prepare, wall clock, {workers} worker process(es), start-up included':<58}"
            f"{written / result.seconds:>12.1f}"
        )
        if result.writer_seconds:
            print(f"{'prepare, per core (worker time only)':<58}{written / result.writer_seconds:>12.1f}")


if __name__ == "__main__":
    main()
