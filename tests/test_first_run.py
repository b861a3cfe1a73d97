"""A newcomer's first run: a fresh clone, `make demo`, then the commands the demo prints, from a shell without the venv on PATH."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from serving_helpers import free_port, running_server

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ("samples/cell.png", "samples/cell.jpg", "samples/cell.dcm")


def plain_shell_environment() -> dict[str, str]:
    """The environment of a new terminal: no virtual environment on PATH, no MLflow settings of the test session."""
    venv_bin = os.path.dirname(sys.executable)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "VIRTUAL_ENV")) and key not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")
    }
    environment["PATH"] = os.pathsep.join(
        folder for folder in os.environ["PATH"].split(os.pathsep) if folder and Path(folder) != Path(venv_bin)
    )
    # Quiet TensorFlow and no GPU, as the rest of the suite runs.
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    return environment


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this repository whose .venv is this test session's (installing TensorFlow again would take
    minutes and test pip rather than medimg): `make setup` finds it installed and up to date."""
    folder = tmp_path_factory.mktemp("newcomer") / "medimg"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(folder)], check=True, timeout=120)
    venv = Path(sys.executable).parents[1]
    (folder / ".venv").symlink_to(venv)
    # The clone's requirement files are new; the shared venv's stamp must be newer for make to trust it.
    stamp = venv / ".installed"
    stamp.touch()
    later = time.time() + 60
    os.utime(stamp, (later, later))
    return folder


@contextlib.contextmanager
def make_in_background(clone: Path, target: str, ready_url: str, **variables: str):
    """`make <target>` in its own process group until `ready_url` answers; stopped with everything it started."""
    command = ["make", target, *(f"{name}={value}" for name, value in variables.items())]
    log_path = clone / f"make-{target}.log"
    with running_server(
        command, ready_url=ready_url, log_path=log_path, env=plain_shell_environment(), cwd=clone, timeout=300
    ) as process:
        yield process


@pytest.mark.slow
def test_make_demo_in_a_fresh_clone_trains_registers_and_scores_the_samples(clone):
    result = subprocess.run(
        ["make", "demo"], cwd=clone, env=plain_shell_environment(), capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    output = result.stdout
    for sample in SAMPLES:
        assert (clone / sample).is_file()
        # The last line naming the sample is its row in the client's table (train.samples prints the path first).
        row = [line for line in output.splitlines() if line.startswith(sample)][-1]
        assert "ERROR" not in row and ("parasitized" in row or "uninfected" in row), row
    assert "version 1 is the new champion" in output or '"decision": "promoted"' in output
    for hint in ("make ui", "make serve", "make client"):
        assert hint in output
    assert (clone / "mlflow.db").is_file()


@pytest.mark.slow
def test_the_printed_commands_work_from_a_shell_without_the_venv(clone):
    port, ui_port = free_port(), free_port()
    with make_in_background(clone, "serve", f"http://127.0.0.1:{port}/ping", PORT=str(port)):
        client = subprocess.run(
            ["make", "client", f"PORT={port}"],
            cwd=clone,
            env=plain_shell_environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert client.returncode == 0, client.stdout[-3000:] + client.stderr[-3000:]
    rows = [line for line in client.stdout.splitlines() if line.startswith("samples/")]
    assert [row.split()[0] for row in rows] == list(SAMPLES)
    assert all("ERROR" not in row and "threshold" in row for row in rows)
    with make_in_background(clone, "ui", f"http://127.0.0.1:{ui_port}/", UI_PORT=str(ui_port)):
        page = requests.get(f"http://127.0.0.1:{ui_port}/ajax-api/2.0/mlflow/registered-models/search", timeout=30)
    assert page.status_code == 200 and "demo-classifier" in page.text
    app_port = free_port()
    with make_in_background(clone, "serve-app", f"http://127.0.0.1:{app_port}/health", SERVE_PORT=str(app_port)):
        info = requests.get(f"http://127.0.0.1:{app_port}/info", timeout=30).json()
        page = requests.get(f"http://127.0.0.1:{app_port}/", timeout=30)
    assert page.status_code == 200 and "demo-classifier" in str(info)
