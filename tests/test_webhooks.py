"""MLflow registry webhooks: the verifier on signed deliveries; a real Postgres-backed `mlflow server` started with
`--webhooks-to-local` delivering to a local receiver; a version registered by hand put through the pipeline in place."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid

import pytest
from stores import sqlite_store

from serve.webhooks import (
    DEFAULT_EVENTS,
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


# The watcher's receiver (train.release.watch) in-process: what it queues, ignores and refuses.


@contextlib.contextmanager
def serving(app):
    """A FastAPI app served by uvicorn in a thread of this process (lifespan off) on a free port; yields its URL."""
    import uvicorn

    from serve.common import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def created(name: str, version: str, tags: dict | None = None) -> dict:
    return {
        "entity": "model_version",
        "action": "created",
        "data": {"name": name, "version": version, "tags": tags or {}},
    }


def test_the_watcher_queues_a_hand_registered_version_once_and_ignores_the_rest(tmp_path):
    import requests

    from train.release.watch import Watcher, build_app

    watcher = Watcher("cells", tmp_path / "logs", ["--margin", "0.01"])
    # Served without its lifespan, so the worker does not start: queued versions stay queued.
    with serving(build_app(watcher, WebhookVerifier(SECRET))) as url:

        def post(payload: dict, secret: str = SECRET):
            headers, body = delivery(payload, secret=secret, timestamp=time.time())
            return requests.post(f"{url}/webhooks/mlflow", data=body, headers=headers, timeout=10)

        check_the_watchers_answers(watcher, post, lambda: requests.get(f"{url}/health", timeout=10).json())
        # The same delivery again (a replay) is refused and queues nothing more.
        headers, body = delivery(created("cells", "8"), timestamp=time.time())
        first = requests.post(f"{url}/webhooks/mlflow", data=body, headers=headers, timeout=10)
        again = requests.post(f"{url}/webhooks/mlflow", data=body, headers=headers, timeout=10)
        assert (first.status_code, again.status_code, again.json()) == (200, 401, {"error": "replayed"})
        assert [version["version"] for version in watcher.status()["versions"]] == ["7", "8"]


def check_the_watchers_answers(watcher, post, health):
    """Signed deliveries: the watched model's hand-registered version is queued once, everything else ignored."""
    assert post(created("cells", "7"), secret="wrong").status_code == 401
    assert watcher.status()["versions"] == []
    answers = [
        post(created("other-model", "3")),
        post(created("cells", "5", {"medimg.registered_by": "pipeline"})),
        post(
            {
                "entity": "model_version_alias",
                "action": "created",
                "data": {"name": "cells", "alias": "champion", "version": "7"},
            }
        ),
        post(created("cells", "7")),
        post(created("cells", "7")),
    ]
    assert [answer.status_code for answer in answers] == [200] * 5
    assert [answer.json()["outcome"] for answer in answers] == ["ignored", "ignored", "ignored", "queued", "ignored"]
    assert "registered by medimg's pipeline" in answers[1].json()["reason"]
    status = health()
    assert status["queued"] == 1 and [version["version"] for version in status["versions"]] == ["7"]
    assert watcher.command("7")[2:] == [
        "train",
        "pipeline",
        "--challenger",
        "models:/cells/7",
        "--registered-model",
        "cells",
        "--margin",
        "0.01",
    ]


def test_register_needs_the_secret_and_a_tracking_server_each_in_one_line(monkeypatch, capsys, tmp_path):
    from serve.webhooks import main

    arguments = ["register", "--url", "http://127.0.0.1:9/webhooks/mlflow", "--model", "cells"]
    monkeypatch.delenv(SECRET_ENVIRONMENT, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(tmp_path / "mlflow.db"))
    assert main(arguments) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {SECRET_ENVIRONMENT} is not set: export the shared secret (e.g. `openssl rand -hex 32`) first"
    )
    monkeypatch.setenv(SECRET_ENVIRONMENT, SECRET)
    assert main(arguments) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is not a tracking server" in line and SECRET not in line
    assert main([*arguments, "--events", "model_version.renamed"]) == 2
    assert "not an MLflow webhook event" in capsys.readouterr().err


# A real Postgres-backed `mlflow server` started by `python -m mlflow_server up --webhooks-to-local`.

WATCHED = "hand-registered"
FOLLOWED = "followed"
# Tiny synthetic trainings on the same data (so one frozen test split): a few seconds each on two cores.
TINY = {"image_size": "32", "batch_size": "16", "convolutions": "1", "augment": "false", "max_examples": "240"}
CACHE_TTL_S = 5


class Receiver:
    """A local HTTP receiver of MLflow's deliveries that verifies each with WebhookVerifier (401 when rejected)."""

    def __init__(self, secret: str):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from serve.common import free_port

        self.verifier = WebhookVerifier(secret)
        self.events: list[RegistryEvent] = []
        self.rejections: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    owner.events.append(owner.verifier.verify(dict(self.headers.items()), body))
                    self.send_response(200)
                except WebhookRejected as rejected:
                    owner.rejections.append(rejected.reason)
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}/webhooks/mlflow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout_s: float = 60.0) -> RegistryEvent:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [event for event in list(self.events) if predicate(event)]
            if found:
                return found[-1]
            time.sleep(0.2)
        raise AssertionError(
            f"no such delivery within {timeout_s:.0f} s; got {self.events}, rejected {self.rejections}"
        )


def python_env(tracking_uri: str, secret: str = SECRET) -> dict[str, str]:
    import os
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, SECRET_ENVIRONMENT: secret}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    return env


def run_python(repo_root, env, *arguments: str, timeout: float = 300):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, *arguments], cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def webhook_server(postgres_bin, repo_root):
    """`python -m mlflow_server up --webhooks-to-local` on a fresh data folder; stopped and deleted at the end."""
    from test_mlflow_server import force_down, make_data_dir

    data_dir = make_data_dir("medimg-webhooks-")
    try:
        started = run_python(
            repo_root, python_env(""), "-m", "mlflow_server", "up", "--data-dir", str(data_dir), "--webhooks-to-local"
        )
        assert started.returncode == 0, started.stderr[-3000:]
        (line,) = started.stdout.strip().splitlines()
        tracking_uri = line.removeprefix("export MLFLOW_TRACKING_URI=")
        yield {"tracking_uri": tracking_uri, "data_dir": data_dir}
    finally:
        force_down(data_dir)


@pytest.mark.slow
def test_the_server_keeps_one_private_webhook_key_and_says_webhooks_reach_local_receivers(webhook_server, repo_root):
    import stat

    key_file = webhook_server["data_dir"] / "webhook_encryption_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    status = run_python(
        repo_root, python_env(""), "-m", "mlflow_server", "status", "--data-dir", str(webhook_server["data_dir"])
    )
    assert status.returncode == 0 and "webhooks to local receivers: on" in status.stdout
    again = run_python(
        repo_root, python_env(""), "-m", "mlflow_server", "up", "--data-dir", str(webhook_server["data_dir"])
    )
    assert again.returncode == 2 and "webhooks to local receivers on" in again.stderr
    assert key_file.read_text() == key


@pytest.mark.slow
def test_a_registered_webhook_delivers_a_signed_alias_move_the_verifier_accepts(webhook_server, repo_root):
    from mlflow import MlflowClient

    receiver = Receiver(SECRET)
    env = python_env(webhook_server["tracking_uri"])
    arguments = ("-m", "serve.webhooks", "register", "--url", receiver.url, "--model", FOLLOWED, "--name", "follower")
    registered = run_python(repo_root, env, *arguments)
    assert registered.returncode == 0, registered.stderr[-2000:]
    webhook_id = registered.stdout.strip()
    # MLflow's test delivery (its example payload) reached the receiver, signed with the stored secret.
    assert receiver.wait_for(lambda event: event.name == "example_model").kind in DEFAULT_EVENTS
    # Registering again updates the webhook of that name instead of adding one.
    again = run_python(repo_root, env, *arguments)
    assert again.returncode == 0 and again.stdout.strip() == webhook_id
    listed = run_python(repo_root, env, "-m", "serve.webhooks", "list")
    assert listed.stdout.count("\tfollower\t") == 1 and receiver.url in listed.stdout

    client = MlflowClient(webhook_server["tracking_uri"])
    client.create_registered_model(FOLLOWED)
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    client.create_model_version(FOLLOWED, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.create_model_version(FOLLOWED, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    # The server may hold an empty webhook list of this event from before the webhook existed, for CACHE_TTL_S.
    time.sleep(CACHE_TTL_S + 1)
    client.set_registered_model_alias(FOLLOWED, "champion", "1")
    client.set_registered_model_alias(FOLLOWED, "champion", "2")
    moved = receiver.wait_for(lambda event: event.name == FOLLOWED and event.version == "2")
    assert (moved.kind, moved.alias) == ("model_version_alias.created", "champion")
    client.delete_registered_model_alias(FOLLOWED, "champion")
    deleted = receiver.wait_for(lambda event: event.kind == "model_version_alias.deleted")
    assert (deleted.name, deleted.alias) == (FOLLOWED, "champion")
    assert receiver.rejections == []


@pytest.mark.slow
def test_a_receiver_with_another_secret_fails_registration_in_one_line(webhook_server, repo_root):
    receiver = Receiver("not-the-registered-secret")
    env = python_env(webhook_server["tracking_uri"])
    arguments = ("-m", "serve.webhooks", "register", "--url", receiver.url, "--model", FOLLOWED, "--name", "mismatched")
    result = run_python(repo_root, env, *arguments)
    assert result.returncode == 1
    (error,) = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert "did not accept MLflow's test delivery: it answered HTTP 401" in error
    assert receiver.rejections == ["bad_signature"] and receiver.events == []
    assert SECRET not in result.stdout + result.stderr
    assert run_python(repo_root, env, "-m", "serve.webhooks", "delete", "--name", "mismatched").returncode == 0


# A version registered by hand is put through the pipeline in place, started by the model_version.created webhook.


def train_tiny(tracking_uri: str, **settings: str):
    """A tiny synthetic training run in-process against the server; its TrainResult."""
    from serving_helpers import tracking_at

    from train.job.trainer import train
    from train.settings import MainSettings

    with tracking_at(tracking_uri):
        return train(MainSettings.from_dict({**TINY, **settings}))


def wait_for_pipeline(url: str, timeout_s: float = 600) -> dict:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        versions = requests.get(f"{url}/health", timeout=10).json()["versions"]
        if versions and all(version["exit_code"] is not None for version in versions):
            return {version["version"]: version for version in versions}
        time.sleep(1)
    raise AssertionError(f"the watcher's pipeline did not finish within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def champion(webhook_server) -> str:
    """Version 1 of WATCHED, registered by training (so tagged medimg.registered_by=train), with alias champion."""
    from mlflow import MlflowClient

    train_tiny(webhook_server["tracking_uri"], epochs="1", register_as=WATCHED)
    client = MlflowClient(webhook_server["tracking_uri"])
    client.set_registered_model_alias(WATCHED, "champion", "1")
    return "1"


@pytest.mark.slow
def test_a_failed_step_leaves_a_hand_registered_version_in_place_without_a_decision(
    webhook_server, champion, monkeypatch, capsys
):
    """The champion's own model registered again by hand: identical answers, so the pipeline promotes it, and the
    serving step then fails (its image requirements are missing). The version stays (the pipeline did not register
    it), without decision tags, and no alias moves. The champion itself is refused as a challenger."""
    import mlflow
    from mlflow import MlflowClient
    from serving_helpers import tracking_at

    import serve.image
    from train.__main__ import main

    client = MlflowClient(webhook_server["tracking_uri"])
    # The champion now (the watcher's test may have promoted another version since the module's first).
    source = client.get_model_version_by_alias(WATCHED, "champion").source
    aliases = {alias: str(number) for alias, number in client.get_registered_model(WATCHED).aliases.items()}
    with tracking_at(webhook_server["tracking_uri"]):
        copy = mlflow.register_model(source, WATCHED)
        assert main(["pipeline", "--challenger", f"models:/{WATCHED}@champion", "--registered-model", WATCHED]) == 2
        assert "is the champion already" in capsys.readouterr().err
        monkeypatch.setattr(serve.image, "IMAGE_REQUIREMENTS", serve.image.IMAGE_REQUIREMENTS.parent / "missing.txt")
        code = main(["pipeline", "--challenger", f"models:/{WATCHED}/{copy.version}", "--registered-model", WATCHED])
    assert code == 1
    assert "decision tags removed from version" in capsys.readouterr().out
    tags = client.get_model_version(WATCHED, copy.version).tags
    assert not any(key.startswith(("medimg.decision", "medimg.p_value")) for key in tags)
    assert {alias: str(number) for alias, number in client.get_registered_model(WATCHED).aliases.items()} == aliases


@pytest.fixture(scope="module")
def watch(webhook_server, repo_root, tmp_path_factory, champion):
    """`python -m train.release.watch` for WATCHED, with its webhook registered by `python -m serve.webhooks`."""
    import sys

    from serving_helpers import running_server

    from serve.common import free_port

    port = free_port()
    workdir = tmp_path_factory.mktemp("watch")
    url = f"http://127.0.0.1:{port}"
    env = python_env(webhook_server["tracking_uri"])
    command = [sys.executable, "-m", "train.release.watch", "--registered-model", WATCHED, "--port", str(port)]
    command += ["--host", "127.0.0.1", "--log-dir", str(workdir / "logs")]
    env["PYTHONPATH"] = str(repo_root)
    with running_server(command, ready_url=f"{url}/health", log_path=workdir / "watch.log", env=env, cwd=workdir):
        registered = run_python(
            repo_root,
            env,
            "-m",
            "serve.webhooks",
            "register",
            "--url",
            f"{url}/webhooks/mlflow",
            "--model",
            WATCHED,
            "--events",
            "model_version.created",
        )
        assert registered.returncode == 0, registered.stderr[-2000:]
        time.sleep(CACHE_TTL_S + 1)
        yield {"url": url, "log": workdir / "watch.log", "logs": workdir / "logs"}


@pytest.mark.slow
def test_a_version_registered_by_hand_is_evaluated_in_place_and_the_decision_tagged_on_it(
    webhook_server, watch, champion
):
    import mlflow
    import requests
    from mlflow import MlflowClient
    from serving_helpers import tracking_at

    client = MlflowClient(webhook_server["tracking_uri"])
    challenger = train_tiny(webhook_server["tracking_uri"], epochs="2", learning_rate="0.003")
    with tracking_at(webhook_server["tracking_uri"]):
        # As a notebook would: mlflow.register_model, no medimg creation tag.
        hand = mlflow.register_model(challenger.model_uri, WATCHED)
    finished = wait_for_pipeline(watch["url"])
    log = (watch["logs"] / f"{WATCHED}-{hand.version}.log").read_text()
    assert list(finished) == [hand.version] and finished[hand.version]["exit_code"] == 0, log[-3000:]

    # Decided in place: no new version, the decision on this one, the aliases moved as the pipeline moves them.
    versions = sorted(int(version.version) for version in client.search_model_versions(f"name='{WATCHED}'"))
    assert versions[-1] == int(hand.version)
    tags = client.get_model_version(WATCHED, hand.version).tags
    assert tags["medimg.decision"] in ("promoted", "not promoted") and tags["medimg.compared_champion_version"] == "1"
    assert tags["medimg.source_run_id"] == challenger.run_id and "medimg.registered_by" not in tags
    aliases = {alias: str(version) for alias, version in client.get_registered_model(WATCHED).aliases.items()}
    expected = (
        {"champion": hand.version, "previous": "1"}
        if tags["medimg.decision"] == "promoted"
        else {"champion": "1", "challenger": hand.version}
    )
    assert aliases == expected
    assert "model_card.md" in [item.path for item in client.list_artifacts(challenger.run_id)]
    # Version 1 came from training, and its creation tag says so: a watcher ignores such versions.
    assert client.get_model_version(WATCHED, "1").tags["medimg.registered_by"] == "train"
    watch_log = watch["log"].read_text()
    assert "queued for the pipeline" in watch_log and requests.get(f"{watch['url']}/health", timeout=10).ok


@pytest.mark.slow
def test_the_pipeline_refuses_a_version_without_a_medimg_source_run_in_one_line(webhook_server, repo_root):
    from mlflow import MlflowClient

    client = MlflowClient(webhook_server["tracking_uri"])
    # Another registered model than the watched one, so that the watcher leaves these versions alone.
    client.create_registered_model("from-a-notebook")
    bare = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    untagged = client.create_model_version(
        "from-a-notebook", f"runs:/{bare.info.run_id}/model", run_id=bare.info.run_id
    )
    orphan = client.create_model_version("from-a-notebook", "s3://elsewhere/model")
    env = python_env(webhook_server["tracking_uri"])
    for version, why in ((untagged.version, "has no medimg data tags"), (orphan.version, "has no source run")):
        challenger = f"models:/from-a-notebook/{version}"
        arguments = ("-m", "train", "pipeline", "--challenger", challenger, "--registered-model", "from-a-notebook")
        result = run_python(repo_root, env, *arguments)
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert why in line and f"from-a-notebook version {version}" in line
        assert client.get_model_version("from-a-notebook", version).tags == {}


# The clinician app as a receiver: a signed alias move swaps the served version long before its next poll.


def app_version(url: str) -> str:
    import requests

    return requests.get(f"{url}/health", timeout=10).json()["model"]["version"]


def alias_move(name: str, version: str) -> dict:
    return {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2027-01-15T08:00:00+00:00",
        "data": {"name": name, "alias": "champion", "version": version},
    }


@pytest.mark.slow
def test_a_signed_webhook_from_the_server_swaps_the_app_before_its_next_poll(webhook_server, repo_root, tmp_path):
    """The app polls every 10 minutes; the server's delivery swaps it in seconds. Forged, stale, header-less and
    replayed deliveries are 401 and change nothing, while a fresh signed one does."""
    import requests
    from mlflow import MlflowClient
    from serving_helpers import running_server, tracking_at
    from test_following import log_spot_version

    from serve.common import free_port

    name, uri = "webhook-followed", webhook_server["tracking_uri"]
    with tracking_at(uri):
        versions = [log_spot_version(name), log_spot_version(name, bias=-0.5), log_spot_version(name, bias=0.5)]
    assert versions == ["1", "2", "3"]
    client = MlflowClient(uri)
    client.set_registered_model_alias(name, "champion", "1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "serve.app", "--model", f"models:/{name}@champion"]
    command += ["--port", str(port), "--follow-seconds", "600"]
    env = {**python_env(uri), "PYTHONPATH": str(repo_root)}
    with running_server(command, ready_url=f"{url}/health", log_path=tmp_path / "app.log", env=env, cwd=tmp_path):
        receiver = f"{url}/webhooks/mlflow"
        arguments = ("-m", "serve.webhooks", "register", "--url", receiver, "--model", name, "--name", "app-follower")
        registered = run_python(repo_root, python_env(uri), *arguments)
        assert registered.returncode == 0, registered.stderr[-2000:]
        time.sleep(CACHE_TTL_S + 1)
        moved = time.monotonic()
        client.set_registered_model_alias(name, "champion", "2")
        deadline = moved + 60
        while app_version(url) != "2":
            assert time.monotonic() < deadline, "no swap within 60 s of the alias move"
            time.sleep(0.2)
        swapped_after = time.monotonic() - moved
        # Deliveries that must change nothing: the next move is not delivered (the webhook is gone), so only a
        # delivery this test sends could make the app notice it.
        assert (
            run_python(
                repo_root, python_env(uri), "-m", "serve.webhooks", "delete", "--name", "app-follower"
            ).returncode
            == 0
        )
        time.sleep(CACHE_TTL_S + 1)
        client.set_registered_model_alias(name, "champion", "3")
        now = time.time()
        forged = delivery(alias_move(name, "3"), secret="not-the-secret", timestamp=now)
        stale = delivery(alias_move(name, "3"), timestamp=now - 3600)
        headers, body = delivery(alias_move(name, "3"), timestamp=now)
        missing = ({key: value for key, value in headers.items() if key != "X-MLflow-Signature"}, body)
        refused = [requests.post(receiver, data=b, headers=h, timeout=10) for h, b in (forged, stale, missing)]
        time.sleep(3)
        still = app_version(url)
        accepted = requests.post(receiver, data=body, headers=headers, timeout=10)
        deadline = time.monotonic() + 60
        while app_version(url) != "3":
            assert time.monotonic() < deadline, "a fresh signed delivery did not swap within 60 s"
            time.sleep(0.2)
        client.set_registered_model_alias(name, "champion", "2")
        replayed = requests.post(receiver, data=body, headers=headers, timeout=10)
        time.sleep(3)
        after_replay = app_version(url)
        exposition = requests.get(f"{url}/metrics", timeout=10).text
    assert swapped_after < 30, f"the webhook swap took {swapped_after:.1f} s; the next poll was 600 s away"
    assert [(answer.status_code, answer.json()["reason"]) for answer in refused] == [
        (401, "bad_signature"),
        (401, "stale"),
        (401, "missing_header"),
    ]
    assert still == "2" and accepted.status_code == 202
    assert (replayed.status_code, replayed.json()["reason"], after_replay) == (401, "replayed", "3")
    assert 'medimg_model_alias_checks_total{outcome="swapped",trigger="webhook"} 2.0' in exposition
    assert 'medimg_registry_webhooks_total{outcome="replayed"} 1.0' in exposition
