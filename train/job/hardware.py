"""Reads the visible accelerators and TensorFlow's build; writes the Keras precision policy, GPU memory growth and a distribution strategy.

The training loop calls `configure` once before it builds anything:

    setup = configure(precision="auto", jit_compile=False)
    with setup.strategy.scope():
        model = ...
        model.compile(..., jit_compile=setup.jit_compile)

`batch_size` stays the global batch: under `MirroredStrategy` each of the N
replicas gets `batch_size / N` examples per step. TensorFlow is imported inside
the functions so that `python -m train --help` stays fast.
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorflow as tf

PRECISIONS = ("auto", "float32", "mixed_float16")
# Tensor Cores, which make float16 math fast, arrived with Volta (compute capability 7.0).
MIXED_PRECISION_MIN_COMPUTE_CAPABILITY = (7, 0)
IMAGE_TAG_VARIABLE = "MEDIMG_IMAGE_TAG"
NOT_AVAILABLE = "none"


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU: its marketing name and CUDA compute capability (None when TensorFlow cannot tell)."""

    name: str
    compute_capability: tuple[int, int] | None


@dataclass
class HardwareSetup:
    """What `configure` decided: the training loop builds and compiles the model from these fields."""

    gpus: list[GpuInfo]
    precision: str
    strategy: Any
    jit_compile: bool
    log_system_metrics: bool
    tags: dict[str, str] = field(default_factory=dict)


def detect_gpus() -> list[GpuInfo]:
    """List the GPUs TensorFlow can see (after CUDA_VISIBLE_DEVICES), with name and compute capability."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (RuntimeError, ValueError):
            # Details are a convenience for tags and precision; a GPU without them is still usable.
            details = {}
        capability = details.get("compute_capability")
        gpus.append(
            GpuInfo(
                name=str(details.get("device_name") or device.name),
                compute_capability=(int(capability[0]), int(capability[1])) if capability else None,
            )
        )
    return gpus


def resolve_precision(requested: str, gpus: list[GpuInfo]) -> str:
    """Turn the `precision` parameter into a Keras dtype policy name: "float32" or "mixed_float16"."""
    _check_precision(requested)
    capable = bool(gpus) and all(
        gpu.compute_capability is not None and gpu.compute_capability >= MIXED_PRECISION_MIN_COMPUTE_CAPABILITY
        for gpu in gpus
    )
    if requested == "auto":
        return "mixed_float16" if capable else "float32"
    if requested == "mixed_float16" and not capable:
        where = "on CPU" if not gpus else "on GPUs below compute capability 7.0 (no Tensor Cores)"
        warnings.warn(
            f"precision=mixed_float16 {where} runs slower than float32; use precision=auto or float32",
            stacklevel=2,
        )
    return requested


def select_strategy(gpus: list[GpuInfo]) -> tf.distribute.Strategy:
    """MirroredStrategy over all visible GPUs when there are several, else TensorFlow's default strategy."""
    import tensorflow as tf

    if len(gpus) > 1:
        # Synchronous data parallelism: every replica holds a copy of the model and
        # gradients are all-reduced (NCCL on Linux) after each global batch.
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def enable_memory_growth() -> None:
    """Let TensorFlow allocate GPU memory as needed instead of reserving all of it at start-up."""
    import tensorflow as tf

    for device in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError as error:
            # The runtime was initialised earlier in this process (a notebook, a test);
            # training still works, it just holds the memory TensorFlow reserved.
            warnings.warn(f"could not enable memory growth on {device.name}: {error}", stacklevel=2)


def hardware_tags(gpus: list[GpuInfo]) -> dict[str, str]:
    """Run tags that say where a run trained: device, GPUs, CUDA/cuDNN of the TensorFlow build, CPUs, image."""
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    capabilities = [
        f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}" if gpu.compute_capability else "unknown"
        for gpu in gpus
    ]
    tags = {
        "hardware.device": "gpu" if gpus else "cpu",
        "hardware.gpu_count": str(len(gpus)),
        "hardware.gpu_names": ", ".join(gpu.name for gpu in gpus) or NOT_AVAILABLE,
        "hardware.gpu_compute_capabilities": ", ".join(capabilities) or NOT_AVAILABLE,
        "hardware.cuda_version": str(build.get("cuda_version") or NOT_AVAILABLE),
        "hardware.cudnn_version": str(build.get("cudnn_version") or NOT_AVAILABLE),
        "hardware.cpu_count": str(_usable_cpu_count()),
        "hardware.image_tag": os.environ.get(IMAGE_TAG_VARIABLE) or NOT_AVAILABLE,
        "hardware.platform": platform.platform(),
    }
    if gpus:
        driver = _nvidia_driver_version()
        if driver:
            tags["hardware.nvidia_driver_version"] = driver
    return tags


def configure(precision: str = "auto", jit_compile: bool = False) -> HardwareSetup:
    """Detect GPUs, turn on memory growth, set the Keras precision policy and build the strategy."""
    # Validate before touching TensorFlow so that a typo fails in one line.
    _check_precision(precision)
    import keras

    # Memory growth must be set before anything initialises the GPUs.
    enable_memory_growth()
    gpus = detect_gpus()
    warn_about_hidden_gpus(gpus)
    resolved = resolve_precision(precision, gpus)
    keras.mixed_precision.set_global_policy(resolved)
    strategy = select_strategy(gpus)
    tags = hardware_tags(gpus)
    tags.update(
        {
            "hardware.precision": resolved,
            "hardware.strategy": type(strategy).__name__,
            "hardware.replicas": str(strategy.num_replicas_in_sync),
        }
    )
    return HardwareSetup(
        gpus=gpus,
        precision=resolved,
        strategy=strategy,
        jit_compile=bool(jit_compile),
        # MLflow samples GPU utilisation and memory through NVML (nvidia-ml-py) when this is on.
        log_system_metrics=bool(gpus),
        tags=tags,
    )


def driver_gpus() -> list[str]:
    """GPU indices the NVIDIA driver lists (`nvidia-smi -L`), whatever TensorFlow can use; [] without a driver."""
    import subprocess

    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    # Lines look like "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)"; MIG lines are indented and skipped.
    return [
        line[4 : line.index(":")].strip() for line in listing.splitlines() if line.startswith("GPU ") and ":" in line
    ]


def warn_about_hidden_gpus(gpus: list[GpuInfo]) -> None:
    """Warn when the driver shows GPUs that TensorFlow does not see: the CPU wheel, or CUDA_VISIBLE_DEVICES hiding them."""
    if gpus:
        return
    listed = driver_gpus()
    if not listed:
        return
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None:
        reason = f"CUDA_VISIBLE_DEVICES={hidden!r} hides them"
    else:
        from importlib.metadata import version

        reason = (
            f"this TensorFlow has no CUDA libraries: pip install 'tensorflow[and-cuda]=={version('tensorflow')}' "
            "or use the GPU image (docs/GPU.md)"
        )
    warnings.warn(
        f"the NVIDIA driver lists {len(listed)} GPU(s) but TensorFlow sees none, so training runs on the CPU; {reason}",
        stacklevel=2,
    )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def _usable_cpu_count() -> int:
    """CPUs this process may run on, which in a container with a CPU set is fewer than the host has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _nvidia_driver_version() -> str | None:
    """The NVIDIA driver version through NVML, or None where NVML or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
    return version.decode() if isinstance(version, bytes) else str(version)
