"""Benchmarks input pipelines: writes N generated PNGs to a temp dir, prints images/s of ours vs a naive generator.

Compares train.data (files_split + make_batches: parallel decode, cache, shuffle, augment, batch,
prefetch) with the pattern common in MLflow + TensorFlow templates (tf.data.Dataset.from_generator
over a Python generator that opens each file with PIL and resizes it in Python, then batch), and
measures small_cnn training throughput on CPU. Usage:

    .venv/bin/python bench/pipeline.py --files 2000 --image-size 128 --batch-size 64
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


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="number of PNG files to generate")
    parser.add_argument("--source-size", type=int, default=256, help="side of the generated PNGs in pixels")
    parser.add_argument("--image-size", type=int, default=128, help="side the pipelines resize to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=20, help="timed small_cnn training steps (0 skips)")
    parser.add_argument("--workdir", default="", help="folder for the PNGs (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the whole-training comparison row")
    return parser.parse_args(argv)


def write_pngs(folder: Path, count: int, size: int, seed: int) -> tuple[list[Path], np.ndarray]:
    """Write `count` synthetic cell PNGs of size x size; return their paths and binary labels."""
    from PIL import Image

    from train.data.synthetic import render_cell

    folder.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).random(count) < 0.5

    def write(index: int) -> Path:
        path = folder / f"cell_{index:05d}.png"
        if not path.exists():
            generator = np.random.default_rng([seed, index])
            Image.fromarray(render_cell(generator, size, {"dots": bool(labels[index])})).save(path)
        return path

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as executor:
        paths = list(executor.map(write, range(count)))
    return paths, labels.astype(np.float32)[:, None]


def time_epoch(dataset) -> tuple[float, int]:
    """Seconds to pull every batch of `dataset`, and the number of images seen."""
    start = time.perf_counter()
    images = 0
    for batch_images, _ in dataset:
        images += int(batch_images.shape[0])
    return time.perf_counter() - start, images


def naive_pipeline(paths: list[Path], labels: np.ndarray, image_size: int, batch_size: int):
    """The template pattern: a Python generator with PIL, one example at a time, then batch."""
    import tensorflow as tf
    from PIL import Image

    def generate():
        for path, label in zip(paths, labels, strict=True):
            with Image.open(path) as image:
                resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            yield np.asarray(resized, dtype=np.float32), label

    dataset = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec([image_size, image_size, 3], tf.float32),
            tf.TensorSpec([1], tf.float32),
        ),
    )
    return dataset.batch(batch_size)


def small_cnn(image_size: int):
    """models.build_model('small_cnn') when the models package is importable, else an equivalent tiny CNN."""
    try:
        from models import build_model

        return build_model("small_cnn", (image_size, image_size, 3), 1, task="binary", weights=None), "models.small_cnn"
    except ImportError as error:
        import keras

        print(f"note: models.build_model unavailable ({error}); using an inline tiny CNN")
        inputs = keras.Input((image_size, image_size, 3))
        x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
        for filters in (32, 64, 128):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
        return keras.Model(inputs, outputs), "inline tiny CNN"


def training_throughput(dataset, image_size: int, batch_size: int, steps: int) -> tuple[float, str]:
    """Images/s of small_cnn fit on the cached pipeline, after one untimed warm-up epoch."""
    import keras

    model, label = small_cnn(image_size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    repeated = dataset.repeat()
    model.fit(repeated, steps_per_epoch=min(steps, 5), epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(repeated, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * batch_size / (time.perf_counter() - start), label


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as temporary:
        folder = Path(arguments.workdir) if arguments.workdir else Path(temporary)
        start = time.perf_counter()
        paths, labels = write_pngs(folder, arguments.files, arguments.source_size, arguments.seed)
        megabytes = sum(path.stat().st_size for path in paths) / 1e6
        print(
            f"wrote {len(paths)} PNGs of {arguments.source_size}x{arguments.source_size} ({megabytes:.0f} MB) "
            f"in {time.perf_counter() - start:.1f}s"
        )
        # Read every file once so both pipelines start from the OS page cache.
        for path in paths:
            path.read_bytes()

        import tensorflow as tf

        from train.data.augment import POLICIES
        from train.data.pipeline import files_split, make_batches

        split = files_split(paths, labels, arguments.image_size)
        ours = make_batches(
            split, batch_size=arguments.batch_size, training=True, augmentation=POLICIES["cells"], seed=arguments.seed
        )
        ours_first, count_first = time_epoch(ours)
        ours_second, count_second = time_epoch(ours)
        naive = naive_pipeline(paths, labels, arguments.image_size, arguments.batch_size)
        naive_time, count_naive = time_epoch(naive)
        if not count_first == count_second == count_naive == len(paths):
            raise ValueError(f"pipelines saw {count_first}, {count_second}, {count_naive} images, not {len(paths)}")

        naive_rate = count_naive / naive_time
        # A training run reads the data once per epoch: ours decodes in epoch 1 and reads the cache
        # afterwards, the naive pipeline decodes every epoch.
        epochs = max(1, arguments.epochs)
        ours_run_rate = count_first * epochs / (ours_first + (epochs - 1) * ours_second)
        rows = [
            ("naive from_generator + PIL (every epoch)", naive_rate),
            ("train.data epoch 1 (decode + cache)", count_first / ours_first),
            ("train.data epoch 2+ (from cache)", count_second / ours_second),
            (f"train.data over a {epochs}-epoch training", ours_run_rate),
        ]
        print()
        print(
            f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
            f"TensorFlow {tf.__version__}; {len(paths)} files, image_size {arguments.image_size}, "
            f"batch_size {arguments.batch_size}"
        )
        print(f"{'pipeline':<44}{'images/s':>12}{'vs naive':>10}")
        for name, rate in rows:
            print(f"{name:<44}{rate:>12.0f}{rate / naive_rate:>9.1f}x")
        if arguments.train_steps:
            rate, model_label = training_throughput(
                ours, arguments.image_size, arguments.batch_size, arguments.train_steps
            )
            print(f"{'small_cnn training on CPU (' + model_label + ')':<44}{rate:>12.0f}")


if __name__ == "__main__":
    main()
