"""bench/gpu.py on this CPU under both Keras backends: the table, the JSON, and no TensorFlow under JAX (tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "1", "--warmup", "1", "--families", "small_cnn", "--image-size", "32", "--batch-size", "4"]

# Runs bench/gpu.py where TensorFlow cannot be imported (a host with only JAX), then builds the other families.
WITHOUT_TENSORFLOW = """
import runpy, sys

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("this host has no TensorFlow")
        return None

sys.meta_path.insert(0, NoTensorFlow())
sys.argv = ["bench/gpu.py", *sys.argv[1:]]
try:
    runpy.run_path("bench/gpu.py", run_name="__main__")
except SystemExit as finished:
    assert not finished.code, finished.code
sys.path.insert(0, "bench")
import gpu
for family in ("vgg16", "resnet50", "densenet121"):
    # Built and compiled as training does; the training step itself is the family-independent Keras loop timed above.
    model, images, labels = gpu.build_compiled(family, 32, 1, "float32", True)
    assert model.count_params() > 0 and model.output_shape == (None, gpu.OUTPUTS)
print("families built:", "tensorflow" in sys.modules)
"""


# Under JAX most of the run is XLA compiling each weight initialiser and the tiny steps for this CPU; compiled without
# LLVM's expensive passes the run takes about two thirds of the time (26 s -> 17 s alone) and tests the same code paths.
QUICK_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


# make setup installs JAX here, outside the venv's site-packages (requirements-jax.txt says why).
JAX_PACKAGES = Path(sys.prefix) / "jax"


def run_bench(backend: str, tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    if backend == "jax":
        assert (JAX_PACKAGES / "jax").is_dir(), f"JAX is not installed in {JAX_PACKAGES}: run make setup"
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(JAX_PACKAGES), os.environ.get("PYTHONPATH")]))
        environment.setdefault("XLA_FLAGS", QUICK_XLA_FLAGS)
    return subprocess.run(
        [sys.executable, *arguments], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600
    )


def read_rows(path: Path) -> list[dict]:
    report = json.loads(path.read_text())
    assert report["keras"] and report["device"].startswith("cpu")
    return report["rows"]


@pytest.mark.slow
def test_tensorflow_run_prints_the_table_and_writes_each_precision_and_xla_setting(tmp_path):
    output = tmp_path / "tensorflow.json"
    result = run_bench("tensorflow", tmp_path, "bench/gpu.py", *TINY, "--xla", "off", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train img/s" in result.stdout and "infer img/s" in result.stdout and "peak MB" in result.stdout
    rows = read_rows(output)
    assert [(row["precision"], row["xla"]) for row in rows] == [("mixed_float16", False), ("float32", False)]
    for row in rows:
        assert row["family"] == "small_cnn" and row["backend"] == "tensorflow" and row["batch"] == 4
        assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
        assert row["peak_device_memory_mb"] is None


@pytest.mark.slow
def test_jax_run_and_every_family_need_no_tensorflow(tmp_path):
    output = tmp_path / "jax.json"
    arguments = ["-c", WITHOUT_TENSORFLOW, *TINY, "--precisions", "float32", "--output", str(output)]
    result = run_bench("jax", tmp_path, *arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "families built: False" in result.stdout
    (row,) = read_rows(output)
    assert (row["backend"], row["xla"], row["precision"]) == ("jax", True, "float32")
    assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
