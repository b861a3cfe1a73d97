"""Times training steps and batched inference of each model family on the backend KERAS_BACKEND names; reads nothing, prints a table and writes it as JSON.

    KERAS_BACKEND=tensorflow python bench/gpu.py                      # every family, both precisions, XLA off/on
    KERAS_BACKEND=jax python bench/gpu.py --families resnet50         # a host with only JAX
    python bench/gpu.py --steps 3 --warmup 1 --families small_cnn     # a smoke run on a CPU

Each family is built by `models.build_model` exactly as `python -m train main` builds it for ChestX-ray14
(224 px, 14 sigmoid outputs, imbalance-aware output bias, dropout 0.3, no ImageNet download) and compiled
with the training loss and optimizer (`train.job.objective`). Inputs are synthetic in-memory arrays, so no
input pipeline or download is involved: the numbers are the device's ceiling, not what a run reaches when
its input pipeline is slower (bench/feed.py measures that side). Under the JAX backend nothing imports
TensorFlow. mixed_float16 is the Keras global policy training sets on GPUs of compute capability >= 7.0.
XLA: TensorFlow runs it with and without `jit_compile`; JAX always compiles with XLA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FAMILIES = ("small_cnn", "vgg16", "resnet50", "densenet121")
PRECISIONS = ("mixed_float16", "float32")
# ChestX-ray14: 14 findings, multi-label, each present in a few percent of images.
OUTPUTS = 14
PREVALENCE = 0.05


@dataclass
class Row:
    family: str
    backend: str
    precision: str
    xla: bool
    batch: int
    train_images_per_s: float
    inference_images_per_s: float
    peak_device_memory_mb: float | None
    device: str


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: all four)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="mixed_float16, float32 or both")
    parser.add_argument("--xla", default="both", choices=["both", "on", "off"], help="TensorFlow only (default: both)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included")
    parser.add_argument("--output", default="gpu-benchmark.json", help="where the JSON table goes")
    arguments = parser.parse_args(argv)
    arguments.families = [name.strip() for name in arguments.families.split(",") if name.strip()]
    arguments.precisions = [name.strip() for name in arguments.precisions.split(",") if name.strip()]
    unknown = sorted(set(arguments.families) - set(FAMILIES)) + sorted(set(arguments.precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"unknown families or precisions: {', '.join(unknown)}")
    if arguments.steps < 1 or arguments.warmup < 1 or arguments.batch_size < 1:
        parser.error("--steps, --warmup and --batch-size must be at least 1")
    return arguments


def xla_choices(backend: str, requested: str) -> list[bool]:
    if backend == "jax":
        return [True]
    return {"both": [False, True], "on": [True], "off": [False]}[requested]


def device_name(backend: str) -> str:
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{getattr(device, 'device_kind', device.platform)}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu:{details.get('device_name', gpus[0].name)}"
    return f"cpu:{platform.processor() or platform.machine()}"


def reset_peak_memory(backend: str) -> None:
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory_mb(backend: str) -> float | None:
    """Peak memory of the first accelerator since the last reset (TensorFlow) or since start (JAX); None on a CPU."""
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else peak / 2**20
    return None


def build_compiled(family: str, image_size: int, batch: int, precision: str, xla: bool):
    """The model as training builds and compiles it, and one synthetic batch (images 0-255, sparse findings)."""
    import keras
    import numpy as np

    from models import build_model
    from train.job.objective import make_optimizer, weighted_binary_crossentropy

    keras.config.set_dtype_policy(precision)
    rate = PREVALENCE
    positive_weight = np.full(OUTPUTS, (1.0 - rate) / rate, dtype=np.float32)
    model = build_model(
        family,
        (image_size, image_size, 3),
        OUTPUTS,
        task="multilabel",
        dropout=0.3,
        weights=None,
        trainable_layers=-1,
        output_bias=[float(np.log(rate * positive_weight[0] / (1.0 - rate)))] * OUTPUTS,
    )
    model.compile(
        optimizer=make_optimizer("adam", 1e-3), loss=weighted_binary_crossentropy(positive_weight), jit_compile=xla
    )
    generator = np.random.default_rng(0)
    images = generator.uniform(0, 255, (batch, image_size, image_size, 3)).astype("float32")
    labels = (generator.random((batch, OUTPUTS)) < rate).astype("float32")
    return model, images, labels


def images_per_second(step, batch: int, steps: int, warmup: int) -> float:
    """Run `step` warmup times untimed, then `steps` times timed; every step returns host values (a sync point)."""
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def measure(family: str, backend: str, precision: str, xla: bool, arguments: argparse.Namespace, device: str) -> Row:
    import keras

    reset_peak_memory(backend)
    model, images, labels = build_compiled(family, arguments.image_size, arguments.batch_size, precision, xla)
    batch = arguments.batch_size
    train = images_per_second(lambda: model.train_on_batch(images, labels), batch, arguments.steps, arguments.warmup)
    infer = images_per_second(lambda: model.predict_on_batch(images), batch, arguments.steps, arguments.warmup)
    peak = peak_memory_mb(backend)
    keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    return Row(family, backend, precision, xla, batch, train, infer, peak, device)


def format_table(rows: list[Row]) -> str:
    header = ("family", "backend", "precision", "XLA", "batch", "train img/s", "infer img/s", "peak MB")
    lines = [header]
    for row in rows:
        peak = "n/a" if row.peak_device_memory_mb is None else f"{row.peak_device_memory_mb:,.0f}"
        lines.append(
            (
                row.family,
                row.backend,
                row.precision,
                "on" if row.xla else "off",
                str(row.batch),
                f"{row.train_images_per_s:,.1f}",
                f"{row.inference_images_per_s:,.1f}",
                peak,
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    backend = keras.backend.backend()
    device = device_name(backend)
    rows = []
    for family in arguments.families:
        for precision in arguments.precisions:
            for xla in xla_choices(backend, arguments.xla):
                rows.append(measure(family, backend, precision, xla, arguments, device))
                print(f"measured {family} {precision} xla={'on' if xla else 'off'}", file=sys.stderr, flush=True)
    print(f"device {device}, Keras {keras.__version__}, backend {backend}")
    print(format_table(rows))
    report = {"device": device, "keras": keras.__version__, "backend": backend, "rows": [asdict(row) for row in rows]}
    Path(arguments.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
