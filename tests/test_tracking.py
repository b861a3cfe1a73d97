"""Tests of train.tracking: buffering through outages with a scripted client, and against a real `mlflow server` killed and restarted."""

from __future__ import annotations

import os
import socket

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException

from train.tracking.resilience import (
    MAX_METRICS_PER_BATCH,
    ResilientLogger,
    fail_fast_http,
    is_transient_error,
    is_unique_key_conflict,
    retry_conflicts,
    server_is_up,
    wait_for_server,
)


def connection_refused() -> MlflowException:
    """What MLflow's REST client raises when nothing listens: a plain MlflowException raised while handling the cause."""
    try:
        raise requests.exceptions.ConnectionError("Connection refused")
    except requests.exceptions.ConnectionError as error:
        try:
            raise MlflowException(f"API request to http://127.0.0.1:1/api failed with exception {error}")
        except MlflowException as wrapped:
            return wrapped


def http_answer(status: int, body: str) -> MlflowException:
    """The exception MLflow's REST client raises for an HTTP error answer with this status and body."""
    from mlflow.utils.rest_utils import verify_rest_response

    response = requests.Response()
    response.status_code = status
    response._content = body.encode()
    try:
        verify_rest_response(response, "/api/2.0/mlflow/runs/log-batch")
    except MlflowException as error:
        return error
    raise AssertionError(f"MLflow accepted an HTTP {status} answer")


class ScriptedClient:
    """Stands in for MlflowClient: raises the scripted errors in turn, then stores what log_batch receives."""

    def __init__(self, errors: list[BaseException] | None = None, always_fail: bool = False):
        self.errors = list(errors or [])
        self.always_fail = always_fail
        self.attempts = 0
        self.batches: list[list] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.attempts += 1
        if self.always_fail:
            raise connection_refused()
        if self.errors:
            raise self.errors.pop(0)
        self.batches.append(list(metrics))

    @property
    def stored(self) -> list[tuple[str, int, float, int]]:
        return [(metric.key, metric.step, metric.value, metric.timestamp) for batch in self.batches for metric in batch]


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_logger(client, clock: FakeClock, **options) -> ResilientLogger:
    return ResilientLogger("run-1", client=client, clock=clock, sleep=clock.sleep, **options)


def test_outage_points_are_buffered_and_sent_in_order_with_backoff():
    clock = FakeClock()
    client = ScriptedClient(errors=[connection_refused(), connection_refused()])
    logger = make_logger(client, clock, initial_backoff_s=1.0)

    logger.log_metrics({"loss": 0.9, "val_auroc": 0.6}, step=0, timestamp_ms=100)
    assert (client.attempts, logger.pending_count) == (1, 2)
    # Within the 1 s backoff no request is made; the new points join the queue.
    clock.now += 0.5
    logger.log_metrics({"loss": 0.8}, step=1, timestamp_ms=200)
    assert (client.attempts, logger.pending_count) == (1, 3)
    clock.now += 0.6
    logger.log_metrics({"loss": 0.7}, step=2, timestamp_ms=300)
    assert (client.attempts, logger.pending_count) == (2, 4)
    # The second failure doubled the backoff to 2 s.
    clock.now += 1.5
    logger.log_metrics({"loss": 0.6}, step=3, timestamp_ms=400)
    assert client.attempts == 2
    clock.now += 1.0
    logger.log_metrics({"loss": 0.5}, step=4, timestamp_ms=500)
    assert logger.pending_count == 0
    assert client.stored == [
        ("loss", 0, 0.9, 100),
        ("val_auroc", 0, 0.6, 100),
        ("loss", 1, 0.8, 200),
        ("loss", 2, 0.7, 300),
        ("loss", 3, 0.6, 400),
        ("loss", 4, 0.5, 500),
    ]
    assert logger.flush(timeout_s=0) is True


def test_flush_retries_until_the_server_answers():
    clock = FakeClock()
    client = ScriptedClient(errors=[connection_refused() for _ in range(4)])
    logger = make_logger(client, clock, initial_backoff_s=1.0, max_backoff_s=4.0)
    logger.log_metrics({"loss": 1.0}, step=0, timestamp_ms=1)
    assert logger.flush(timeout_s=60) is True
    assert client.stored == [("loss", 0, 1.0, 1)]
    # flush tries at once, then waits out a backoff that doubles up to max_backoff_s.
    assert clock.sleeps == [2.0, 4.0, 4.0]


def test_flush_gives_up_naming_the_lost_points():
    clock = FakeClock()
    logger = make_logger(ScriptedClient(always_fail=True), clock, retry_for_s=30)
    logger.log_metrics({"loss": 1.0, "val_loss": 2.0}, step=0)
    logger.log_metrics({"loss": 0.5}, step=1)
    with pytest.raises(RuntimeError, match="3 metric point"):
        logger.flush()
    assert clock.now >= 1000.0 + 30
    assert logger.pending_count == 0


def test_errors_a_retry_cannot_fix_are_raised_at_once():
    rejected = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "The run must be in 'active' state"})
    client = ScriptedClient(errors=[rejected])
    logger = make_logger(client, FakeClock())
    with pytest.raises(RestException, match="active"):
        logger.log_metrics({"loss": 1.0}, step=0)
    assert logger.pending_count == 0
    with pytest.raises(ValueError, match="step must be an int"):
        logger.log_metrics({"loss": 1.0}, step=1.5)
    with pytest.raises(ValueError, match="must be a number"):
        logger.log_metrics({"loss": "high"}, step=1)


def test_large_steps_are_sent_in_batches_mlflow_accepts():
    client = ScriptedClient()
    logger = make_logger(client, FakeClock())
    logger.log_metrics({f"auroc_{index}": float(index) for index in range(MAX_METRICS_PER_BATCH + 5)}, step=0)
    assert [len(batch) for batch in client.batches] == [MAX_METRICS_PER_BATCH, 5]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (connection_refused(), True),
        (http_answer(503, '{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "database down"}'), True),
        (http_answer(500, '{"error_code": "INTERNAL_ERROR", "message": "boom"}'), True),
        (http_answer(502, "<html>Bad Gateway</html>"), True),
        (http_answer(429, "slow down"), True),
        (http_answer(404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}'), False),
        (http_answer(401, "<html>Unauthorized</html>"), False),
        (MlflowException.invalid_parameter_value("Invalid metric name"), False),
        (ValueError("bad"), False),
    ],
)
def test_transient_errors_are_told_apart(error, transient):
    assert is_transient_error(error) is transient


# What a Postgres-backed `mlflow server` answered when four runs logged one dataset at once (CI, 2026-12-01).
POSTGRES_DATASET_CONFLICT = (
    '{"error_code": "BAD_REQUEST", "message": "(psycopg2.errors.UniqueViolation) duplicate key value violates'
    ' unique constraint \\"dataset_pk\\"\\nDETAIL:  Key (experiment_id, name, digest)=(1, synthetic, b08f)'
    ' already exists."}'
)


@pytest.mark.parametrize(
    ("error", "conflict"),
    [
        (http_answer(400, POSTGRES_DATASET_CONFLICT), True),
        (MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id"), True),
        (http_answer(400, '{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid dataset name"}'), False),
        (http_answer(404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}'), False),
        (ValueError("bad"), False),
    ],
)
def test_unique_key_conflicts_are_recognised(error, conflict):
    assert is_unique_key_conflict(error) is conflict


class Flaky:
    """A call that raises the scripted errors in turn, then returns how many times it was called."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.calls


def test_retry_conflicts_calls_again_after_a_lost_race_or_an_outage():
    clock = FakeClock()
    call = Flaky(http_answer(400, POSTGRES_DATASET_CONFLICT), connection_refused())
    assert retry_conflicts(call, "log the dataset input", sleep=clock.sleep) == 3
    assert clock.sleeps == [0.2, 0.4]


def test_retry_conflicts_raises_other_errors_at_once_and_gives_up_after_its_attempts():
    clock = FakeClock()
    not_found = Flaky(http_answer(404, '{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}'))
    with pytest.raises(RestException, match="no run"):
        retry_conflicts(not_found, "log the dataset input", sleep=clock.sleep)
    assert not_found.calls == 1
    assert clock.sleeps == []
    always = Flaky(*[http_answer(400, POSTGRES_DATASET_CONFLICT) for _ in range(5)])
    with pytest.raises(RestException, match="dataset_pk"):
        retry_conflicts(always, "log the dataset input", attempts=3, sleep=clock.sleep)
    assert always.calls == 3
    with pytest.raises(ValueError, match="attempts"):
        retry_conflicts(always, "log the dataset input", attempts=0)


def test_fail_fast_http_restores_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with fail_fast_http(max_retries=1, timeout_s=5):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_wait_for_server_passes_for_database_stores_and_times_out_on_a_dead_port():
    wait_for_server("sqlite:///mlflow.db", timeout_s=0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_uri = f"http://127.0.0.1:{probe.getsockname()[1]}"
    assert server_is_up(dead_uri, timeout_s=1) is False
    with pytest.raises(TimeoutError, match="did not answer /health"):
        wait_for_server(dead_uri, timeout_s=0.5, poll_s=0.1)


def test_medimg_runs_mark_their_experiment_as_model_training_but_keep_a_kind_a_user_set(tracking_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    from train.tracking.experiments import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, medimg_run

    client = MlflowClient(tracking_uri)
    ours = client.create_experiment("chest-models")
    theirs = client.create_experiment("assistant", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    with medimg_run("evaluate chest version 2", experiment_id=ours) as run:
        pass
    with medimg_run("train", experiment_id=theirs):
        pass
    assert client.get_experiment(ours).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment(theirs).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert client.get_run(run.info.run_id).info.run_name == "evaluate chest version 2"
    # A name the user gave wins; a run that `mlflow run` created with a generated name gets medimg's name.
    with medimg_run("default", name="my-baseline", experiment_id=ours) as named:
        pass
    assert client.get_run(named.info.run_id).info.run_name == "my-baseline"
    created = client.create_run(ours)
    with medimg_run("pipeline chest", run_id=created.info.run_id):
        pass
    assert client.get_run(created.info.run_id).info.run_name == "pipeline chest"
    given = client.create_run(ours, run_name="nightly")
    with medimg_run("pipeline chest", run_id=given.info.run_id):
        pass
    assert client.get_run(given.info.run_id).info.run_name == "nightly"
    mlflow.set_tracking_uri(None)


def test_generated_run_names_are_recognised_and_ours_are_not():
    from mlflow.utils.name_utils import _generate_random_name

    from train.tracking.experiments import is_generated_name, runs_link

    assert all(is_generated_name(_generate_random_name()) for _ in range(200))
    for ours in ("small_cnn-synthetic-1a2b3c", "pipeline demo-classifier", "train challenger", "trial-3", "nightly"):
        assert not is_generated_name(ours)
    assert (
        runs_link("http://127.0.0.1:5000/", "7")
        == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    )


def test_a_training_run_is_named_by_model_dataset_and_run_id(registered_model):
    from mlflow.tracking import MlflowClient

    run = MlflowClient(registered_model["tracking_uri"]).get_run(registered_model["run_id"])
    assert run.info.run_name == f"small_cnn-synthetic-{run.info.run_id[:6]}"
