"""Tests of mlflow_server/: the launcher against real PostgreSQL, `mlflow server` and `mlflow run` in temp folders; the compose files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from mlflow_server import launcher
from mlflow_server.postgres import PostgresCluster, process_is_running

requires_postgres = pytest.mark.usefixtures("postgres_bin")

EPOCHS = 2
# Keys the training loop logs once per epoch (Keras logs plus the epoch logger's own).
PER_EPOCH_KEYS = ("loss", "val_loss", "val_auroc", "learning_rate", "epoch_time_s")
TRAINING_PARAMETERS = {
    "dataset": "synthetic",
    "model": "small_cnn",
    "image_size": 32,
    "batch_size": 16,
    "max_examples": 64,
}
TRAINING_TIMEOUT_S = 600
OUTAGE_WORKERS = 1


def make_data_dir(prefix: str) -> Path:
    """A fresh data folder that the `postgres` user can reach when tests run as root (pytest's tmp root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def force_down(data_dir: Path) -> None:
    """Stop everything a test started from `data_dir`, even when `down` itself fails."""
    try:
        launcher.down(data_dir)
    except Exception as error:  # Teardown must go on to the hard kill below whatever went wrong.
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


def make(target: str, data_dir: Path, repo_root: Path) -> subprocess.CompletedProcess:
    """`make <target>` of the Makefile (as docs/TRACKING_SERVER.md shows it) on `data_dir`, with this test session's
    interpreter; `-o` keeps make from reinstalling the venv the session already runs in."""
    return subprocess.run(
        [
            "make",
            "-s",
            "-o",
            ".venv/.installed",
            target,
            f"SERVER_DIR={data_dir}",
            f"BIN={Path(sys.executable).parent}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def query(info: launcher.ServerInfo, sql: str, *parameters) -> list[tuple]:
    """Run SQL against the tracking database as the `mlflow` role, with the password from the pgpass file."""
    import psycopg2

    connection = psycopg2.connect(
        host="127.0.0.1",
        port=info.postgres_port,
        user="mlflow",
        dbname="mlflow",
        passfile=str(info.pgpass_file),
        connect_timeout=10,
    )
    with contextlib.closing(connection), connection.cursor() as cursor:
        cursor.execute(sql, parameters)
        return cursor.fetchall()


def process_arguments() -> dict[int, bytes]:
    arguments = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                arguments[int(entry.name)] = (entry / "cmdline").read_bytes()
    return arguments


def processes_showing(secret: str) -> list[str]:
    """Processes whose command line holds `secret`, as 'pid: command'."""
    needle = secret.encode()
    found = []
    for pid, arguments in process_arguments().items():
        if needle in arguments:
            command = arguments.replace(b"\0", b" ")[:200].decode(errors="replace")
            found.append(f"{pid}: {command}")
    return found


def group_members(group_id: int) -> list[int]:
    return launcher._process_group_members(group_id)


def training_command(repo_root: Path, experiment_id: str, epochs: int) -> list[str]:
    declared = yaml.safe_load((repo_root / "MLproject").read_text())["entry_points"]["main"]["parameters"]
    parameters = {**TRAINING_PARAMETERS, "epochs": epochs}
    unknown = sorted(set(parameters) - set(declared))
    assert not unknown, f"MLproject main no longer declares {unknown}; update TRAINING_PARAMETERS"
    command = [sys.executable, "-m", "mlflow", "run", str(repo_root), "--env-manager", "local"]
    command += ["--experiment-id", experiment_id]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    return command


def start_training(repo_root: Path, info: launcher.ServerInfo, experiment_id: str, log: Path, epochs: int = EPOCHS):
    environment = dict(os.environ)
    # `mlflow run --env-manager local` runs `python -m train ...`, which must be this interpreter.
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["MLFLOW_TRACKING_URI"] = info.tracking_uri
    with open(log, "wb") as handle:
        return subprocess.Popen(
            training_command(repo_root, experiment_id, epochs),
            cwd=repo_root,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            # Its own process group, so a hung run and its `python -m train` child can be killed together.
            start_new_session=True,
        )


def wait_for_training(process: subprocess.Popen, log: Path, timeout_s: float = TRAINING_TIMEOUT_S) -> str:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    output = log.read_text(errors="replace")
    assert process.returncode == 0, f"mlflow run exited with {process.returncode}:\n{output[-4000:]}"
    return output


def experiment(info: launcher.ServerInfo, name: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(info.tracking_uri).create_experiment(f"{name}-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def server(postgres_bin):
    """One Postgres-backed server shared by this module's tests; stopped and deleted at the end, also on failure."""
    data_dir = make_data_dir("medimg-mlflow-")
    try:
        yield launcher.up(data_dir, workers=2)
    finally:
        force_down(data_dir)


@pytest.fixture
def outage_server(postgres_bin):
    """A Postgres-backed server of one test alone, for the tests that kill it: the module's server keeps its process
    (test_up_status_... checks that it is the one `up` started), whatever order the tests run in. One uvicorn worker
    (OUTAGE_WORKERS), as it is started twice per test: these tests are about the client riding out the outage."""
    data_dir = make_data_dir("medimg-mlflow-outage-")
    try:
        yield launcher.up(data_dir, workers=OUTAGE_WORKERS)
    finally:
        force_down(data_dir)


@pytest.fixture(scope="module")
def concurrent_runs(server, repo_root):
    """Four `mlflow run` trainings at once against the shared server; watches process arguments meanwhile."""
    from mlflow import MlflowClient

    password = launcher.stored_password(server.data_dir)
    assert password, "the launcher kept no database password in its pgpass file"
    experiment_id = experiment(server, "concurrent")
    logs = [server.data_dir / f"training-{index}.log" for index in range(4)]
    processes = [start_training(repo_root, server, experiment_id, log) for log in logs]
    leaks: set[str] = set()
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    try:
        while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
            leaks.update(processes_showing(password))
            time.sleep(0.5)
        outputs = [
            wait_for_training(process, log, timeout_s=max(1.0, deadline - time.monotonic()))
            for process, log in zip(processes, logs, strict=True)
        ]
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    runs = MlflowClient(server.tracking_uri).search_runs([experiment_id])
    return {"experiment_id": experiment_id, "runs": runs, "outputs": outputs, "leaks": sorted(leaks)}


@pytest.mark.slow
@requires_postgres
def test_up_status_and_a_second_up_reuse_one_server(server, repo_root):
    report = launcher.status(server.data_dir)
    assert report.running and report.postgres_pid and report.server_pid == server.server_pid
    assert requests.get(f"{server.tracking_uri}/health", timeout=10).text.strip() == "OK"

    again = launcher.up(server.data_dir)
    assert (again.port, again.server_pid, again.postgres_port) == (server.port, server.server_pid, server.postgres_port)

    # `make server` (python -m mlflow_server up) prints the export line on stdout, for eval, and reuses the server.
    completed = make("server", server.data_dir, repo_root)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"export MLFLOW_TRACKING_URI={server.tracking_uri}"
    status_command = [sys.executable, "-m", "mlflow_server", "status", "--data-dir", str(server.data_dir)]
    status_run = subprocess.run(status_command, cwd=repo_root, capture_output=True, text=True, timeout=60, check=False)
    assert status_run.returncode == 0, status_run.stdout + status_run.stderr
    assert f"tracking uri: {server.tracking_uri}" in status_run.stdout
    assert launcher.status(server.data_dir).server_pid == server.server_pid


@pytest.mark.slow
@requires_postgres
def test_passwords_are_private_files_and_the_backend_uri_travels_in_the_environment(server):
    assert stat.S_IMODE(server.pgpass_file.stat().st_mode) == 0o600
    password = launcher.stored_password(server.data_dir)
    assert password and len(password) >= 32
    assert password not in server.backend_store_uri
    assert server.backend_store_uri == f"postgresql+psycopg2://mlflow@127.0.0.1:{server.postgres_port}/mlflow"
    # The role logs in over TCP with the stored password; a wrong one is refused.
    assert query(server, "SELECT current_user") == [("mlflow",)]
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host="127.0.0.1", port=server.postgres_port, user="mlflow", dbname="mlflow", password="wrong"
        ).close()

    server_pid = launcher.status(server.data_dir).server_pid
    members = group_members(server_pid)
    assert members, "the mlflow server has no live processes"
    for pid in members:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password.encode() not in arguments and b"postgresql" not in arguments
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert password.encode() not in environment
    leader_environment = Path(f"/proc/{server_pid}/environ").read_bytes().split(b"\0")
    assert f"MLFLOW_BACKEND_STORE_URI={server.backend_store_uri}".encode() in leader_environment


@pytest.mark.slow
@requires_postgres
def test_running_server_refuses_different_settings(server):
    with pytest.raises(ValueError, match="already running"):
        launcher.up(server.data_dir, auth=True)
    assert launcher.status(server.data_dir).running


@pytest.mark.slow
@requires_postgres
def test_training_run_lands_in_postgres_and_artifacts_go_through_the_server(server, concurrent_runs, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(server.tracking_uri)
    run = concurrent_runs["runs"][0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "loss")
    assert sorted(metric.step for metric in history) == list(range(EPOCHS))

    artifact_paths = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert "config" in artifact_paths
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="config/resolved_config.yaml",
        dst_path=str(tmp_path),
        tracking_uri=server.tracking_uri,
    )
    downloaded = yaml.safe_load(Path(local).read_text())
    assert downloaded["config"]["model"] == "small_cnn"
    # Proxied artifacts are stored by the server in its destination, not by the client.
    stored = list(Path(server.artifacts_destination).rglob("resolved_config.yaml"))
    assert any(run_id in str(path) for path in stored)

    assert query(server, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [("FINISHED",)]
    rows = query(server, "SELECT step, value FROM metrics WHERE run_uuid = %s AND key = 'loss' ORDER BY step", run_id)
    assert [step for step, _ in rows] == list(range(EPOCHS))
    assert {value for _, value in rows} == {metric.value for metric in history}
    experiment_rows = query(
        server, "SELECT artifact_location FROM experiments WHERE experiment_id = %s", int(run.info.experiment_id)
    )
    assert experiment_rows[0][0].startswith("mlflow-artifacts:")


@pytest.mark.slow
@requires_postgres
def test_four_concurrent_runs_finish_with_one_point_per_epoch_and_key(server, concurrent_runs):
    runs = concurrent_runs["runs"]
    assert len(runs) == 4
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {(run.inputs.dataset_inputs[0].dataset.name, len(run.inputs.dataset_inputs)) for run in runs} == {
        ("synthetic", 1)
    }
    for run in runs:
        counts = query(
            server, "SELECT key, step, count(*) FROM metrics WHERE run_uuid = %s GROUP BY key, step", run.info.run_id
        )
        duplicated = [(key, step, count) for key, step, count in counts if count != 1]
        assert not duplicated, f"run {run.info.run_id} has repeated metric points: {duplicated}"
        steps_by_key: dict[str, set[int]] = {}
        for key, step, _ in counts:
            steps_by_key.setdefault(key, set()).add(step)
        for key in PER_EPOCH_KEYS:
            assert steps_by_key.get(key) == set(range(EPOCHS)), f"{key}: {steps_by_key.get(key)}"


@pytest.mark.slow
@requires_postgres
def test_runs_logging_one_dataset_at_once_all_link_its_single_row(server, monkeypatch):
    """MLflow's store looks for the dataset row, then inserts it: runs racing there collide on its unique key."""
    import threading
    from types import SimpleNamespace

    import mlflow
    from mlflow import MlflowClient

    from train.job.stages import log_dataset

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.tracking_uri)
    mlflow.set_tracking_uri(server.tracking_uri)
    client = MlflowClient(server.tracking_uri)
    experiment_id = experiment(server, "dataset-race")
    data = SimpleNamespace(name="synthetic", source="synthetic", digest=uuid.uuid4().hex)
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(8)]
    start = threading.Barrier(len(run_ids))
    errors: list[BaseException] = []

    def log(run_id: str) -> None:
        try:
            with mlflow.start_run(run_id=run_id):
                start.wait(timeout=60)
                log_dataset(data, seed=42)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        mlflow.set_tracking_uri(None)
    assert errors == []
    rows = query(server, "SELECT dataset_uuid FROM datasets WHERE experiment_id = %s", int(experiment_id))
    assert len(rows) == 1
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        [dataset_input] = run.inputs.dataset_inputs
        assert (dataset_input.dataset.name, dataset_input.dataset.digest) == ("synthetic", data.digest[:36])
        assert {tag.key: tag.value for tag in dataset_input.tags} == {"mlflow.data.context": "training"}


@pytest.mark.slow
@requires_postgres
def test_runs_starting_at_once_in_a_new_experiment_all_mark_it_as_model_training(server):
    """Each medimg run marks its experiment as model training; the server's store looks for the tag row, then inserts
    it, so runs starting together in a new experiment can collide on its key (four `mlflow run`s at once once did).
    Here a SHARE lock on experiment_tags lets every request look, finding no row, and holds each insert until all
    of them wait: the collision happens every time, and every run still starts."""
    import threading

    import psycopg2
    from mlflow import MlflowClient

    from train.tracking.experiments import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, mark_model_training

    experiment_id = experiment(server, "kind-race")
    racers = 2
    errors: list[BaseException] = []
    marked: list[bool] = []

    def mark() -> None:
        try:
            marked.append(mark_model_training(experiment_id, MlflowClient(server.tracking_uri)))
        except BaseException as error:
            errors.append(error)

    lock = psycopg2.connect(
        host="127.0.0.1", port=server.postgres_port, user="mlflow", dbname="mlflow", passfile=str(server.pgpass_file)
    )
    threads = [threading.Thread(target=mark) for _ in range(racers)]
    with contextlib.closing(lock), lock.cursor() as cursor:
        cursor.execute("LOCK TABLE experiment_tags IN SHARE MODE")
        for thread in threads:
            thread.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'experiment_tags'::regclass"
        deadline = time.monotonic() + 60
        while query(server, waiting)[0][0] < racers:
            assert time.monotonic() < deadline, "the runs' inserts never queued behind the lock"
            time.sleep(0.1)
        lock.commit()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and sorted(marked) == [False, True]
    tags = MlflowClient(server.tracking_uri).get_experiment(experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


@pytest.mark.slow
@requires_postgres
def test_database_password_is_in_no_process_arguments_params_or_tags(server, concurrent_runs):
    password = launcher.stored_password(server.data_dir)
    assert concurrent_runs["leaks"] == []
    assert processes_showing(password) == []
    for run in concurrent_runs["runs"]:
        assert run.data.params, "the run logged no parameters"
        texts = [*run.data.params.values(), *run.data.tags.values()]
        assert not [text for text in texts if password in text]
    logged = query(server, "SELECT count(*) FROM params WHERE value LIKE %s", f"%{password}%")
    logged += query(server, "SELECT count(*) FROM tags WHERE value LIKE %s", f"%{password}%")
    assert logged == [(0,), (0,)]


BUFFERING_MESSAGE = "Tracking server unavailable"


def read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def wait_until_training_starts_fitting(server, experiment_id: str, process: subprocess.Popen, log: Path) -> str:
    """The run id once the trainer logged its last parameter before `fit` (or, failing that, its first epoch)."""
    deadline = time.monotonic() + TRAINING_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        rows = query(
            server,
            "SELECT p.run_uuid FROM params p JOIN runs r ON r.run_uuid = p.run_uuid "
            "WHERE r.experiment_id = %s AND p.key = 'trainable_parameters' "
            "UNION SELECT m.run_uuid FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE r.experiment_id = %s AND m.key = 'loss'",
            int(experiment_id),
            int(experiment_id),
        )
        if rows:
            return rows[0][0]
        time.sleep(0.2)
    raise AssertionError(f"training never reached fit:\n{read(log)[-4000:]}")


@pytest.mark.slow
@requires_postgres
def test_training_survives_the_server_being_killed_and_restarted(outage_server, repo_root):
    from mlflow import MlflowClient

    epochs = 3
    experiment_id = experiment(outage_server, "outage")
    log = outage_server.data_dir / "training-outage.log"
    process = start_training(repo_root, outage_server, experiment_id, log, epochs=epochs)
    try:
        run_id = wait_until_training_starts_fitting(outage_server, experiment_id, process, log)
        killed_pid = launcher.status(outage_server.data_dir).server_pid
        os.killpg(killed_pid, signal.SIGKILL)
        # The server stays down until the training loop reports that it is buffering epoch metrics.
        deadline = time.monotonic() + TRAINING_TIMEOUT_S / 2
        while time.monotonic() < deadline and process.poll() is None and BUFFERING_MESSAGE not in read(log):
            time.sleep(0.3)
        buffered = BUFFERING_MESSAGE in read(log)
        assert launcher.status(outage_server.data_dir).server_pid is None
        restarted = launcher.up(outage_server.data_dir, workers=OUTAGE_WORKERS)
        assert restarted.port == outage_server.port and restarted.server_pid != killed_pid
        output = wait_for_training(process, log)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert buffered, f"the training loop never buffered metrics while the server was down:\n{output[-4000:]}"

    client = MlflowClient(outage_server.tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in PER_EPOCH_KEYS:
        steps = sorted(metric.step for metric in client.get_metric_history(run_id, key))
        assert steps == list(range(epochs)), f"{key}: {steps}"
    assert "config" in {artifact.path for artifact in client.list_artifacts(run_id)}


@pytest.mark.slow
@requires_postgres
def test_logger_keeps_metrics_while_a_real_server_is_killed_and_restarted(outage_server):
    """ResilientLogger alone (the training above uses it): metrics logged while the server is down arrive after."""
    from mlflow import MlflowClient

    from train.tracking.resilience import ResilientLogger, server_is_up, wait_for_server

    client = MlflowClient(outage_server.tracking_uri)
    run_id = client.create_run(experiment(outage_server, "resilient")).info.run_id
    logger = ResilientLogger(run_id, client=client, initial_backoff_s=0.2, max_backoff_s=1.0)
    logger.log_metrics({"loss": 1.0, "val_auroc": 0.5}, step=0)
    assert logger.pending_count == 0

    os.killpg(launcher.status(outage_server.data_dir).server_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server_is_up(outage_server.tracking_uri, timeout_s=1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_is_up(outage_server.tracking_uri, timeout_s=1) is False
    for step in (1, 2, 3):
        logger.log_metrics({"loss": 1.0 / (step + 1), "val_auroc": 0.5 + step / 10}, step=step)
    assert logger.pending_count == 6

    restarted = launcher.up(outage_server.data_dir, workers=OUTAGE_WORKERS)
    assert restarted.tracking_uri == outage_server.tracking_uri
    wait_for_server(outage_server.tracking_uri, timeout_s=60)
    logger.log_metrics({"loss": 0.2, "val_auroc": 0.9}, step=4)
    assert logger.flush(timeout_s=60) is True

    history = client.get_metric_history(run_id, "loss")
    assert sorted((metric.step, metric.value) for metric in history) == [
        (0, 1.0),
        (1, 0.5),
        (2, 1.0 / 3),
        (3, 0.25),
        (4, 0.2),
    ]
    assert sorted(metric.step for metric in client.get_metric_history(run_id, "val_auroc")) == [0, 1, 2, 3, 4]
    client.set_terminated(run_id)
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
@requires_postgres
def test_basic_auth_server_needs_credentials_and_down_leaves_no_process(monkeypatch, repo_root):
    data_dir = make_data_dir("medimg-mlflow-auth-")
    try:
        info = launcher.up(data_dir, auth=True, workers=1)
        assert info.auth and info.admin_username == "admin"
        assert stat.S_IMODE(info.admin_password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "auth" / "basic_auth.ini").stat().st_mode) == 0o600
        admin_password = info.admin_password_file.read_text().strip()
        assert f"export MLFLOW_TRACKING_USERNAME={info.admin_username}" in info.export_lines()
        assert all(admin_password not in line for line in info.export_lines())

        url = f"{info.tracking_uri}/api/2.0/mlflow/experiments/search"
        assert requests.get(url, params={"max_results": 5}, timeout=30).status_code == 401
        wrong = requests.get(url, params={"max_results": 5}, auth=("admin", "not-the-password"), timeout=30)
        assert wrong.status_code == 401
        right = requests.get(url, params={"max_results": 5}, auth=("admin", admin_password), timeout=30)
        assert right.status_code == 200
        assert "experiments" in right.json()

        from mlflow import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        client = MlflowClient(info.tracking_uri)
        experiment_id = client.create_experiment("with-auth")
        assert client.get_experiment(experiment_id).name == "with-auth"

        postgres_pid = launcher.status(data_dir).postgres_pid
        server_group = info.server_pid
        stopped = make("server-stop", data_dir, repo_root)  # python -m mlflow_server down
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert group_members(server_group) == []
        assert not process_is_running(postgres_pid)
        assert not [
            pid
            for pid, arguments in process_arguments().items()
            if str(data_dir).encode() in arguments and process_is_running(pid)
        ]
        report = launcher.status(data_dir)
        assert (report.postgres_pid, report.server_pid, report.healthy) == (None, None, False)
        launcher.down(data_dir)  # A second down has nothing to do and does not fail.
    finally:
        force_down(data_dir)


@pytest.mark.slow
@requires_postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to the postgres user")
def test_root_gets_a_clear_error_for_a_folder_postgres_cannot_reach():
    private = Path(tempfile.mkdtemp(prefix="medimg-private-"))
    try:
        private.chmod(0o700)
        with pytest.raises(ValueError, match="chmod o\\+x"):
            launcher.up(private / "server")
        assert not (private / "server" / "pg" / "data").exists()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_compose_init_writes_private_secrets_once(tmp_path, repo_root):
    from mlflow_server.compose import SECRET_NAMES, init_compose_files

    shutil.copyfile(repo_root / "mlflow_server" / ".env.example", tmp_path / ".env.example")
    created = init_compose_files(tmp_path)
    secrets_dir = tmp_path / "secrets"
    assert sorted(created) == sorted([tmp_path / ".env", *(secrets_dir / name for name in SECRET_NAMES)])
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    values = [(secrets_dir / name).read_text().strip() for name in SECRET_NAMES]
    assert len(set(values)) == 3 and all(len(value) >= 32 for value in values)
    # Containers read the secrets as their own users, so the files are readable inside the private folder.
    assert {stat.S_IMODE((secrets_dir / name).stat().st_mode) for name in SECRET_NAMES} == {0o444}
    assert init_compose_files(tmp_path) == []
    assert [(secrets_dir / name).read_text().strip() for name in SECRET_NAMES] == values


def test_compose_publishes_only_mlflow_and_takes_passwords_from_secrets(repo_root):
    folder = repo_root / "mlflow_server"
    compose = yaml.safe_load((folder / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow"}
    postgres, mlflow_service = services["postgres"], services["mlflow"]
    assert postgres["image"].startswith("postgres:16")
    assert "ports" not in postgres and "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"] and "pgdata" in compose["volumes"]
    assert mlflow_service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow_service["build"]["dockerfile"] == "mlflow_server/Dockerfile"
    assert [port.rsplit(":", 1)[1] for port in mlflow_service["ports"]] == ["5000"]
    assert compose["networks"]["backend"]["internal"] is True and postgres["networks"] == ["backend"]
    for service in services.values():
        environment = service.get("environment", {})
        assert not [name for name in environment if "PASSWORD" in name and not name.endswith("_FILE")]
        for secret in service.get("secrets", []):
            assert compose["secrets"][secret]["file"] == f"./secrets/{secret}"
    assert ".env" in (folder / ".gitignore").read_text().split() and "secrets/" in (folder / ".gitignore").read_text()


def test_server_image_installs_the_versions_pinned_in_requirements(repo_root):
    import re

    dockerfile = (repo_root / "mlflow_server" / "Dockerfile").read_text()
    pattern = re.search(r"grep -iE '([^']+)' /tmp/requirements.txt", dockerfile).group(1)
    lines = (repo_root / "requirements.txt").read_text().splitlines()
    selected = [line for line in lines if re.match(pattern, line, re.IGNORECASE)]
    # The Dockerfile's build step checks for exactly these four pins.
    assert sorted(line.split("==")[0].lower() for line in selected) == [
        "boto3",
        "flask-wtf",
        "mlflow",
        "psycopg2-binary",
    ]
    assert "ENV MLFLOW" not in dockerfile and "PASSWORD" not in dockerfile.upper().replace("_FILE", "")
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if Path(hadolint).exists():
        completed = subprocess.run(
            [hadolint, str(repo_root / "mlflow_server" / "Dockerfile")], capture_output=True, text=True, check=False
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr
