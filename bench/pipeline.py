"""Benchmarks input pipelines: writes N generated PNGs (and a prepared folder of them) to a temp dir, prints images/s of ours vs a naive generator, against another revision, and the table of both paths.

Compares train.data (files_split + make_batches: parallel decode, cache, shuffle, augment, batch,
prefetch) with the pattern common in MLflow + TensorFlow templates (tf.data.Dataset.from_generator
over a Python generator that opens each file with PIL and resizes it in Python, then batch), and
measures small_cnn training throughput on CPU. `--against DIR` times the same files_split +
make_batches epochs of this checkout and of another one (a worktree of an older revision) in fresh
processes, in turns (this, other, other, this, ... `--rounds` each), so load from other work falls on
both alike. Last, the table of bench/epochs.py: the image files and a prepared folder of them, at each
of `--table-sizes`, with cells augmentation and without, per core. Usage:

    .venv/bin/python bench/pipeline.py --files 2000 --image-size 128 --batch-size 64
    git worktree add /tmp/old ad9b769 && ln -s "$PWD/.venv" /tmp/old/.venv
    .venv/bin/python bench/pipeline.py --train-steps 0 --against /tmp/old --rounds 2 --table-sizes ""
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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
    parser.add_argument(
        "--against",
        default="",
        help="other checkouts to time beside this one (worktrees of other revisions), comma-separated",
    )
    parser.add_argument("--rounds", type=int, default=2, help="--against: timings of each checkout, in turns")
    parser.add_argument("--table-sizes", default="128,224", help="training sizes of the table of both paths ('' skips)")
    parser.add_argument("--table-epochs", type=int, default=2, help="table: epochs timed after the first")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive pipeline and its rows")
    parser.add_argument("--quick", action="store_true", help="a short run: 300 files, 1 training step, one round")
    parser.add_argument("--measure-checkout", default="", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.files, arguments.train_steps, arguments.rounds = min(arguments.files, 300), 1, 1
        arguments.table_epochs = 1
    return arguments


def write_pngs(folder: Path, count: int, size: int, seed: int) -> tuple[list[Path], np.ndarray]:
    """Write `count` synthetic cell PNGs of size x size, a class folder each (an imagefolder layout); return their
    paths and binary labels."""
    from PIL import Image

    from train.data.synthetic import render_cell

    folder.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(seed).random(count) < 0.5

    def write(index: int) -> Path:
        path = folder / ("dots" if labels[index] else "plain") / f"cell_{index:05d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
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


def ours_epochs(paths: list[Path], labels: np.ndarray, arguments: argparse.Namespace) -> dict:
    """Seconds of epoch 1 and of epoch 2 of train.data over the files (cells augmentation), in this process."""
    from train.data.augment import POLICIES
    from train.data.pipeline import files_split, make_batches

    split = files_split(paths, labels, arguments.image_size)
    ours = make_batches(
        split, batch_size=arguments.batch_size, training=True, augmentation=POLICIES["cells"], seed=arguments.seed
    )
    cpu_started = time.process_time()
    first, count_first = time_epoch(ours)
    cpu_first = time.process_time() - cpu_started
    second, count_second = time_epoch(ours)
    cpu_second = time.process_time() - cpu_started - cpu_first
    if not count_first == count_second == len(paths):
        raise ValueError(f"train.data saw {count_first} and {count_second} images, not {len(paths)}")
    timed = {"first": first, "second": second, "cpu_first": cpu_first, "cpu_second": cpu_second}
    return {**timed, "images": len(paths), "pipeline": ours}


def measure_checkout(arguments: argparse.Namespace) -> None:
    """--measure-checkout DIR (a child of --against): ours_epochs with DIR's train package; one JSON line."""
    sys.path.insert(0, str(Path(arguments.measure_checkout).resolve()))
    listing = json.loads((Path(arguments.workdir) / "files.json").read_text())
    labels = np.asarray(listing["labels"], dtype=np.float32)[:, None]
    timed = ours_epochs([Path(path) for path in listing["paths"]], labels, arguments)
    print(json.dumps({key: value for key, value in timed.items() if key != "pipeline"}), flush=True)


def revision(root: Path) -> str:
    """The checkout's short commit, with `+` when its tracked files differ from it."""
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return (commit.stdout.strip() or "?") + ("+" if changed.stdout.strip() else "")


def side_by_side(arguments: argparse.Namespace, workdir: Path, paths: list[Path], labels: np.ndarray) -> None:
    """Time this checkout and --against in fresh processes, in turns; print epoch 1, epoch 2 and the training row."""
    (workdir / "files.json").write_text(
        json.dumps({"paths": [str(path) for path in paths], "labels": labels[:, 0].tolist()})
    )
    others = [Path(path).resolve() for path in arguments.against.split(",") if path.strip()]
    checkouts = [("this", REPO_ROOT)] + [(path.name, path) for path in others]
    columns = []
    for round_index in range(max(1, arguments.rounds)):
        for name, root in checkouts if round_index % 2 == 0 else checkouts[::-1]:
            flags = ["--files", str(arguments.files), "--image-size", str(arguments.image_size)]
            flags += ["--batch-size", str(arguments.batch_size), "--seed", str(arguments.seed)]
            command = [sys.executable, __file__, "--measure-checkout", str(root), "--workdir", str(workdir), *flags]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"timing {root} failed:\n{result.stderr[-3000:]}")
            timed = json.loads(result.stdout.strip().splitlines()[-1])
            columns.append((f"{name} ({revision(root)})", timed, os.getloadavg()[0]))
    epochs = max(1, arguments.epochs)
    print(f"\nside by side, {arguments.files} files at {arguments.image_size} px, cells augmentation, in turns:")
    print("| | " + " | ".join(label for label, _, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    rows = [
        ("epoch 1 (decode + cache), images/s", lambda t: t["images"] / t["first"]),
        ("epochs 2+ (from cache), images/s", lambda t: t["images"] / t["second"]),
        (
            f"over a {epochs}-epoch training, images/s",
            lambda t: t["images"] * epochs / (t["first"] + (epochs - 1) * t["second"]),
        ),
        ("epoch 1, images per CPU second", lambda t: t["images"] / t["cpu_first"]),
        ("epochs 2+, images per CPU second", lambda t: t["images"] / t["cpu_second"]),
    ]
    for label, rate in rows:
        print(f"| {label} | " + " | ".join(f"{rate(timed):,.0f}" for _, timed, _ in columns) + " |")
    print("| load average (1 min) after | " + " | ".join(f"{load:.2f}" for _, _, load in columns) + " |")


def naive_against_ours(arguments: argparse.Namespace, paths: list[Path], labels: np.ndarray):
    """The naive-generator comparison rows; returns our pipeline for the training row."""
    import tensorflow as tf

    timed = ours_epochs(paths, labels, arguments)
    naive_time, count_naive = time_epoch(naive_pipeline(paths, labels, arguments.image_size, arguments.batch_size))
    if count_naive != len(paths):
        raise ValueError(f"the naive pipeline saw {count_naive} images, not {len(paths)}")
    naive_rate = count_naive / naive_time
    # A training run reads the data once per epoch: ours decodes in epoch 1 and reads the cache
    # afterwards, the naive pipeline decodes every epoch.
    epochs = max(1, arguments.epochs)
    first, second = timed["first"], timed["second"]
    rows = [
        ("naive from_generator + PIL (every epoch)", naive_rate),
        ("train.data epoch 1 (decode + cache)", len(paths) / first),
        ("train.data epoch 2+ (from cache)", len(paths) / second),
        (f"train.data over a {epochs}-epoch training", len(paths) * epochs / (first + (epochs - 1) * second)),
    ]
    print()
    print(
        f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"TensorFlow {tf.__version__}; {len(paths)} files, image_size {arguments.image_size}, "
        f"batch_size {arguments.batch_size}; {load_text()}"
    )
    print(f"{'pipeline':<44}{'images/s':>12}{'vs naive':>10}")
    for name, rate in rows:
        print(f"{name:<44}{rate:>12.0f}{rate / naive_rate:>9.1f}x")
    return timed["pipeline"]


def prepared_copy(folder: Path, output: Path, arguments: argparse.Namespace) -> Path:
    """`python -m train prepare` of the image files at their own size (a no-op when `output` holds it already)."""
    from train.data.imagefolder import NAME as IMAGEFOLDER
    from train.data.prepare import prepare
    from train.settings import PrepareSettings

    settings = {"dataset": IMAGEFOLDER, "data_dir": str(folder), "output_dir": str(output)}
    prepare(PrepareSettings.from_dict({**settings, "image_size": arguments.source_size, "seed": arguments.seed}))
    return output


def both_paths_table(arguments: argparse.Namespace, workdir: Path, folder: Path) -> None:
    """bench/epochs.py's table for the image files and a prepared folder of them, cells augmentation and none."""
    from bench.epochs import IMAGE_FILES, PREPARED, measure_table, print_table
    from train.data.imagefolder import NAME as IMAGEFOLDER

    prepared = prepared_copy(folder, workdir / f"prepared-{arguments.source_size}", arguments)
    sources = [(IMAGE_FILES, IMAGEFOLDER, folder), (PREPARED, IMAGEFOLDER, prepared)]
    table = argparse.Namespace(**{**vars(arguments), "epochs": arguments.table_epochs})
    rows = measure_table(sources, "cells", table)
    print_table(
        rows,
        f"both paths: {arguments.files} cell PNGs of {arguments.source_size} px (training split), prepared as png "
        f"at {arguments.source_size} px; batch {arguments.batch_size}, {arguments.table_epochs} later epoch(s), "
        "from the in-memory cache",
    )


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if arguments.measure_checkout:
        return measure_checkout(arguments)
    with tempfile.TemporaryDirectory(prefix="medimg-bench-") as temporary:
        workdir = Path(arguments.workdir) if arguments.workdir else Path(temporary)
        folder = workdir / "files"
        start = time.perf_counter()
        paths, labels = write_pngs(folder, arguments.files, arguments.source_size, arguments.seed)
        megabytes = sum(path.stat().st_size for path in paths) / 1e6
        print(
            f"wrote {len(paths)} PNGs of {arguments.source_size}x{arguments.source_size} ({megabytes:.0f} MB) "
            f"in {time.perf_counter() - start:.1f}s; {load_text()}"
        )
        # Read every file once so every pipeline starts from the OS page cache.
        for path in paths:
            path.read_bytes()
        if arguments.against:
            side_by_side(arguments, workdir, paths, labels)
        if not arguments.skip_naive:
            ours = naive_against_ours(arguments, paths, labels)
            if arguments.train_steps:
                rate, model_label = training_throughput(
                    ours, arguments.image_size, arguments.batch_size, arguments.train_steps
                )
                print(f"{'small_cnn training on CPU (' + model_label + ')':<44}{rate:>12.0f}")
        if arguments.table_sizes.strip():
            both_paths_table(arguments, workdir, folder)


if __name__ == "__main__":
    main()
