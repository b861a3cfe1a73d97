"""Tracking that survives a tracking-server outage: buffers per-epoch metrics in memory and sends them with MlflowClient.log_batch."""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

from serve.common import first_line

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

_logger = logging.getLogger(__name__)

# MLflow's REST API accepts at most 1000 metrics in one log_batch request.
MAX_METRICS_PER_BATCH = 1000
# Error codes that mean "try again later", whether they come from a REST server or a SQL store.
_TRANSIENT_ERROR_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})
# os.environ is process-wide, so concurrent loggers take turns while they narrow MLflow's HTTP retries.
_environment_lock = threading.Lock()
# What SQL databases answer when a concurrent writer inserted the same unique key first
# (PostgreSQL, SQLite, MySQL); MLflow's store checks for a row and then inserts it, so two runs racing
# to record the same dataset can both miss the row and one insert fails.
_UNIQUE_KEY_CONFLICT_MARKERS = (
    "UniqueViolation",
    "duplicate key value violates unique constraint",
    "UNIQUE constraint failed",
    "Duplicate entry",
)
T = TypeVar("T")


@contextlib.contextmanager
def fail_fast_http(max_retries: int, timeout_s: int, backoff_factor: int = 1) -> Iterator[None]:
    """Narrow MLflow's HTTP retries for the calls inside, then restore the previous settings.

    MLflow reads MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR and _TIMEOUT on every request; its
    defaults (7 retries with factor 2, 120 s timeout) make one call to a dead server hang for minutes.
    """
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(int(max_retries)),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(backoff_factor)),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout_s))),
    }
    with _environment_lock:
        previous = {name: os.environ.get(name) for name in settings}
        os.environ.update(settings)
        try:
            yield
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it was raised from or while handling, a few levels deep."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient_error(error: BaseException) -> bool:
    """True for failures that a later retry can fix: no connection, timeouts, HTTP 429 and 5xx, a busy database."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    network_errors = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        # Raised when MLflow's own retries on 429/5xx answers are used up.
        requests.exceptions.RetryError,
        ConnectionError,
        TimeoutError,
    )
    # MLflow wraps network failures in a plain MlflowException, keeping the original as its cause or context.
    if any(isinstance(cause, network_errors) for cause in _causes(error)):
        return True
    if isinstance(error, MlflowException):
        if error.error_code in _TRANSIENT_ERROR_CODES:
            return True
        # An HTTP error answer: a JSON body gives a RestException, any other body this message.
        if isinstance(error, RestException) or str(error.message).startswith("API request to endpoint"):
            status = error.get_http_status_code()
            return status == 429 or status >= 500
    return False


def is_unique_key_conflict(error: BaseException) -> bool:
    """True when the store refused an insert because a concurrent writer stored the same unique key first."""
    return any(marker in str(cause) for cause in _causes(error) for marker in _UNIQUE_KEY_CONFLICT_MARKERS)


def retry_conflicts(
    call: Callable[[], T],
    what: str,
    *,
    attempts: int = 5,
    initial_backoff_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return `call()`, calling it again after a unique-key conflict or a transient error, `attempts` times at most.

    A conflicting insert is rolled back whole, and the row the other writer stored is found on the next
    attempt, so the retry records the same thing the first call meant to. Other errors are raised at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be 1 or more, got {attempts}.")
    backoff_s = initial_backoff_s
    for attempt in range(1, attempts):
        try:
            return call()
        except Exception as error:
            if not (is_unique_key_conflict(error) or is_transient_error(error)):
                raise
            _logger.warning("Could not %s (attempt %d of %d, %s); trying again.", what, attempt, attempts, error)
            sleep(backoff_s)
            backoff_s *= 2
    return call()


class ResilientLogger:
    """Logs per-epoch metrics of one run and keeps them through tracking-server outages.

    `log_metrics` never raises on a transient failure (no connection, timeout, HTTP 5xx): it keeps the
    points in memory and, on a later call, sends everything buffered in the original order, backing off
    exponentially between attempts. `flush` retries until all points are stored or its time runs out.
    Errors a retry cannot fix (a bad metric, a finished or unknown run) are raised at once.

    Points keep the timestamp of their first `log_metrics` call, so a retry after a request that reached
    the server but timed out stores no duplicate: the SQL store drops identical (key, step, timestamp, value) rows.
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        retry_for_s: float = 900,
        *,
        http_max_retries: int = 1,
        http_timeout_s: int = 15,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not run_id:
            raise ValueError("ResilientLogger needs the id of an active run: pass run.info.run_id.")
        if retry_for_s < 0:
            raise ValueError(f"retry_for_s must be 0 or more seconds, got {retry_for_s}.")
        if initial_backoff_s <= 0 or max_backoff_s < initial_backoff_s:
            raise ValueError("Backoff needs 0 < initial_backoff_s <= max_backoff_s.")
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient()
        self.run_id = run_id
        self.client = client
        self.retry_for_s = float(retry_for_s)
        self.http_max_retries = int(http_max_retries)
        self.http_timeout_s = int(http_timeout_s)
        self.initial_backoff_s = float(initial_backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._clock = clock
        self._sleep = sleep
        self._pending: deque[Metric] = deque()
        self._lock = threading.RLock()
        self._backoff_s = 0.0
        self._next_attempt_at = 0.0
        self._outage_started_at: float | None = None

    @property
    def pending_count(self) -> int:
        """Metric points waiting to be sent."""
        return len(self._pending)

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queue one step's metrics and send everything queued unless the logger is backing off after a failure."""
        from mlflow.entities import Metric

        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise ValueError(f"step must be an int such as the epoch number, got {step!r}.")
        step = int(step)
        timestamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        points = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"Metric {key!r} must be a number, got {value!r}.") from error
            points.append(Metric(key=str(key), value=number, timestamp=timestamp, step=step))
        with self._lock:
            self._pending.extend(points)
            if self._clock() >= self._next_attempt_at:
                self._send_pending()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send everything buffered, retrying with backoff for `timeout_s` (default: retry_for_s) seconds.

        Returns True once nothing is left. Raises RuntimeError naming the number of lost metric
        points when the time runs out; those points are dropped.
        """
        budget_s = self.retry_for_s if timeout_s is None else float(timeout_s)
        deadline = self._clock() + max(0.0, budget_s)
        with self._lock:
            while True:
                if self._send_pending():
                    return True
                now = self._clock()
                if now >= deadline:
                    lost = len(self._pending)
                    self._pending.clear()
                    raise RuntimeError(
                        f"Gave up after {budget_s:.0f} s of tracking-server errors: {lost} metric point(s) "
                        f"of run {self.run_id} were lost. Check that MLFLOW_TRACKING_URI answers, or give "
                        "flush() a longer timeout_s."
                    )
                self._sleep(max(0.0, min(self._next_attempt_at, deadline) - now))

    def _send_pending(self) -> bool:
        """Send queued points in order; True when the queue is empty, False after a transient failure."""
        while self._pending:
            chunk = list(islice(self._pending, MAX_METRICS_PER_BATCH))
            try:
                with fail_fast_http(self.http_max_retries, self.http_timeout_s):
                    self.client.log_batch(self.run_id, metrics=chunk)
            except Exception as error:
                if not is_transient_error(error):
                    # Resending a request the server rejected would fail forever, so those points are dropped.
                    for _ in chunk:
                        self._pending.popleft()
                    raise
                self._record_failure(error)
                return False
            for _ in chunk:
                self._pending.popleft()
        self._record_success()
        return True

    def _record_failure(self, error: BaseException) -> None:
        now = self._clock()
        if self._outage_started_at is None:
            self._outage_started_at = now
            _logger.warning(
                "Tracking server unavailable (%s); keeping %d metric point(s) of run %s and retrying.",
                first_line(error),
                len(self._pending),
                self.run_id,
            )
        self._backoff_s = min(self.max_backoff_s, self._backoff_s * 2 if self._backoff_s else self.initial_backoff_s)
        self._next_attempt_at = now + self._backoff_s

    def _record_success(self) -> None:
        if self._outage_started_at is not None:
            _logger.warning(
                "Tracking server back after %.0f s; buffered metrics of run %s were sent.",
                self._clock() - self._outage_started_at,
                self.run_id,
            )
        self._outage_started_at = None
        self._backoff_s = 0.0
        self._next_attempt_at = 0.0


def _health_url(tracking_uri: str) -> str | None:
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return tracking_uri.rstrip("/") + "/health"


def server_is_up(tracking_uri: str | None = None, timeout_s: float = 5.0) -> bool:
    """True when an HTTP tracking server answers /health (always True for sqlite, file or postgres stores)."""
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    url = _health_url(tracking_uri)
    if url is None:
        return True
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for_server(tracking_uri: str | None = None, timeout_s: float = 900, poll_s: float = 2.0) -> None:
    """Block until the tracking server answers /health; call it before end-of-training logging (model, end_run).

    Those calls use MLflow's own client, which only retries for a few minutes. Raises TimeoutError
    when the server stays away for `timeout_s` seconds.
    """
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    deadline = time.monotonic() + timeout_s
    warned = False
    while not server_is_up(tracking_uri, timeout_s=min(5.0, max(0.5, timeout_s))):
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"The tracking server {tracking_uri} did not answer /health for {timeout_s:.0f} s: "
                "start it again (`make server`) so the run can finish logging."
            )
        if not warned:
            _logger.warning("Waiting up to %.0f s for the tracking server %s to come back.", timeout_s, tracking_uri)
            warned = True
        time.sleep(poll_s)


def log_new_params(run_id: str, params: dict) -> None:
    """Log the params the run does not have yet.

    Under `mlflow run` MLflow has already logged the entry point's parameters as the
    strings it received (`true`, or `''` for an empty value) and refuses to change a
    param; the resolved values are in the run's artifacts anyway.
    """
    import mlflow

    existing = mlflow.get_run(run_id).data.params
    new = {key: value for key, value in params.items() if key not in existing}
    if new:
        mlflow.log_params(new)
