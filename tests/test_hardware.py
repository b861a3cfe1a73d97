"""Precision, strategy and run-tag decisions of train.job.hardware on faked GPU lists (the test machine has no GPU)."""

from __future__ import annotations

import os
import re
import warnings

import keras
import pytest
import tensorflow as tf

from train.job import hardware
from train.job.hardware import GpuInfo

A100 = GpuInfo("NVIDIA A100-SXM4-80GB", (8, 0))
V100 = GpuInfo("Tesla V100-SXM2-16GB", (7, 0))
P100 = GpuInfo("Tesla P100-PCIE-16GB", (6, 0))
GTX1080 = GpuInfo("NVIDIA GeForce GTX 1080", (6, 1))
UNKNOWN = GpuInfo("/physical_device:GPU:0", None)


@pytest.fixture(autouse=True)
def restore_precision_policy():
    """configure() sets Keras' global policy; put float32 back so other tests build float32 models."""
    yield
    keras.mixed_precision.set_global_policy("float32")


class RecordingMirroredStrategy:
    """Stands in for tf.distribute.MirroredStrategy, which needs real GPUs to construct."""

    created: list[tuple[tuple, dict]] = []
    num_replicas_in_sync = 2

    def __init__(self, *args, **kwargs):
        RecordingMirroredStrategy.created.append((args, kwargs))


@pytest.fixture
def fake_mirrored(monkeypatch):
    RecordingMirroredStrategy.created = []
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", RecordingMirroredStrategy)
    return RecordingMirroredStrategy


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ([], "float32"),
        ([GTX1080], "float32"),
        ([P100, P100], "float32"),
        ([V100], "mixed_float16"),
        ([A100], "mixed_float16"),
        ([A100, A100], "mixed_float16"),
        ([A100, GTX1080], "float32"),
        ([UNKNOWN], "float32"),
    ],
    ids=["cpu", "cc6.1", "two-cc6.0", "cc7.0", "cc8.0", "two-cc8.0", "mixed-list", "unknown-cc"],
)
def test_auto_precision_uses_mixed_float16_only_when_every_gpu_has_tensor_cores(gpus, expected):
    assert hardware.resolve_precision("auto", gpus) == expected


def test_explicit_float32_is_kept_on_a_capable_gpu():
    assert hardware.resolve_precision("float32", [A100]) == "float32"


def test_explicit_mixed_precision_on_cpu_is_kept_with_a_warning():
    with pytest.warns(UserWarning, match="slower than float32"):
        assert hardware.resolve_precision("mixed_float16", []) == "mixed_float16"


def test_explicit_mixed_precision_on_an_old_gpu_warns():
    with pytest.warns(UserWarning, match="below compute capability 7.0"):
        assert hardware.resolve_precision("mixed_float16", [GTX1080]) == "mixed_float16"


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "", "Float32"])
def test_unknown_precision_names_the_choices(bad):
    with pytest.raises(ValueError, match="auto, float32, mixed_float16") as error:
        hardware.resolve_precision(bad, [A100])
    assert repr(bad) in str(error.value)


def test_configure_rejects_unknown_precision_before_touching_devices(monkeypatch):
    def fail():
        raise AssertionError("devices were touched")

    monkeypatch.setattr(hardware, "detect_gpus", fail)
    monkeypatch.setattr(hardware, "enable_memory_growth", fail)
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.configure("half")


def test_two_gpus_get_a_mirrored_strategy(fake_mirrored):
    strategy = hardware.select_strategy([A100, A100])
    assert isinstance(strategy, fake_mirrored)
    assert len(fake_mirrored.created) == 1


@pytest.mark.parametrize("gpus", [[], [A100]], ids=["cpu", "one-gpu"])
def test_zero_or_one_gpu_keeps_the_default_strategy(fake_mirrored, gpus):
    strategy = hardware.select_strategy(gpus)
    assert fake_mirrored.created == []
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


class FakeDevice:
    def __init__(self, name: str):
        self.name = name
        self.device_type = "GPU"


def test_detect_gpus_reads_name_and_compute_capability(monkeypatch):
    devices = [FakeDevice("/physical_device:GPU:0"), FakeDevice("/physical_device:GPU:1")]
    details = {
        "/physical_device:GPU:0": {"device_name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)},
    }

    def get_device_details(device):
        if device.name not in details:
            raise RuntimeError("no details")
        return details[device.name]

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", get_device_details)
    assert hardware.detect_gpus() == [
        GpuInfo("NVIDIA H100 80GB HBM3", (9, 0)),
        GpuInfo("/physical_device:GPU:1", None),
    ]


def test_detect_gpus_finds_none_on_this_cpu_machine():
    assert hardware.detect_gpus() == []


def test_memory_growth_is_enabled_on_every_gpu(monkeypatch):
    devices = [FakeDevice("/physical_device:GPU:0"), FakeDevice("/physical_device:GPU:1")]
    calls = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices)
    monkeypatch.setattr(
        tf.config.experimental, "set_memory_growth", lambda device, enable: calls.append((device.name, enable))
    )
    hardware.enable_memory_growth()
    assert calls == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]


def test_memory_growth_after_runtime_start_warns_instead_of_failing(monkeypatch):
    def already_initialised(device, enable):
        raise RuntimeError("Physical devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [FakeDevice("/physical_device:GPU:0")])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", already_initialised)
    with pytest.warns(UserWarning, match="could not enable memory growth on /physical_device:GPU:0"):
        hardware.enable_memory_growth()


def test_gpu_tags_name_the_gpus_cuda_cudnn_image_and_driver(monkeypatch):
    monkeypatch.setattr(tf.sysconfig, "get_build_info", lambda: {"cuda_version": "12.5.1", "cudnn_version": "9"})
    monkeypatch.setattr(hardware, "_nvidia_driver_version", lambda: "575.51.03")
    monkeypatch.setenv("MEDIMG_IMAGE_TAG", "medimg-train:0.1.0")
    tags = hardware.hardware_tags([A100, V100])
    assert {key: tags[key] for key in tags if key not in ("hardware.cpu_count", "hardware.platform")} == {
        "hardware.device": "gpu",
        "hardware.gpu_count": "2",
        "hardware.gpu_names": "NVIDIA A100-SXM4-80GB, Tesla V100-SXM2-16GB",
        "hardware.gpu_compute_capabilities": "8.0, 7.0",
        "hardware.cuda_version": "12.5.1",
        "hardware.cudnn_version": "9",
        "hardware.image_tag": "medimg-train:0.1.0",
        "hardware.nvidia_driver_version": "575.51.03",
    }
    assert int(tags["hardware.cpu_count"]) >= 1
    assert tags["hardware.platform"].startswith("Linux")


def test_cpu_tags_outside_the_image(monkeypatch):
    monkeypatch.setattr(tf.sysconfig, "get_build_info", lambda: {"is_cuda_build": False})
    monkeypatch.delenv("MEDIMG_IMAGE_TAG", raising=False)
    tags = hardware.hardware_tags([])
    assert tags["hardware.device"] == "cpu"
    assert tags["hardware.gpu_count"] == "0"
    assert tags["hardware.gpu_names"] == "none"
    assert tags["hardware.cuda_version"] == "none"
    assert tags["hardware.cudnn_version"] == "none"
    assert tags["hardware.image_tag"] == "none"
    assert "hardware.nvidia_driver_version" not in tags
    # MLflow rejects tag values that are not strings only at log time; catch it here.
    assert all(isinstance(value, str) and value for value in tags.values())


def test_configure_on_two_capable_gpus(monkeypatch, fake_mirrored):
    monkeypatch.setattr(hardware, "detect_gpus", lambda: [A100, A100])
    monkeypatch.setattr(hardware, "_nvidia_driver_version", lambda: None)
    setup = hardware.configure("auto", jit_compile=True)
    assert setup.precision == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert isinstance(setup.strategy, fake_mirrored)
    assert setup.jit_compile is True
    assert setup.log_system_metrics is True
    assert setup.tags["hardware.precision"] == "mixed_float16"
    assert setup.tags["hardware.replicas"] == "2"
    assert setup.tags["hardware.strategy"] == "RecordingMirroredStrategy"
    assert setup.tags["hardware.gpu_count"] == "2"


def test_configure_on_this_cpu_machine():
    setup = hardware.configure("auto")
    assert setup.gpus == []
    assert setup.precision == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert setup.strategy.num_replicas_in_sync == 1
    assert setup.log_system_metrics is False
    assert setup.jit_compile is False
    assert setup.tags["hardware.device"] == "cpu"


def test_a_gpu_the_driver_lists_but_tensorflow_cannot_use_is_named_in_a_warning(tmp_path, monkeypatch):
    from train.job.hardware import GpuInfo, warn_about_hidden_gpus

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA L4 (UUID: GPU-aaaa)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    from importlib.metadata import version

    installed = re.escape(version("tensorflow"))
    with pytest.warns(
        UserWarning, match=rf"lists 1 GPU\(s\) but TensorFlow sees none.*tensorflow\[and-cuda\]=={installed}'"
    ):
        warn_about_hidden_gpus([])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.warns(UserWarning, match="CUDA_VISIBLE_DEVICES='' hides them"):
        warn_about_hidden_gpus([])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_about_hidden_gpus([GpuInfo("NVIDIA L4", (8, 9))])
