"""The clinician page and operator metrics of one served model: reads an MLflow model and uploaded images (in memory only), writes the page, JSON answers and Prometheus metrics over HTTP.

    python -m serve.app --model models:/demo-classifier@champion --port 8080

Routes: `GET /` the page (serve/static/), `POST /predict` one multipart upload (field `file`) scored by
the model's own pyfunc, the same bytes-to-answer path as `mlflow models serve`; query parameters are
the model's params (`explain`, `explain_class`, `threshold`, ...). `GET /info` the model, its
classes and its monitoring (reference `available` or `none`, window, figures), `GET /health`,
`GET /metrics` (Prometheus, with the drift gauges of serve.monitoring over the last
`--monitoring-window` answers), and MLflow's scoring protocol on the same loaded model (`POST /invocations`,
`GET /ping`, `GET /version`, answered by MLflow's own scoring app exactly as `mlflow models serve` answers).
Uploaded images are never written to disk or logs.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at run time.
import argparse
import base64
import os
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serve.common import first_line
from serve.concepts import concepts_of
from serve.contract import (
    CONCEPT_FIELD,
    EXPLAIN_PARAM,
    PREDICTED_COLUMN,
    THRESHOLD_PARAM,
    split_labels,
    threshold_column,
)
from serve.following import (
    DEFAULT_INTERVAL_SECONDS,
    INTERVAL_ENVIRONMENT,
    Follower,
    FollowMetrics,
    Refused,
    followed_alias,
    interval_of,
    loading_refusal,
    same_outputs,
)
from serve.loaded import LoadedModel, Rejected
from serve.model_uri import ModelUriError, ResolvedModel
from serve.monitoring import DEFAULT_WINDOW
from serve.webhooks import RECEIVER_PATH, SECRET_ENVIRONMENT

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_UPLOAD_MB = 50
STATIC_DIR = Path(__file__).resolve().with_name("static")
MODEL_ENVIRONMENT = "MEDIMG_MODEL_URI"
PORT_ENVIRONMENT = "MEDIMG_PORT"
# The tracking server's convention (mlflow_server/): MLFLOW_AUTH=true turns auth on; clients log in with
# MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; compose hands the admin password over as a file.
AUTH_ENVIRONMENT = "MLFLOW_AUTH"
USERNAME_ENVIRONMENTS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_ADMIN_USERNAME")
PASSWORD_ENVIRONMENT = "MLFLOW_TRACKING_PASSWORD"
PASSWORD_FILE_ENVIRONMENT = "MLFLOW_ADMIN_PASSWORD_FILE"
DEFAULT_USERNAME = "admin"
# The receiver of MLflow registry webhooks (serve.webhooks): a check of the followed alias at once.
WEBHOOK_ROUTE = RECEIVER_PATH
# Routes that answer without a password: container health checks cannot log in; webhooks carry their own signature.
PUBLIC_ROUTES = ("/health", "/ping", WEBHOOK_ROUTE)
# Bytes read and thrown away after an oversize upload, so the client sees the 413 instead of a reset.
DRAIN_BYTES = 256 * 1024 * 1024
UPLOAD_FIELD = "file"
# The shared secret of the registry webhook; set: POST /webhooks/mlflow is open.
WEBHOOK_SECRET_ENVIRONMENT = SECRET_ENVIRONMENT


class Rejection(Exception):
    """A request the app answers with `status` and a one-line `message`; `reason` labels the rejection metric."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class ModelInfo:
    """What the page and /metrics say about the served model; name and version are empty for run or path URIs."""

    uri: str
    name: str = ""
    version: str = ""
    aliases: list[str] = field(default_factory=list)
    run_id: str = ""
    model_id: str = ""

    @classmethod
    def of(cls, resolved) -> "ModelInfo":
        """From a serve.model_uri.ResolvedModel."""
        return cls(
            uri=resolved.uri,
            name=resolved.name,
            version=resolved.version,
            aliases=list(resolved.aliases),
            run_id=resolved.run_id,
            model_id=resolved.model_id,
        )

    def resolved(self) -> ResolvedModel:
        """As a serve.model_uri.ResolvedModel (for a model loaded by hand, its URI is also the one it was loaded from)."""
        return ResolvedModel(
            uri=self.uri,
            load_uri=self.uri,
            name=self.name,
            version=self.version,
            model_id=self.model_id,
            run_id=self.run_id,
            aliases=tuple(self.aliases),
        )


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def accepts(self, authorization: str | None) -> bool:
        """Whether an `Authorization: Basic ...` header carries these credentials (compared in constant time)."""
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, _, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(username.encode(), self.username.encode()) & secrets.compare_digest(
            password.encode(), self.password.encode()
        )


def credentials_from_environment(environment: Mapping[str, str]) -> Credentials:
    """The page's user and password, by the tracking server's convention; ValueError names what to set."""
    username = next((environment[name] for name in USERNAME_ENVIRONMENTS if environment.get(name)), DEFAULT_USERNAME)
    password = environment.get(PASSWORD_ENVIRONMENT, "")
    if not password and environment.get(PASSWORD_FILE_ENVIRONMENT):
        with open(environment[PASSWORD_FILE_ENVIRONMENT], encoding="utf-8") as handle:
            password = handle.readline().strip()
    if not password:
        raise ValueError(
            f"--auth needs a password: set {PASSWORD_ENVIRONMENT} (exported by "
            f'`eval "$(python -m mlflow_server up --auth)"`) or {PASSWORD_FILE_ENVIRONMENT}'
        )
    return Credentials(username, password)


class ServedModel:
    """The app's view of one loaded model (serve.loaded.LoadedModel): typed query params, the page's answer, /info."""

    def __init__(self, model, info: ModelInfo | None = None):
        """model: a serve.loaded.LoadedModel, or a loaded pyfunc with its ModelInfo (a model made by hand)."""
        if not isinstance(model, LoadedModel):
            model = LoadedModel(model, info.resolved())
        self.model = model
        self.info = info if info is not None else ModelInfo.of(model.resolved)
        self.pyfunc = model.pyfunc
        self.param_specs = model.param_specs
        self.classes = model.classes
        self.default_threshold = model.default_threshold
        # The medimg pyfunc's ClassifierConfig (its monitoring reference); None for other pyfuncs.
        self.config = model.config
        # Each output's coded concept, as the PACS worker's SR and the model card name it (none for other pyfuncs).
        # Whether prepare() has warmed it up: a second app around the same model does not trace it again.
        self.warmed = False
        self.concepts = (
            dict(zip(self.config.output_columns, concepts_of(self.config), strict=True)) if self.config else {}
        )

    def monitor(self, window: int):
        """A serve.monitoring.DriftMonitor of this model (without a reference for models logged before them)."""
        from serve.monitoring import DriftMonitor, ModelReference

        return DriftMonitor(ModelReference.from_config(self.config), self.classes, window)

    def prepare(self, window: int) -> "ServedModel":
        """Made ready to answer in one app: a fresh drift monitor over `window` answers and MLflow's scoring app on its
        pyfunc; warmed up on its own input example once (Rejection when it cannot answer it). Returns self."""
        from mlflow.pyfunc.scoring_server import init as mlflow_scoring_app

        self.drift = self.monitor(window)
        self.scoring_app = mlflow_scoring_app(self.pyfunc)
        if not self.warmed:
            warm_up(self)
            self.warmed = True
        return self

    @property
    def explains(self) -> bool:
        """Whether the model takes the `explain` param (models logged before it existed do not)."""
        return self.model.explains

    def request_params(self, query: dict[str, str]) -> dict:
        """Query parameters typed by the model's param schema; an unknown name or a bad value is a 400."""
        params = {}
        for name, text in query.items():
            spec = self.param_specs.get(name)
            if spec is None:
                accepted = ", ".join(self.param_specs) or "none"
                raise Rejection(400, "bad_param", f"unknown parameter {name!r}; this model takes: {accepted}")
            params[name] = typed_param(name, text, spec.dtype.name)
        return params

    def answer(self, data: bytes, params: dict) -> dict:
        """The model's answer for one image: its row, each finding against its operating point, the predicted labels."""
        try:
            row = self.model.score(data, params)
        except Rejected as rejected:
            raise rejection_of(rejected) from None
        row = {key: json_value(value) for key, value in row.items()}
        threshold = params.get(THRESHOLD_PARAM, self.default_threshold)
        findings = []
        for name in (name for name in self.classes if name in row):
            # The operating point the answer used for the class wins over the request's or the model's threshold;
            # a multi-class answer has none (its most probable class is the prediction).
            operating_point = row.get(threshold_column(name), threshold)
            operating_point = None if operating_point is None else float(operating_point)
            probability = row[name]
            above = None if probability is None or operating_point is None else probability >= operating_point
            concept = self.concepts.get(name)
            findings.append(
                {
                    "name": name,
                    "probability": probability,
                    THRESHOLD_PARAM: operating_point,
                    "above_threshold": above,
                    CONCEPT_FIELD: concept.answered() if concept is not None else None,
                }
            )
        return {
            "model": asdict(self.info),
            "answer": row,
            "findings": findings,
            PREDICTED_COLUMN: split_labels(row.get(PREDICTED_COLUMN)),
        }

    def describe(self, max_upload_bytes: int) -> dict:
        params = {name: {"type": spec.dtype.name, "default": spec.default} for name, spec in self.param_specs.items()}
        return {
            "model": asdict(self.info),
            "classes": self.classes,
            THRESHOLD_PARAM: self.default_threshold,
            "params": params,
            "explains": self.explains,
            "max_upload_bytes": max_upload_bytes,
        }


def typed_param(name: str, text: str, type_name: str):
    """One query-string value as the param's MLflow type (boolean, long, integer, double, float or string)."""
    try:
        if type_name == "boolean":
            if text.strip().lower() not in ("true", "false"):
                raise ValueError(text)
            return text.strip().lower() == "true"
        if type_name in ("long", "integer"):
            return int(text)
        if type_name in ("double", "float"):
            return float(text)
    except ValueError:
        raise Rejection(400, "bad_param", f"parameter {name!r} must be a {type_name}, got {text!r}") from None
    return text


def rejection_of(rejected: Rejected) -> Rejection:
    """The HTTP answer for a model that did not answer (serve.loaded.Rejected); never carries image data."""
    if not rejected.fault:
        return Rejection(400, rejected.reason, rejected.message)
    # The log names the failure and where it happened, never its message (it could quote request content).
    print(f"prediction failed: {rejected.message} at {rejected.origin}", file=sys.stderr, flush=True)
    return Rejection(500, "internal_error", "the model failed on this image; the server log names the error type")


def json_value(value):
    """A pandas cell as a JSON value: NumPy scalars become Python numbers, NaN becomes null."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


class UploadParser:
    """Collects the bytes of the multipart field `file` in memory.

    Starlette's form parser spools uploads over 1 MB to a temporary file; patient images must never
    touch the disk, so this feeds python-multipart's streaming parser and keeps the part in a bytearray.
    """

    def __init__(self, content_type: str):
        from python_multipart.multipart import MultipartParser, parse_options_header

        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not options.get(b"boundary"):
            raise Rejection(
                400, "not_multipart", f"send the image as multipart/form-data in a field named '{UPLOAD_FIELD}'"
            )
        self.file: bytearray | None = None
        self._current: bytearray | None = None
        self._header_name, self._header_value, self._disposition = b"", b"", b""
        callbacks = {
            "on_part_begin": self._begin,
            "on_header_field": self._header_name_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
        }
        self.parser = MultipartParser(options[b"boundary"], callbacks)

    def _begin(self) -> None:
        self._current, self._disposition = None, b""

    def _header_name_data(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == UPLOAD_FIELD.encode() and self.file is None:
            self.file = self._current = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._current is not None:
            self._current.extend(data[start:end])

    def write(self, chunk: bytes | None) -> None:
        """Feed the parser the next chunk of the body; None ends the body."""
        from python_multipart.exceptions import FormParserError

        try:
            if chunk is None:
                self.parser.finalize()
            else:
                self.parser.write(chunk)
        except FormParserError:
            raise Rejection(400, "bad_upload", "the multipart upload is malformed") from None

    def finish(self) -> bytes:
        """The file's bytes once the whole body was written."""
        self.write(None)
        if self.file is None:
            raise Rejection(400, "no_file", f"the upload has no field '{UPLOAD_FIELD}'; choose an image file")
        if not self.file:
            raise Rejection(400, "empty_file", "the file is empty")
        return bytes(self.file)


async def read_upload(request, limit: int) -> bytes:
    """The uploaded file's bytes; 413 past `limit` request bytes, read (and dropped) to the end so the client sees it."""
    parser = UploadParser(request.headers.get("content-type", ""))
    too_large = Rejection(413, "too_large", f"the upload is larger than the limit of {limit / 1e6:g} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
        raise too_large
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            parser = None
            if received > limit + DRAIN_BYTES:
                break
            continue
        parser.write(chunk)
    if parser is None:
        raise too_large
    return parser.finish()


def create_app(
    served: "ServedModel | Follower",
    *,
    max_upload_bytes: int,
    credentials: Credentials | None = None,
    monitoring_window: int = DEFAULT_WINDOW,
    webhook_secret: str = "",
):
    """The FastAPI application around one served model, or the model a serve.following.Follower keeps in step with
    its alias (started and stopped with the app); app.state holds its metrics and its follower.

    Every request takes the follower's current model once and is answered by that one version to the end.
    With `webhook_secret`, `POST /webhooks/mlflow` takes signed MLflow registry webhooks and checks the alias at once.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    from serve.metrics import AppMetrics

    follower = served if isinstance(served, Follower) else fixed_follower(served.prepare(monitoring_window))
    first = follower.current

    @asynccontextmanager
    async def lifespan(_app):
        follower.start()
        yield
        follower.stop()

    app = FastAPI(title="medimg", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    metrics = AppMetrics(model_labels(first), first.classes)
    metrics.registry.register(CurrentModelMonitor(follower))
    if follower.follows:
        follower.metrics = FollowMetrics(metrics.registry, *follower.alias)
        follower.metrics.serving(first.model.resolved)
        follower.metrics.targeting(first.model.resolved.version)
        follower.on_swap = lambda _old, new: metrics.model.info(model_labels(new))
    app.state.metrics, app.state.follower = metrics, follower
    add_routes(app, follower, metrics, max_upload_bytes, credentials)
    if webhook_secret:
        add_webhook_route(app, follower, metrics, webhook_secret)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # MLflow's own scoring app (/invocations, /ping, /version) on the current model, mounted last so that the
    # app's routes win (/health answers with the model's name and version, still 200 when ready).
    app.mount("/", CurrentScoringApp(follower), name="mlflow")
    return app


def model_labels(served: ServedModel) -> dict[str, str]:
    """The labels of medimg_model_info for a served model."""
    info = served.info
    return {
        "name": info.name,
        "version": info.version,
        "aliases": ",".join(info.aliases),
        "uri": info.uri,
        "reference": served.drift.reference_state,
    }


def add_routes(app, follower, metrics, max_upload_bytes: int, credentials: Credentials | None) -> None:
    """The page, /info, /health, /metrics and /predict; each request reads `follower.current` once."""
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.background import BackgroundTask

    from serve.metrics import route_label

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        started = time.perf_counter()
        if (
            credentials is not None
            and request.url.path not in PUBLIC_ROUTES
            and not credentials.accepts(request.headers.get("authorization"))
        ):
            response = Response(
                "authentication required\n", status_code=401, headers={"WWW-Authenticate": 'Basic realm="medimg"'}
            )
        else:
            response = await call_next(request)
        route = route_label(request.url.path)
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/")
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @app.get("/info")
    async def info():
        served = follower.current
        return {
            **served.describe(max_upload_bytes),
            "monitoring": served.drift.describe(),
            "following": follower.describe(),
        }

    @app.get("/health")
    async def health():
        served = follower.current
        return {"status": "ok", "model": {"name": served.info.name, "version": served.info.version}}

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/predict")
    async def predict(request: Request):
        # One model for the whole request, however the alias moves meanwhile.
        served = follower.current
        try:
            params = served.request_params(dict(request.query_params))
            data = await read_upload(request, max_upload_bytes)
            started = time.perf_counter()
            answer = await run_in_threadpool(served.answer, data, params)
        except Rejection as rejection:
            if rejection.status < 500:
                metrics.rejected.labels(rejection.reason).inc()
            content = {"error": rejection.message, "reason": rejection.reason}
            return JSONResponse(content, status_code=rejection.status, headers=NO_STORE)
        metrics.observe_answer(answer, bool(params.get(EXPLAIN_PARAM)), time.perf_counter() - started)
        monitor = served.drift
        monitor.observe(answer["answer"])
        # The monitor reads the image's statistics after the answer has left, so they cost the user no time.
        watch = BackgroundTask(observe_upload, monitor, answer["answer"], data) if monitor.compares_images else None
        return JSONResponse(answer, headers=NO_STORE, background=watch)


def add_webhook_route(app, follower, metrics, secret: str) -> None:
    """`POST /webhooks/mlflow`: a signed MLflow registry webhook about the followed model triggers an alias check
    (after the reply); a missing header, a wrong signature, a stale or replayed delivery is a 401 and changes nothing."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    from serve.webhooks import WebhookRejected, WebhookVerifier

    verifier = WebhookVerifier(secret)
    name = follower.alias[0] if follower.follows else ""

    @app.post(WEBHOOK_ROUTE)
    async def registry_webhook(request: Request):
        body = await request.body()
        try:
            event = verifier.verify(request.headers, body)
        except WebhookRejected as rejected:
            metrics.webhooks.labels(rejected.reason).inc()
            return JSONResponse({"error": str(rejected), "reason": rejected.reason}, status_code=401)
        if not name or event.name != name or not event.kind.startswith("model_version_alias."):
            metrics.webhooks.labels("ignored").inc()
            return JSONResponse({"checked": False, "why": "not an alias event of the followed model"})
        follower.trigger()
        metrics.webhooks.labels("accepted").inc()
        return JSONResponse({"checked": True}, status_code=202)


class CurrentModelMonitor:
    """A Prometheus collector of the current model's drift monitor (serve.monitoring), labelled with its version."""

    def __init__(self, follower):
        self.follower = follower

    def describe(self):
        return []

    def collect(self):
        from serve.contract import MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN
        from serve.monitoring import MonitoringCollector

        served = self.follower.current
        labels = {MODEL_NAME_COLUMN: served.info.name, MODEL_VERSION_COLUMN: served.info.version}
        yield from MonitoringCollector(served.drift, labels).collect()


class CurrentScoringApp:
    """MLflow's scoring app (/invocations, /ping, /version) of the model that answers now (ASGI)."""

    def __init__(self, follower):
        self.follower = follower

    async def __call__(self, scope, receive, send):
        await self.follower.current.scoring_app(scope, receive, send)


def fixed_follower(served: ServedModel) -> "Follower":
    """A Follower that never moves: the app of a model loaded by hand, or of a URI that names one version."""
    return Follower("", served, load=refuse_any, resolved_of=resolved_of)


def refuse_any(_target, _current):
    raise Refused("fixed", "this app serves one fixed model")


def resolved_of(served: ServedModel) -> ResolvedModel:
    return served.model.resolved


def observe_upload(monitor, row: dict, data: bytes) -> None:
    """Add the image statistics of one answered upload to the drift monitor (serve.monitoring)."""
    stats = monitor.image_statistics(data, answer_row=row)
    if stats is not None:
        monitor.observe_image(stats)


# Answers carry images derived from patient data: no cache may keep them.
NO_STORE = {"Cache-Control": "no-store"}
# The page loads nothing from elsewhere; its images are blob: (the chosen file) or data: (the answer).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def warm_up(served: ServedModel) -> None:
    """One answer on the model's own input example before it serves, so the first user does not wait for TensorFlow
    to trace the model; Rejection when the model cannot answer it."""
    try:
        served.model.warm_up()
    except Rejected as rejected:
        raise rejection_of(rejected) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve.app",
        description="Serve one registered model as a clinician page (GET /), a JSON API (POST /predict) and Prometheus metrics.",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENVIRONMENT, ""),
        help=f"model URI: models:/NAME@ALIAS, models:/NAME/VERSION, or models:/NAME (@champion if set, else the latest version); default ${MODEL_ENVIRONMENT}",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"interface to bind (default: {DEFAULT_HOST}; 0.0.0.0 for all)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=os.environ.get(PORT_ENVIRONMENT, DEFAULT_PORT),
        help=f"port (default: ${PORT_ENVIRONMENT}, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest upload in MB; bigger ones get HTTP 413 (default: {DEFAULT_MAX_UPLOAD_MB})",
    )
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get(AUTH_ENVIRONMENT, "").lower() == "true",
        help=f"require HTTP basic auth with the tracking server's credentials: user ${USERNAME_ENVIRONMENTS[0]} (default {DEFAULT_USERNAME}), "
        f"password ${PASSWORD_ENVIRONMENT} or the file ${PASSWORD_FILE_ENVIRONMENT} (default: on when ${AUTH_ENVIRONMENT}=true)",
    )
    parser.add_argument(
        "--monitoring-window",
        type=int,
        default=DEFAULT_WINDOW,
        help=f"recent answers the drift figures of /metrics cover (default: {DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--follow-seconds",
        default=os.environ.get(INTERVAL_ENVIRONMENT, ""),
        help=f"for models:/NAME@ALIAS (or models:/NAME): check the alias every this many seconds and swap in the "
        f"version it points at without a restart; 0: only when a registry webhook says so (default: "
        f"${INTERVAL_ENVIRONMENT}, else {DEFAULT_INTERVAL_SECONDS:g}); a URI naming a version is never followed",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        if not arguments.model:
            raise ValueError(f"no model: pass --model models:/NAME@champion or set {MODEL_ENVIRONMENT}")
        if arguments.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb must be positive, got {arguments.max_upload_mb:g}")
        if arguments.monitoring_window < 1:
            raise ValueError(f"--monitoring-window must be at least 1 answer, got {arguments.monitoring_window}")
        credentials = credentials_from_environment(os.environ) if arguments.auth else None
        if credentials is not None and not os.environ.get(PASSWORD_ENVIRONMENT):
            # The same admin reads models from a tracking server that has auth on.
            os.environ.setdefault(USERNAME_ENVIRONMENTS[0], credentials.username)
            os.environ[PASSWORD_ENVIRONMENT] = credentials.password
        interval = interval_of(arguments.follow_seconds)
        webhook_secret = os.environ.get(WEBHOOK_SECRET_ENVIRONMENT, "")
        if webhook_secret and followed_alias(arguments.model) is None:
            raise ValueError(
                f"{WEBHOOK_SECRET_ENVIRONMENT} is set but {arguments.model} names one version: "
                "webhooks move aliases; serve models:/NAME@ALIAS to follow one"
            )
        served = load_served_model(arguments.model, arguments.monitoring_window)
    except (ValueError, OSError) as error:
        print(f"error: {first_line(error, limit=None)}", file=sys.stderr)
        return 2
    import logging

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(
        following(served, arguments.model, interval, arguments.monitoring_window),
        max_upload_bytes=int(arguments.max_upload_mb * 1e6),
        credentials=credentials,
        monitoring_window=arguments.monitoring_window,
        webhook_secret=webhook_secret,
    )
    follows = app.state.follower.describe()["follows"]
    label = f"{served.info.name} version {served.info.version}" if served.info.name else served.info.uri
    if follows:
        label += f", following {follows} every {interval:g} s" if interval else f", following {follows} by webhook"
    print(f"serving {label} on http://{arguments.host}:{arguments.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level=arguments.log_level)
    return 0


def load_served_model(uri: str, window: int = DEFAULT_WINDOW) -> ServedModel:
    """Resolve, load and warm up the model; ValueError with one line when it cannot be found or loaded."""
    served = ServedModel(LoadedModel.load(uri))
    try:
        return served.prepare(window)
    except Rejection as rejection:
        raise ValueError(f"{uri} failed its first prediction: {rejection.message}") from None


def load_candidate(target: ResolvedModel, current: ServedModel, window: int) -> ServedModel:
    """The version an alias moved to, loaded, checked against the served one and warmed up; Refused when it cannot
    take its place (it does not load, answers another task or other classes, or fails its own input example)."""
    try:
        candidate = ServedModel(LoadedModel.load(target.uri, target))
    except ModelUriError as error:
        raise loading_refusal(error) from None
    except Exception as error:  # Whatever a broken model's loader raises: the served model must keep answering.
        raise Refused("unloadable", f"{type(error).__name__}: {first_line(error)}") from None
    same_outputs(current.classes, task_of(current), candidate.classes, task_of(candidate))
    try:
        return candidate.prepare(window)
    except Rejection as rejection:
        raise Refused("warm_up_failed", rejection.message) from None


def task_of(served: ServedModel) -> str:
    return served.config.task if served.config is not None else ""


def following(served: ServedModel, uri: str, interval: float, window: int):
    """The app's Follower of `uri` (an alias URI) around the first loaded model, else the model itself."""
    if followed_alias(uri) is None:
        return served
    return Follower(
        uri,
        served,
        load=lambda target, current: load_candidate(target, current, window),
        resolved_of=resolved_of,
        interval=interval,
    )


if __name__ == "__main__":
    sys.exit(main())
