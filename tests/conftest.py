"""Session-wide test settings and fixtures: quiet TensorFlow, CPU only, no tracking outside tmp dirs, one served model."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests run from the repository root so `models`, `serve`, `train`, ... import.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def postgres_bin() -> Path:
    """The PostgreSQL server binaries. Missing ones skip the test on a developer machine but fail it in CI
    (CI set), so the PostgreSQL, tracking-server and shared-study tests can never be skipped there silently."""
    from mlflow_server.postgres import find_pg_bin_dir

    try:
        return Path(find_pg_bin_dir())
    except ValueError as missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {missing}")
        pytest.skip(str(missing))


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh embedded sqlite tracking store for one test, also exported to subprocesses."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


# mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID so that subprocesses inherit it; a test
# that sets an experiment in-process must not steer the `mlflow run` subprocesses of later tests.
MLFLOW_RUN_CONTEXT = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
SESSION_RUN_CONTEXT = {name: os.environ.get(name) for name in MLFLOW_RUN_CONTEXT}


@pytest.fixture(autouse=True)
def isolated_mlflow_run_context():
    """After each test, the MLflow run context of the environment is the one the session started with."""
    saved = SESSION_RUN_CONTEXT
    yield
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    # mlflow.set_experiment also keeps the experiment id in a process-wide variable; a later test with its own
    # store would otherwise start runs in an experiment id its store does not have.
    mlflow.tracking.fluent._active_experiment_id = None
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# The served model: one tiny model, trained, registered and served once per session for every test that needs it.


@pytest.fixture(scope="session")
def registered_model(tmp_path_factory):
    """One tiny model trained in-process, registered as MODEL_NAME with the alias `champion`.

    The tracking store is the fixture's own; MLFLOW_TRACKING_URI is set only while training, so the tests
    that run after the first user of this fixture keep the environment they expect.
    """
    import mlflow
    from mlflow.tracking import MlflowClient
    from serving_helpers import MODEL_NAME

    from train.settings import MainSettings
    from train.trainer import train

    directory = tmp_path_factory.mktemp("tracking")
    tracking_uri = f"sqlite:///{directory / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    try:
        # The Default experiment of the fixture's own store: set_experiment would leave a process-wide
        # active experiment behind that does not exist in the stores of later tests.
        config = MainSettings.from_dict(
            {"image_size": "32", "epochs": "1", "batch_size": "16", "max_examples": "120", "register_as": MODEL_NAME}
        )
        run_id = train(config).run_id
        client = MlflowClient(tracking_uri)
        (version,) = client.search_model_versions(f"name='{MODEL_NAME}'")
        client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    finally:
        mlflow.set_tracking_uri(None)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {"tracking_uri": tracking_uri, "run_id": run_id, "uri": f"models:/{MODEL_NAME}@champion"}


@pytest.fixture(scope="session")
def loaded_model(registered_model):
    import mlflow

    mlflow.set_tracking_uri(registered_model["tracking_uri"])
    try:
        return mlflow.pyfunc.load_model(registered_model["uri"])
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def server(registered_model, tmp_path_factory):
    """`mlflow models serve -m models:/served-classifier@champion --env-manager local` on a free port."""
    from serving_helpers import MAX_PIXELS, free_port

    port = free_port()
    workdir = tmp_path_factory.mktemp("server")
    log_path = workdir / "server.log"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered_model["tracking_uri"],
        "MEDIMG_MAX_PIXELS": str(MAX_PIXELS),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    # The model must carry its own code: the server runs outside the repository, without PYTHONPATH.
    env.pop("PYTHONPATH", None)
    command = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "models", "serve", "-m"]
    command += [registered_model["uri"], "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        # A new session makes the server and its uvicorn child one process group, stopped together below.
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not answer /ping in time:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
