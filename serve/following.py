"""A served model that follows its registry alias: reads the alias's target from the MLflow registry, loads the new version in the background and swaps it in; writes one log line per swap or refusal and Prometheus gauges.

`python -m serve.app` and `python -m serve.pacs` given `models:/NAME@ALIAS` (or `models:/NAME`, which means
`@champion` when set) hold a `Follower` instead of a fixed model. Every `interval` seconds (and at once when a
registry webhook calls `trigger`) it resolves the URI again. When the alias points at another version, it loads
that version (the consumer's `load`: resolve -> `serve.loaded.LoadedModel` -> warm-up on the model's own input
example -> the consumer's compatibility check) while the old one keeps answering, then replaces one reference.

- A request takes `follower.current` once and uses that object to the end: it is answered by one version, and
  requests already running finish on the old model. At most two models are in memory, and only during a swap.
- A version that fails any step is refused: the old one keeps serving, one line is logged, the refusal is
  counted by reason, and the same target is not tried again until the alias moves (or `retry_seconds` passed).
- A rollback (`python -m train promote --rollback NAME`) moves the alias back and is followed the same way.
- A URI that names one version (`models:/NAME/3`, `models:/NAME/latest`, `models:/m-<id>`, `runs:/...`, a model
  folder) is never followed: `Follower.follows` is False and no thread starts.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from serve.common import first_line
from serve.contract import MODEL_ID_COLUMN, MODEL_NAME_COLUMN
from serve.model_uri import CHAMPION_ALIAS, MODEL_ID, REGISTRY_URI, ModelUriError, ResolvedModel, resolve_model_uri

DEFAULT_INTERVAL_SECONDS = 30.0
INTERVAL_ENVIRONMENT = "MEDIMG_FOLLOW_SECONDS"
# A refused target is tried again after this many check intervals if the alias still points at it (a registry or
# artifact store that failed for a moment), and at least this many seconds apart.
RETRY_INTERVALS = 10
MINIMUM_RETRY_SECONDS = 300.0

log = logging.getLogger("serve.following")
Model = TypeVar("Model")


class Refused(Exception):
    """A version this consumer will not serve: `reason` is a short label (metrics), `message` one line for the log."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def followed_alias(uri: str) -> tuple[str, str] | None:
    """(registered model name, alias) that `uri` follows; None for a URI that names one version."""
    match = REGISTRY_URI.fullmatch(uri.strip())
    if match is None or match["version"] or MODEL_ID.fullmatch(match["name"]):
        return None
    return match["name"], match["alias"] or CHAMPION_ALIAS


def interval_of(text: str | float | None) -> float:
    """The check interval in seconds from a flag or environment value; 0 turns polling off (webhooks only)."""
    if text is None or text == "":
        return DEFAULT_INTERVAL_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"the follow interval must be a number of seconds, got {text!r}") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"the follow interval must be 0 (webhooks only) or more seconds, got {text!r}")
    return seconds


def loading_refusal(error: Exception) -> Refused:
    """The Refused for a version that does not resolve or load (serve.model_uri.ModelUriError and its subclasses)."""
    return Refused("unloadable", first_line(error))


def same_outputs(current_classes, current_task, candidate_classes, candidate_task) -> None:
    """Refused unless the candidate answers the same task over the same classes, in the same order."""
    if current_task != candidate_task:
        raise Refused("incompatible", f"answers a {candidate_task} task, the served model a {current_task} one")
    if list(current_classes) != list(candidate_classes):
        raise Refused(
            "incompatible",
            f"answers classes {', '.join(candidate_classes)}; the served model {', '.join(current_classes)}",
        )


class FollowMetrics:
    """The follower's Prometheus series, on the consumer's registry (the app's and the PACS worker's /metrics)."""

    def __init__(self, registry, name: str, alias: str):
        from prometheus_client import Counter, Gauge

        self.name, self.alias = name, alias
        self.served = Gauge(
            "medimg_model_served_version",
            "Registry version of the model that answers now (its MLflow model id as a label)",
            [MODEL_NAME_COLUMN, MODEL_ID_COLUMN],
            registry=registry,
        )
        self.target = Gauge(
            "medimg_model_target_version",
            "Registry version the followed alias pointed at when last checked",
            [MODEL_NAME_COLUMN, "alias"],
            registry=registry,
        )
        self.swaps = Counter("medimg_model_swaps", "Versions swapped in without a restart", registry=registry)
        self.refusals = Counter(
            "medimg_model_swap_refusals", "Alias targets refused, by reason", ["reason"], registry=registry
        )
        self.checks = Counter(
            "medimg_model_alias_checks",
            "Checks of the followed alias, by trigger and outcome",
            ["trigger", "outcome"],
            registry=registry,
        )
        for reason in ("unloadable", "incompatible", "warm_up_failed"):
            self.refusals.labels(reason)

    def serving(self, resolved: ResolvedModel) -> None:
        self.served.clear()
        self.served.labels(self.name, resolved.model_id).set(float(resolved.version or "nan"))

    def targeting(self, version: str) -> None:
        self.target.labels(self.name, self.alias).set(float(version or "nan"))


class Follower(Generic[Model]):
    """The one reference to the model a consumer serves, kept in step with the registry (module docstring)."""

    def __init__(
        self,
        uri: str,
        current: Model,
        *,
        load: Callable[[ResolvedModel, Model], Model],
        resolved_of: Callable[[Model], ResolvedModel],
        interval: float = DEFAULT_INTERVAL_SECONDS,
        metrics: FollowMetrics | None = None,
        on_swap: Callable[[Model, Model], None] | None = None,
        resolve: Callable[[str], ResolvedModel] = resolve_model_uri,
        logger: logging.Logger = log,
    ):
        """load(target, current) -> the new model, or Refused; resolved_of(model) -> its serve.model_uri.ResolvedModel;
        logger: where swaps and refusals are logged (the PACS worker's own logger passes its privacy filter)."""
        self.uri, self._current = uri, current
        self.load, self.resolved_of, self.resolve = load, resolved_of, resolve
        self.interval, self.metrics, self.on_swap, self.log = float(interval), metrics, on_swap, logger
        self.alias = followed_alias(uri)
        self.swaps, self.refusals = 0, 0
        self._refused: tuple[str, float] | None = None
        self._last_error = ""
        self._wake, self._stopped = threading.Event(), threading.Event()
        # What woke the checking thread: `poll` (the interval ran out) or `webhook` (trigger).
        self._trigger = "poll"
        self._check_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if metrics is not None:
            metrics.serving(resolved_of(current))
            metrics.targeting(resolved_of(current).version)

    @property
    def current(self) -> Model:
        """The model that answers now: take it once per request (or study) and use that object to the end."""
        return self._current

    @property
    def follows(self) -> bool:
        return self.alias is not None

    def describe(self) -> dict:
        """What /info says: the followed alias, the interval and the counts."""
        name, alias = self.alias or ("", "")
        return {
            "follows": f"{name}@{alias}" if self.follows else "",
            "interval_seconds": self.interval if self.follows else None,
            "swaps": self.swaps,
            "refusals": self.refusals,
        }

    def start(self) -> Follower:
        """Start the checking thread (for a URI that follows an alias); returns self."""
        if self.follows and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="medimg-follower", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def trigger(self) -> bool:
        """Check at once (a registry webhook said the alias moved); False when this URI follows nothing."""
        if self.follows:
            self._trigger = "webhook"
            self._wake.set()
        return self.follows

    def _loop(self) -> None:
        while not self._stopped.is_set():
            # interval 0: no polling, webhooks only.
            self._wake.wait(self.interval if self.interval > 0 else None)
            trigger = self._trigger if self._wake.is_set() else "poll"
            self._wake.clear()
            self._trigger = "poll"
            if self._stopped.is_set():
                return
            try:
                self.check(trigger)
            except Exception as error:  # The thread must outlive any surprise; the old model keeps serving.
                self.log.error("alias check failed: %s", type(error).__name__)

    def check(self, trigger: str = "poll") -> str:
        """Resolve the alias and swap when it moved: `unchanged`, `swapped`, `refused`, `skipped` or `error`."""
        with self._check_lock:
            outcome = self._check()
        if self.metrics is not None:
            self.metrics.checks.labels(trigger, outcome).inc()
        return outcome

    def _check(self) -> str:
        try:
            target = self.resolve(self.uri)
        except ModelUriError as error:
            if first_line(error) != self._last_error:
                self._last_error = first_line(error)
                self.log.warning("cannot check %s (the served version keeps answering): %s", self.uri, self._last_error)
            return "error"
        self._last_error = ""
        if self.metrics is not None:
            self.metrics.targeting(target.version)
        current = self._current
        if target.version == self.resolved_of(current).version:
            self._refused = None
            return "unchanged"
        if self._refused is not None and self._refused[0] == target.version and time.monotonic() < self._refused[1]:
            return "skipped"
        return self._swap_to(target, current)

    def _swap_to(self, target: ResolvedModel, current: Model) -> str:
        started = time.monotonic()
        try:
            candidate = self.load(target, current)
        except Refused as refused:
            retry = max(RETRY_INTERVALS * self.interval, MINIMUM_RETRY_SECONDS)
            self._refused = (target.version, time.monotonic() + retry)
            self.refusals += 1
            if self.metrics is not None:
                self.metrics.refusals.labels(refused.reason).inc()
            self.log.warning(
                "refused %s (%s): %s; %s keeps answering",
                target.label,
                refused.reason,
                refused.message,
                self.resolved_of(current).label,
            )
            return "refused"
        self._current = candidate
        self._refused = None
        self.swaps += 1
        if self.metrics is not None:
            self.metrics.swaps.inc()
            self.metrics.serving(target)
        if self.on_swap is not None:
            self.on_swap(current, candidate)
        self.log.info(
            "now serving %s (was %s): loaded, warmed up and checked in %.1f s",
            target.label,
            self.resolved_of(current).label,
            time.monotonic() - started,
        )
        del current, candidate
        # The old model goes once the requests that hold it finish; collect it now rather than at some later time.
        gc.collect()
        return "swapped"
