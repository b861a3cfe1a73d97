"""S3 artifact storage: the project's tracking server with `--artifacts-destination s3://bucket/prefix` on a local moto S3."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest
from moto import server as moto_server

from mlflow_server import launcher
from mlflow_server.__main__ import main as mlflow_server_main
from mlflow_server.postgres import PostgresCluster
from serve.common import free_port

BUCKET = "medimg-test-artifacts"
PREFIX = "mlflow"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("postgres_bin"),
]


def _stop_launcher(data_dir: Path) -> None:
    """Stop what the launcher started from `data_dir`, killing it when `down` itself fails."""
    try:
        launcher.down(data_dir)
    except (OSError, RuntimeError, ValueError) as error:
        print(f"launcher.down failed ({error}); killing the processes", file=sys.stderr)
        state = launcher._load_state(launcher._Layout(data_dir))
        if state.get("server_pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state["server_pid"], signal.SIGKILL)
        postgres_pid = PostgresCluster.at(data_dir / "pg").running_pid()
        if postgres_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postgres_pid, signal.SIGKILL)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 in server mode on a free loopback port, with one empty bucket; yields the endpoint URL."""
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        # The tracking server subprocess inherits these: fake credentials and the local endpoint, no AWS.
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
        }.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            patch.delenv(name, raising=False)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        try:
            yield s3
        finally:
            server.stop()


@pytest.fixture(scope="module")
def tracking_server(s3_server):
    """The project's launcher: PostgreSQL plus `mlflow server` proxying artifacts to s3://BUCKET/PREFIX."""
    # pytest's temporary root is 0700, which the `postgres` user cannot enter when tests run as root.
    data_dir = Path(tempfile.mkdtemp(prefix="medimg-s3-"))
    data_dir.chmod(0o755)
    try:
        # The command line docs/TRACKING_SERVER.md shows, in-process: python -m mlflow_server up --artifacts-destination.
        arguments = ["up", "--data-dir", str(data_dir), "--artifacts-destination", f"s3://{BUCKET}/{PREFIX}"]
        assert mlflow_server_main([*arguments, "--workers", "1"]) == 0
        yield launcher.status(data_dir).info
    finally:
        _stop_launcher(data_dir)


def _keys(s3, run_id: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    return [item["Key"] for page in pages for item in page.get("Contents", []) if run_id in item["Key"]]


def test_logged_artifact_is_stored_in_the_bucket_under_the_prefix(tracking_server, s3_server, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_server.tracking_uri)
    experiment_id = client.create_experiment(f"s3-{uuid.uuid4().hex[:8]}")
    note = tmp_path / "hello.txt"
    note.write_text("stored in S3\n")
    mlflow.set_tracking_uri(tracking_server.tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_artifact(str(note), artifact_path="notes")
    finally:
        mlflow.set_tracking_uri(None)
    run_id = run.info.run_id

    keys = _keys(s3_server, run_id)
    assert [key for key in keys if key.endswith("/artifacts/notes/hello.txt")], keys
    (key,) = keys
    assert key.startswith(f"{PREFIX}/{experiment_id}/")
    assert s3_server.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"stored in S3\n"
    # Clients see the proxied URI, and the server never wrote a local copy.
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert not list((tracking_server.data_dir / "artifacts").rglob("hello.txt"))
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="notes/hello.txt",
        dst_path=str(tmp_path / "back"),
        tracking_uri=tracking_server.tracking_uri,
    )
    assert Path(downloaded).read_text() == "stored in S3\n"


def test_a_training_run_stores_its_model_in_the_bucket(tracking_server, s3_server, monkeypatch):
    from mlflow import MlflowClient

    from aws.cost import estimate

    client = MlflowClient(tracking_server.tracking_uri)
    experiment_id = client.create_experiment(f"s3-training-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.tracking_uri)
    monkeypatch.setenv("MEDIMG_INSTANCE_TYPE", "g5.xlarge")
    monkeypatch.delenv("MEDIMG_HOURLY_PRICE_USD", raising=False)
    # `python -m train main` in-process, as `mlflow run` starts it (test_training runs the entry point itself).
    import mlflow

    from train.__main__ import main as train_cli

    mlflow.set_tracking_uri(tracking_server.tracking_uri)
    try:
        mlflow.set_experiment(experiment_id=experiment_id)
        settings = {"dataset": "synthetic", "model": "small_cnn", "image_size": 32, "batch_size": 16}
        settings.update({"max_examples": 64, "epochs": 1})
        assert train_cli(["main", *(f"--{key.replace('_', '-')}={value}" for key, value in settings.items())]) == 0
    finally:
        mlflow.set_tracking_uri(None)

    (run,) = client.search_runs([experiment_id])
    run_keys = _keys(s3_server, run.info.run_id)
    assert any(key.endswith("/artifacts/config/resolved_config.yaml") for key in run_keys), run_keys
    assert all(key.startswith(f"{PREFIX}/{experiment_id}/") for key in run_keys)
    # MLflow 3 stores logged models beside runs, under <experiment>/models/<model id>/.
    model_id = run.data.tags["medimg.model_uri"].removeprefix("models:/")
    model_keys = _keys(s3_server, model_id)
    model_root = f"{PREFIX}/{experiment_id}/models/{model_id}/artifacts"
    assert f"{model_root}/MLmodel" in model_keys, model_keys
    assert any(key.startswith(model_root) and key.endswith(".keras") for key in model_keys), model_keys
    # The trainer priced the run from MEDIMG_INSTANCE_TYPE; `python -m aws cost` agrees from the logged wall time.
    wall_time_s = run.data.metrics["wall_time_s"]
    assert run.data.metrics["cost_usd"] == pytest.approx(wall_time_s / 3600 * 1.006)
    priced = estimate(run_id=run.info.run_id, instance_type="g5.xlarge", tracking_uri=tracking_server.tracking_uri)
    assert priced.seconds == wall_time_s
    assert priced.cost_usd == pytest.approx(run.data.metrics["cost_usd"])
