"""Evaluates versions registered by hand: reads MLflow's signed `model_version.created` webhooks for one registered model, writes one pipeline log per version; runs `python -m train pipeline` on each.

    export MEDIMG_WEBHOOK_SECRET=...   # the secret the webhook was registered with
    python -m train.release.watch --registered-model chest --host 127.0.0.1 --port 8091
    python -m serve.webhooks register --url http://127.0.0.1:8091/webhooks/mlflow --model chest

`POST /webhooks/mlflow` verifies each delivery (serve.webhooks.WebhookVerifier: a wrong or missing signature,
a stale or replayed delivery is a 401) and answers at once; a new version of the followed model that carries
no `medimg.registered_by` creation tag (it came from a notebook or `mlflow.register_model`, not from medimg)
is queued, and a worker runs `python -m train pipeline --challenger models:/NAME/N --registered-model NAME` on
the queued versions one at a time: evaluated against @champion on the same frozen test split, compared,
promoted or not, the decision tagged on that version. Other models' events and medimg's own versions are
answered 200 and ignored. `GET /health` says what is queued, running and finished.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations (Request) at run time.
import argparse
import contextlib
import logging
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from serve.common import ConfigError, first_line, stop_process_group
from serve.webhooks import (
    MODEL_VERSION_CREATED,
    RECEIVER_PATH,
    WebhookRejected,
    WebhookVerifier,
    secret_from_environment,
)
from train.tracking import names

logger = logging.getLogger("medimg.watch")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8091
DEFAULT_LOG_DIR = "watch-logs"
# A registered model name becomes part of a log file name: anything but these characters is replaced.
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class Outcome:
    """A version the watcher put through the pipeline: its exit code (None while running) and log file."""

    version: str
    log: str
    exit_code: int | None = None


@dataclass
class Watcher:
    """The queue of hand-registered versions of one registered model and the worker that runs the pipeline on them."""

    registered_model: str
    log_dir: Path
    pipeline_args: list[str] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def __post_init__(self):
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._worker = threading.Thread(target=self._work, name="pipeline-worker", daemon=True)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()

    def stop(self) -> None:
        """Stop taking versions; a pipeline still running is stopped with its process group."""
        self._queue.put(None)
        with self._lock:
            process = self._process
        if process is not None:
            stop_process_group(process)

    def submit(self, version: str) -> bool:
        """Queue a version once; False when it is queued, running or done already."""
        log = self.log_dir / f"{UNSAFE_NAME.sub('_', self.registered_model)}-{version}.log"
        with self._lock:
            if version in self.outcomes:
                return False
            self.outcomes[version] = Outcome(version, str(log))
        self._queue.put(version)
        return True

    def command(self, version: str) -> list[str]:
        challenger = f"models:/{self.registered_model}/{version}"
        command = [sys.executable, "-m", "train", "pipeline", "--challenger", challenger]
        return command + ["--registered-model", self.registered_model, *self.pipeline_args]

    def status(self) -> dict:
        with self._lock:
            outcomes = [vars(outcome).copy() for outcome in self.outcomes.values()]
        return {"registered_model": self.registered_model, "queued": self._queue.qsize(), "versions": outcomes}

    def _work(self) -> None:
        while (version := self._queue.get()) is not None:
            outcome = self.outcomes[version]
            logger.info("pipeline on %s version %s started (log %s)", self.registered_model, version, outcome.log)
            try:
                code = self._run(version, Path(outcome.log))
            except OSError as error:
                logger.error("pipeline on version %s could not start: %s", version, first_line(error))
                code = -1
            with self._lock:
                outcome.exit_code = code
            logger.info("pipeline on %s version %s exited with %s", self.registered_model, version, code)

    def _run(self, version: str, log: Path) -> int:
        # Its own process group, so stopping the watcher stops the pipeline and whatever it started.
        with open(log, "ab") as output:
            process = subprocess.Popen(
                self.command(version),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
                start_new_session=True,
            )
        with self._lock:
            self._process = process
        try:
            return process.wait()
        finally:
            with self._lock:
                self._process = None


def triage(watcher: Watcher, event) -> tuple[str, str]:
    """What a verified event means for the watcher: ('queued' | 'ignored', why)."""
    where = f"{event.name} version {event.version or '-'}"
    if event.name != watcher.registered_model:
        return "ignored", f"{event.kind} of {where}: not the watched model"
    if event.kind != MODEL_VERSION_CREATED:
        return "ignored", f"{event.kind} of {where}: only new versions are evaluated"
    if names.REGISTERED_BY_TAG in event.tags:
        return "ignored", f"{where} was registered by medimg's {event.tags[names.REGISTERED_BY_TAG]}"
    if not event.version.isdigit():
        return "ignored", f"{where}: not a version number"
    if not watcher.submit(event.version):
        return "ignored", f"{where} is queued or evaluated already"
    return "queued", f"{where} registered by hand: queued for the pipeline"


def build_app(watcher: Watcher, verifier: WebhookVerifier):
    """The FastAPI app: the webhook receiver and /health; the watcher's worker lives as long as the app."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        watcher.start()
        yield
        watcher.stop()

    app = FastAPI(title="medimg watch", lifespan=lifespan)

    @app.post(RECEIVER_PATH)
    async def receive(request: Request):
        body = await request.body()
        try:
            event = verifier.verify(request.headers, body)
        except WebhookRejected as rejected:
            logger.warning("webhook delivery rejected (%s): %s", rejected.reason, rejected)
            return JSONResponse({"error": rejected.reason}, status_code=401)
        outcome, why = triage(watcher, event)
        logger.info("webhook %s: %s", outcome, why)
        return JSONResponse({"outcome": outcome, "reason": why})

    @app.get("/health")
    async def health():
        return watcher.status()

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.release.watch",
        description="Receive MLflow registry webhooks and put each version registered by hand through the pipeline "
        "(the secret is $MEDIMG_WEBHOOK_SECRET; the tracking store is $MLFLOW_TRACKING_URI).",
    )
    parser.add_argument("--registered-model", required=True, help="the registered model whose new versions to evaluate")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s)")
    parser.add_argument(
        "--log-dir", default=DEFAULT_LOG_DIR, help="folder of the pipelines' logs (default: %(default)s)"
    )
    parser.add_argument(
        "--pipeline-args", default="", help="more flags for python -m train pipeline, e.g. '--margin 0.01'"
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        verifier = WebhookVerifier(secret_from_environment())
    except ConfigError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=arguments.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    watcher = Watcher(arguments.registered_model, Path(arguments.log_dir), shlex.split(arguments.pipeline_args))
    import uvicorn

    uvicorn.run(build_app(watcher, verifier), host=arguments.host, port=arguments.port, log_level=arguments.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
