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
from serving_helpers import running_server

from serve.common import free_port

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


@pytest.fixture(scope="module")
def demo(clone) -> subprocess.CompletedProcess:
    """`make demo` in the fresh clone, once for the module, as a newcomer types it: its result."""
    return subprocess.run(
        ["make", "demo"], cwd=clone, env=plain_shell_environment(), capture_output=True, text=True, timeout=1500
    )


@pytest.fixture(scope="module")
def demo_clone(clone, demo) -> Path:
    """The clone after `make demo` succeeded: its mlflow.db, the registered demo-classifier and samples/."""
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    return clone


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
def test_make_demo_in_a_fresh_clone_trains_registers_and_scores_the_samples(clone, demo):
    result = demo
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    output = result.stdout
    # A newcomer's first run prints no TensorFlow retracing warnings (batches of changing size once did).
    assert "triggered tf.function retracing" not in output + result.stderr
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
def test_the_printed_commands_work_from_a_shell_without_the_venv(demo_clone):
    clone = demo_clone
    port = free_port()
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
    app_port = free_port()
    with make_in_background(clone, "serve-app", f"http://127.0.0.1:{app_port}/health", SERVE_PORT=str(app_port)):
        info = requests.get(f"http://127.0.0.1:{app_port}/info", timeout=30).json()
        page = requests.get(f"http://127.0.0.1:{app_port}/", timeout=30)
        metrics = requests.get(f"http://127.0.0.1:{app_port}/metrics", timeout=30).text
    assert page.status_code == 200 and "demo-classifier" in str(info)
    # The demo model carries its validation reference, so the app watches its answers for drift.
    assert 'medimg_monitoring_reference_available{model_name="demo-classifier",model_version="1"} 1.0' in metrics


# Runs of the demo, as the MLflow UI shows them: named by what they are, in the model-training view.
DEMO_RUN_NAMES = ("pipeline demo-classifier", "train challenger", "evaluate challenger")


@pytest.mark.slow
def test_the_demo_runs_have_readable_names_and_the_experiment_is_model_training(demo_clone):
    clone = demo_clone
    from mlflow.tracking import MlflowClient

    from train.tracking.experiments import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, is_generated_name

    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medimg-demo")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    names = [run.info.run_name for run in client.search_runs([experiment.experiment_id])]
    assert sorted(names) == sorted(DEMO_RUN_NAMES)
    assert not any(is_generated_name(name) for name in names)


@pytest.mark.slow
def test_the_link_make_ui_prints_opens_the_demo_runs_table_not_the_genai_overview(demo_clone, browser):
    """`make ui` prints each experiment's runs link; headless Chromium shows the runs by name in model training."""
    clone = demo_clone
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ui_port = free_port()
    with make_in_background(clone, "ui", f"http://127.0.0.1:{ui_port}/", UI_PORT=str(ui_port)):
        printed = (clone / "make-ui.log").read_text()
        (link,) = [line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("medimg-demo: ")]
        assert link == f"http://127.0.0.1:{ui_port}/#/experiments/1/runs?workflowType=machine_learning"
        models = requests.get(f"http://127.0.0.1:{ui_port}/ajax-api/2.0/mlflow/registered-models/search", timeout=30)
        assert models.status_code == 200 and "demo-classifier" in models.text
        browser.get(link)
        WebDriverWait(browser, 60).until(lambda driver: DEMO_RUN_NAMES[0] in driver.page_source)
        # The pipeline's steps are nested runs: expand the parent row to list them.
        browser.find_element(By.CSS_SELECTOR, '[col-id="attributes.`Run Name`"] button').click()
        WebDriverWait(browser, 30).until(lambda driver: all(name in driver.page_source for name in DEMO_RUN_NAMES))
        text = browser.find_element(By.TAG_NAME, "body").text
        assert "Runs" in text and "matching runs" in text
        assert "Token usage" not in text and "token usage" not in text.lower()
        if os.environ.get("MEDIMG_UI_SCREENSHOT"):
            # Regenerates docs/images/mlflow-ui.png from exactly this link (the assistant panel closed).
            for close in browser.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
                close.click()
            browser.save_screenshot(os.environ["MEDIMG_UI_SCREENSHOT"])
