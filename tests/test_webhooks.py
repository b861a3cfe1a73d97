"""MLflow registry webhooks: the verifier on signed deliveries; a real Postgres-backed `mlflow server` started with
`--webhooks-to-local` delivering to a local receiver; a version registered by hand put through the pipeline in place."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from serve.webhooks import (
    SECRET_ENVIRONMENT,
    RegistryEvent,
    WebhookRejected,
    WebhookVerifier,
    parse_event,
    signature,
)

SECRET = "a-shared-secret-for-tests"
NOW = 1_800_000_000.0


def delivery(payload: dict | None = None, *, secret: str = SECRET, timestamp: float = NOW, delivery_id: str = ""):
    """(headers, body) as MLflow sends them: X-MLflow-Delivery-Id, X-MLflow-Timestamp and the v1 signature."""
    payload = payload or {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2027-01-15T08:00:00+00:00",
        "data": {"name": "chest", "alias": "champion", "version": "3"},
    }
    body = json.dumps(payload).encode()
    delivery_id = delivery_id or str(uuid.uuid4())
    stamp = str(int(timestamp))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": signature(secret, delivery_id, stamp, body),
    }
    return headers, body


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None) -> WebhookVerifier:
    return WebhookVerifier(SECRET, tolerance_seconds=300, clock=clock or Clock())


def rejection(check, headers, body) -> str:
    with pytest.raises(WebhookRejected) as caught:
        check.verify(headers, body)
    message = str(caught.value)
    assert "\n" not in message and "chest" not in message and "champion" not in message
    return caught.value.reason


def test_a_signed_fresh_delivery_gives_its_event():
    headers, body = delivery()
    event = verifier().verify(headers, body)
    assert event == RegistryEvent(
        "model_version_alias",
        "created",
        "chest",
        version="3",
        alias="champion",
        delivery_id=headers["X-MLflow-Delivery-Id"],
    )
    assert event.kind == "model_version_alias.created"


def test_headers_are_looked_up_whatever_their_case():
    headers, body = delivery()
    assert verifier().verify({key.lower(): value for key, value in headers.items()}, body).name == "chest"
    assert verifier().verify({key.upper(): value for key, value in headers.items()}, body).version == "3"


def test_a_new_version_carries_its_creation_tags():
    payload = {
        "entity": "model_version",
        "action": "created",
        "data": {"name": "chest", "version": 4, "source": "models:/m-1", "run_id": None, "tags": {"k": "v"}},
    }
    event = verifier().verify(*delivery(payload))
    assert (event.kind, event.version, event.alias, event.tags) == ("model_version.created", "4", "", {"k": "v"})


def test_a_wrong_secret_is_a_bad_signature():
    assert rejection(verifier(), *delivery(secret="another-secret")) == "bad_signature"


@pytest.mark.parametrize("header", ["X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"])
def test_each_missing_header_is_refused(header):
    headers, body = delivery()
    del headers[header]
    assert rejection(verifier(), headers, body) == "missing_header"


def test_an_altered_body_or_a_changed_header_breaks_the_signature():
    headers, body = delivery()
    assert rejection(verifier(), headers, body.replace(b'"3"', b'"9"')) == "bad_signature"
    assert rejection(verifier(), {**headers, "X-MLflow-Delivery-Id": str(uuid.uuid4())}, body) == "bad_signature"
    assert rejection(verifier(), {**headers, "X-MLflow-Timestamp": str(int(NOW) + 1)}, body) == "bad_signature"


def test_an_old_or_a_future_timestamp_is_stale():
    assert rejection(verifier(), *delivery(timestamp=NOW - 301)) == "stale"
    assert rejection(verifier(), *delivery(timestamp=NOW + 301)) == "stale"
    assert verifier().verify(*delivery(timestamp=NOW - 299)).name == "chest"


def test_a_delivery_is_accepted_once():
    check = verifier()
    headers, body = delivery()
    check.verify(headers, body)
    assert rejection(check, headers, body) == "replayed"


def test_a_rejected_delivery_does_not_burn_its_id():
    check = verifier()
    delivery_id = str(uuid.uuid4())
    assert rejection(check, *delivery(secret="wrong", delivery_id=delivery_id)) == "bad_signature"
    assert rejection(check, *delivery(timestamp=NOW - 1000, delivery_id=delivery_id)) == "stale"
    headers, body = delivery(delivery_id=delivery_id)
    unsigned = {key: value for key, value in headers.items() if key != "X-MLflow-Signature"}
    assert rejection(check, unsigned, body) == "missing_header"
    assert check.verify(headers, body).delivery_id == delivery_id


def test_a_signed_body_that_is_no_registry_event_is_a_bad_payload():
    check = verifier()
    for payload in ({"entity": "model_version"}, {"entity": "x", "action": "y", "data": {"version": "1"}}):
        assert rejection(check, *delivery(payload)) == "bad_payload"
    with pytest.raises(WebhookRejected, match="not JSON"):
        parse_event(b"\xff not json")


def test_ids_are_forgotten_once_their_timestamp_leaves_the_window():
    clock = Clock()
    check = verifier(clock)
    for _ in range(50):
        check.verify(*delivery())
    assert check.remembered == 50
    clock.now += 301
    assert check.remembered == 0


def test_concurrent_deliveries_of_one_id_are_accepted_once():
    check = verifier()
    headers, body = delivery()
    accepted, rejected = [], []
    barrier = threading.Barrier(8)

    def deliver():
        barrier.wait()
        try:
            accepted.append(check.verify(headers, body))
        except WebhookRejected as error:
            rejected.append(error.reason)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 1 and rejected == ["replayed"] * 7


def test_an_empty_secret_is_refused_at_construction():
    with pytest.raises(ValueError, match=SECRET_ENVIRONMENT) as caught:
        WebhookVerifier("")
    assert "\n" not in str(caught.value)


def test_the_real_clock_accepts_a_delivery_signed_now():
    assert WebhookVerifier(SECRET).verify(*delivery(timestamp=time.time())).alias == "champion"
