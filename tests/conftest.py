"""Session-wide test settings: quiet TensorFlow, CPU only, no tracking outside tmp dirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
