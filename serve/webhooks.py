"""MLflow registry webhooks: reads signed deliveries (headers and body) and $MEDIMG_WEBHOOK_SECRET, writes nothing but the webhook it registers on a tracking server.

A receiver (the app's `POST /webhooks/mlflow`, `python -m train.release.watch`) holds one
`WebhookVerifier` and calls `verify(headers, body)` on every delivery: it returns the `RegistryEvent`
or raises `WebhookRejected` (answer 401; nothing changes). MLflow signs a delivery with
`X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "{delivery id}.{timestamp}.{body}">` beside
`X-MLflow-Delivery-Id` and `X-MLflow-Timestamp`; a delivery is accepted once, within `tolerance_seconds`
of its timestamp. MLflow does not filter deliveries by model name: receivers filter on `event.name`.

    python -m serve.webhooks register --url http://127.0.0.1:8080/webhooks/mlflow --model chest
    python -m serve.webhooks list
    python -m serve.webhooks delete --name medimg-chest

Standard library at module level; MLflow is imported by the commands only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import heapq
import hmac
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from serve.common import CommandFailed, ConfigError, first_line

SECRET_ENVIRONMENT = "MEDIMG_WEBHOOK_SECRET"
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300.0
# The path receivers answer on (the app and train.release.watch).
RECEIVER_PATH = "/webhooks/mlflow"
# The events a follower and the hand-registered-version watcher need.
DEFAULT_EVENTS = ("model_version_alias.created", "model_version_alias.deleted", "model_version.created")
MODEL_VERSION_CREATED = "model_version.created"


class WebhookRejected(Exception):
    """A delivery that is not accepted; `reason` is a short label and the message one line quoting nothing of the body."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RegistryEvent:
    """One verified registry event: what changed (`kind`, e.g. model_version_alias.created) and on which model."""

    entity: str
    action: str
    name: str
    version: str = ""
    alias: str = ""
    tags: dict = field(default_factory=dict)
    delivery_id: str = ""

    @property
    def kind(self) -> str:
        return f"{self.entity}.{self.action}"


def _text(value) -> str:
    return "" if value is None else str(value)


def parse_event(body: bytes, delivery_id: str = "") -> RegistryEvent:
    """The event of a delivery's JSON body; WebhookRejected('bad_payload') when it is not one."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("bad_payload", "the delivery's body is not JSON") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict) or not all(isinstance(payload.get(key), str) for key in ("entity", "action")):
        raise WebhookRejected("bad_payload", "the delivery's body has no entity, action and data object")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise WebhookRejected("bad_payload", "the delivery's data names no registered model")
    tags = data.get("tags") if isinstance(data.get("tags"), dict) else {}
    return RegistryEvent(
        entity=payload["entity"],
        action=payload["action"],
        name=data["name"],
        version=_text(data.get("version")),
        alias=_text(data.get("alias")),
        tags={str(key): _text(value) for key, value in tags.items()},
        delivery_id=delivery_id,
    )


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for these headers and body (tests and senders use it)."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


class WebhookVerifier:
    """Checks MLflow's signature, the timestamp window and replays; thread-safe; remembers ids for the window only."""

    def __init__(
        self,
        secret: str,
        *,
        tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        if not secret:
            raise ValueError(
                f"the webhook secret is empty: set {SECRET_ENVIRONMENT} to the secret the webhook was registered with"
            )
        if tolerance_seconds <= 0:
            raise ValueError(f"tolerance_seconds must be positive, not {tolerance_seconds}")
        self._secret = secret
        self.tolerance_seconds = float(tolerance_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        # Accepted delivery ids and their timestamps; a heap of (timestamp, id) finds the ones to forget.
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []

    def verify(self, headers: Mapping[str, str], body: bytes) -> RegistryEvent:
        """The event of an authentic, fresh, first delivery; WebhookRejected otherwise (its id stays unseen)."""
        lowered = {str(key).lower(): str(value) for key, value in headers.items()}
        missing = [
            name for name in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if not lowered.get(name.lower())
        ]
        if missing:
            raise WebhookRejected("missing_header", f"the delivery lacks the header(s) {', '.join(missing)}")
        delivery_id, timestamp = lowered[DELIVERY_ID_HEADER.lower()], lowered[TIMESTAMP_HEADER.lower()]
        if not self._signed(delivery_id, timestamp, body, lowered[SIGNATURE_HEADER.lower()]):
            raise WebhookRejected("bad_signature", "the delivery's signature does not match the webhook secret")
        sent_at = self._fresh(timestamp)
        event = parse_event(body, delivery_id)
        with self._lock:
            self._forget_old()
            if delivery_id in self._seen:
                raise WebhookRejected("replayed", "this delivery id was already accepted")
            self._seen[delivery_id] = sent_at
            heapq.heappush(self._expiry, (sent_at, delivery_id))
        return event

    @property
    def remembered(self) -> int:
        """How many delivery ids are kept now (they are forgotten once their timestamp leaves the window)."""
        with self._lock:
            self._forget_old()
            return len(self._seen)

    def _signed(self, delivery_id: str, timestamp: str, body: bytes, header: str) -> bool:
        expected = signature(self._secret, delivery_id, timestamp, body).encode()
        # Standard Webhooks allows several space-separated signatures (a secret being rotated); any one may match.
        matched = False
        for candidate in header.split():
            matched |= hmac.compare_digest(candidate.encode(), expected)
        return matched

    def _fresh(self, timestamp: str) -> float:
        try:
            sent_at = float(int(timestamp))
        except ValueError:
            raise WebhookRejected("stale", "the delivery's timestamp is not a Unix time") from None
        skew = self._clock() - sent_at
        if abs(skew) > self.tolerance_seconds:
            when = "old" if skew > 0 else "far in the future"
            raise WebhookRejected(
                "stale",
                f"the delivery's timestamp is {abs(skew):.0f} s {when} (tolerance {self.tolerance_seconds:.0f} s)",
            )
        return sent_at

    def _forget_old(self) -> None:
        """Drop ids whose timestamp left the window: a replay of them is stale anyway. Call with the lock held."""
        horizon = self._clock() - self.tolerance_seconds
        while self._expiry and self._expiry[0][0] < horizon:
            _, delivery_id = heapq.heappop(self._expiry)
            self._seen.pop(delivery_id, None)


def secret_from_environment() -> str:
    """$MEDIMG_WEBHOOK_SECRET; ConfigError (one line) when it is unset or empty."""
    secret = os.environ.get(SECRET_ENVIRONMENT, "")
    if not secret:
        raise ConfigError(
            f"{SECRET_ENVIRONMENT} is not set: export the shared secret (e.g. `openssl rand -hex 32`) first"
        )
    return secret


# The commands: register, list, delete.


def _client():
    """An MlflowClient of a tracking server; webhooks are delivered by `mlflow server` only."""
    import mlflow
    from mlflow.tracking import MlflowClient

    # Asked before a client exists: a client of a database URI would create its tables.
    tracking_uri = mlflow.get_tracking_uri()
    if not str(tracking_uri).startswith(("http://", "https://")):
        raise ConfigError(
            f"tracking URI {tracking_uri} is not a tracking server: only `mlflow server` on a SQL store delivers "
            'webhooks; run eval "$(python -m mlflow_server up --webhooks-to-local)" first'
        )
    return MlflowClient(tracking_uri)


def find_webhooks(client, name: str) -> list:
    """The tracking server's webhooks called `name`."""
    found, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        found += [webhook for webhook in page if webhook.name == name]
        token = page.token
        if not token:
            return found


def parse_events(text: str) -> list[str]:
    """Comma-separated event names (entity.action), checked against MLflow's own list."""
    from mlflow.entities.webhook import WebhookEvent

    events = [item.strip() for item in text.split(",") if item.strip()]
    if not events:
        raise ConfigError("--events names no event; e.g. model_version_alias.created,model_version.created")
    for event in events:
        try:
            WebhookEvent.from_str(event)
        except Exception:
            raise ConfigError(
                f"--events: {event!r} is not an MLflow webhook event such as model_version.created"
            ) from None
    return events


def register(url: str, model: str, events: list[str], name: str) -> str:
    """Create the webhook `name` (or update the one of that name) and send MLflow's test delivery; its id."""
    from mlflow.exceptions import MlflowException

    secret = secret_from_environment()
    client = _client()
    description = f"medimg: registry events of {model} (receivers ignore other models)"
    try:
        existing = find_webhooks(client, name)
        if existing:
            webhook = client.update_webhook(
                existing[0].webhook_id, url=url, events=events, secret=secret, description=description, status="ACTIVE"
            )
            action = "updated"
        else:
            webhook = client.create_webhook(name, url, events, description=description, secret=secret)
            action = "created"
    except MlflowException as error:
        raise CommandFailed(
            f"cannot register webhook {name!r} for {url}: {first_line(error.message)} (an http:// or private receiver "
            "needs a server started with `python -m mlflow_server up --webhooks-to-local`)"
        ) from None
    print(webhook.webhook_id, flush=True)
    print(f"{action} webhook {name!r} ({', '.join(events)}) -> {url}", file=sys.stderr, flush=True)
    check_receiver(client, webhook.webhook_id, url)
    return webhook.webhook_id


def check_receiver(client, webhook_id: str, url: str) -> None:
    """MLflow's signed test delivery to the receiver; CommandFailed unless it answers 2xx."""
    from mlflow.exceptions import MlflowException

    try:
        result = client.test_webhook(webhook_id)
    except MlflowException as error:
        raise CommandFailed(f"the test delivery to {url} failed: {first_line(error.message)}") from None
    status = result.response_status
    if status is None or not 200 <= int(status) < 300:
        why = f"it answered HTTP {status}" if status is not None else first_line(result.error_message or "no answer")
        raise CommandFailed(
            f"the receiver at {url} did not accept MLflow's test delivery: {why} "
            f"(is it running, and does it have the same {SECRET_ENVIRONMENT}?)"
        )
    print(f"test delivery: the receiver answered HTTP {status}", file=sys.stderr, flush=True)


def list_webhooks() -> list:
    client = _client()
    webhooks, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        webhooks += list(page)
        token = page.token
        if not token:
            break
    for webhook in webhooks:
        events = ",".join(str(event) for event in webhook.events)
        print(f"{webhook.webhook_id}\t{webhook.name}\t{webhook.status}\t{webhook.url}\t{events}")
    return webhooks


def delete(name: str) -> int:
    """Delete every webhook called `name`; how many there were."""
    client = _client()
    found = find_webhooks(client, name)
    for webhook in found:
        client.delete_webhook(webhook.webhook_id)
        print(f"deleted webhook {name!r} ({webhook.webhook_id})", file=sys.stderr)
    if not found:
        raise ConfigError(f"no webhook is called {name!r}; `python -m serve.webhooks list` shows them")
    return len(found)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve.webhooks",
        description="Register, list and delete the MLflow registry webhook medimg's receivers verify "
        f"(the tracking server is $MLFLOW_TRACKING_URI; the shared secret is ${SECRET_ENVIRONMENT}).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    register_parser = commands.add_parser("register", help="create or update the webhook, then send a test delivery")
    register_parser.add_argument(
        "--url", required=True, help=f"the receiver, e.g. http://127.0.0.1:8080{RECEIVER_PATH}"
    )
    register_parser.add_argument("--model", required=True, help="the registered model the receiver follows")
    register_parser.add_argument(
        "--events", default=",".join(DEFAULT_EVENTS), help="comma-separated events (default: %(default)s)"
    )
    register_parser.add_argument("--name", default="", help="webhook name (default: medimg-MODEL); one per name")
    commands.add_parser("list", help="the server's webhooks: id, name, status, url, events")
    delete_parser = commands.add_parser("delete", help="delete the webhook(s) of a name")
    delete_parser.add_argument("--name", required=True, help="webhook name")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        if arguments.command == "register":
            events = parse_events(arguments.events)
            register(arguments.url, arguments.model, events, arguments.name or f"medimg-{arguments.model}")
        elif arguments.command == "list":
            list_webhooks()
        else:
            delete(arguments.name)
    except ConfigError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    except CommandFailed as error:
        print(f"error: {first_line(error, limit=None)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
