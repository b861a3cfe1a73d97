"""The served model follows its registry alias (serve.following): the app under load while @champion moves, rolls
back and points at versions it must refuse; the PACS worker's scorer likewise; the Follower's own rules."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import SPOT_CLASSES, SPOT_IMAGE_SIZE, build_spot_model, serving_environment
from serving_helpers import running_server
from stores import sqlite_store

from serve.common import free_port
from serve.following import Follower, Refused, followed_alias, interval_of
from serve.model_uri import ResolvedModel

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLLOW_SECONDS = 1.0
CLIENTS = 4
# Each client waits this long between its requests: CLIENTS of them still keep requests in flight through every swap,
# without the app and the clients burning both cores of a small machine for the whole test.
PAUSE_SECONDS = 0.25


# --- the Follower's rules, without a model ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "followed"),
    [
        ("models:/chest@champion", ("chest", "champion")),
        ("models:/chest@canary", ("chest", "canary")),
        ("models:/chest", ("chest", "champion")),
        ("models:/chest/3", None),
        ("models:/chest/latest", None),
        ("models:/m-0123456789abcdef0123456789abcdef", None),
        ("runs:/0123456789abcdef0123456789abcdef/model", None),
        ("/srv/models/chest", None),
    ],
)
def test_only_an_alias_is_followed_never_a_uri_that_names_a_version(uri, followed):
    assert followed_alias(uri) == followed


def test_the_interval_is_seconds_and_zero_means_webhooks_only():
    assert interval_of("") == 30.0 and interval_of("2.5") == 2.5 and interval_of("0") == 0.0
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(ValueError, match="follow interval"):
            interval_of(bad)


class Registry:
    """An alias table standing in for the registry's answer to resolve_model_uri."""

    def __init__(self, version: str):
        self.version = version

    def resolve(self, uri: str) -> ResolvedModel:
        return ResolvedModel(uri, f"models:/chest/{self.version}", name="chest", version=self.version)


def test_a_refused_version_keeps_the_old_one_and_is_not_retried_until_the_alias_moves():
    registry, loads = Registry("1"), []

    def load(target, current):
        loads.append(target.version)
        if target.version == "3":
            raise Refused("incompatible", "answers other classes")
        return {"version": target.version}

    follower = Follower(
        "models:/chest@champion",
        {"version": "1"},
        load=load,
        resolved_of=lambda model: ResolvedModel("", "", name="chest", version=model["version"]),
        resolve=registry.resolve,
    )
    assert follower.check() == "unchanged"
    registry.version = "3"
    assert [follower.check(), follower.check()] == ["refused", "skipped"]
    assert follower.current == {"version": "1"} and follower.refusals == 1
    registry.version = "2"
    assert follower.check() == "swapped" and follower.current == {"version": "2"} and follower.swaps == 1
    registry.version = "3"
    assert follower.check() == "refused", "a target the alias moved back to is tried again"
    assert loads == ["3", "2", "3"]


# --- the app under load, with a real registry ---------------------------------------------------------------------


def log_spot_version(name: str, *, bias: float = -1.5, classes=SPOT_CLASSES) -> str:
    """Log a spot model (serve.pyfunc) registered under `name`; its version. `bias` moves every probability."""
    import mlflow

    from serve.pyfunc import ClassifierConfig, log_classifier

    model = build_spot_model()
    kernel, _ = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel, np.full(3, bias)])
    config = ClassifierConfig(class_names=list(classes), task="multilabel", image_size=SPOT_IMAGE_SIZE)
    example = np.zeros((SPOT_IMAGE_SIZE, SPOT_IMAGE_SIZE, 3), dtype=np.uint8)
    with mlflow.start_run():
        info = log_classifier(model, config, example, registered_model_name=name)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def followed_registry(tmp_path_factory) -> dict:
    """A sqlite registry with four versions of `followed-spot`: 1 (champion), 2 (a spot model whose probabilities
    differ), 3 (other classes: the app must refuse it) and 4 (registered from a folder that holds no model)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    directory = tmp_path_factory.mktemp("followed_registry")
    tracking_uri = sqlite_store(directory / "mlflow.db")
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("followed", artifact_location=(directory / "artifacts").as_uri())
    name = "followed-spot"
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment(experiment_id=experiment)
        versions = [log_spot_version(name), log_spot_version(name, bias=-0.5)]
        versions.append(log_spot_version(name, classes=["red_spot", "green_spot", "blue_spot"]))
        empty = directory / "not-a-model"
        empty.mkdir()
        versions.append(str(client.create_model_version(name, empty.as_uri()).version))
    finally:
        mlflow.set_tracking_uri(None)
    assert versions == ["1", "2", "3", "4"]
    client.set_registered_model_alias(name, "champion", "1")
    return {"tracking_uri": tracking_uri, "name": name, "client": client, "directory": directory}


class Load:
    """CLIENTS threads posting one image to /predict, each PAUSE_SECONDS apart; every answer kept with the time it
    arrived."""

    def __init__(self, url: str, image: bytes):
        self.url, self.image = url, image
        self.answers: list[tuple[float, int, str, tuple]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]

    def client(self) -> None:
        session = requests.Session()
        while not self.stop.wait(PAUSE_SECONDS):
            try:
                response = session.post(f"{self.url}/predict", files={"file": ("spot.png", self.image)}, timeout=60)
            except requests.RequestException as error:  # A refused or reset connection is a failed request too.
                self.answers.append((time.monotonic(), 0, type(error).__name__, ()))
                continue
            version, probabilities = "", ()
            if response.status_code == 200:
                body = response.json()
                version = body["model"]["version"]
                probabilities = tuple(round(finding["probability"], 6) for finding in body["findings"])
            self.answers.append((time.monotonic(), response.status_code, version, probabilities))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def wait_for(self, version: str, since: float, timeout: float) -> float:
        """Seconds from `since` to the first answer of `version` after it; fails after `timeout`."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            found = [at for at, status, answered, _ in list(self.answers) if at >= since and answered == version]
            if found:
                return found[0] - since
            time.sleep(0.1)
        pytest.fail(f"no answer from version {version} within {timeout:g} s; the app log says why")

    def versions_since(self, since: float) -> set[str]:
        return {version for at, _, version, _ in list(self.answers) if at >= since}


def metric(url: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    raise AssertionError(f"{name}{labels} is not on /metrics")


@pytest.fixture
def following_app(followed_registry, tmp_path):
    """`python -m serve.app --model models:/followed-spot@champion --follow-seconds 1`; its URL and log."""
    followed_registry["client"].set_registered_model_alias(followed_registry["name"], "champion", "1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "serve.app", "--model", f"models:/{followed_registry['name']}@champion"]
    command += ["--port", str(port), "--follow-seconds", str(FOLLOW_SECONDS)]
    env = serving_environment(followed_registry["tracking_uri"], PYTHONPATH=str(REPO_ROOT))
    log_path = tmp_path / "app.log"
    with running_server(command, ready_url=f"{url}/health", log_path=log_path, env=env, cwd=tmp_path):
        yield {"url": url, "log": log_path}


@pytest.mark.slow
def test_under_load_the_app_follows_champion_and_rollback_and_refuses_what_it_cannot_serve(
    followed_registry, following_app, paint_squares
):
    """Moving @champion switches the answers within the check interval plus the load time, with no failed request
    and no answer that mixes versions; a rollback switches back; versions it cannot serve are refused."""
    from serve.explain import png_base64
    from train.release.promote import move_champion

    client, name, url = followed_registry["client"], followed_registry["name"], following_app["url"]
    image = base64.b64decode(png_base64(paint_squares(64, {(255, 0, 0): (8, 8, 16)})))
    environment = serving_environment(followed_registry["tracking_uri"])
    with Load(url, image) as load:
        load.wait_for("1", time.monotonic(), 60)
        # The pipeline's own last step: champion moves to 2, the old champion becomes previous.
        moved = time.monotonic()
        move_champion(client, name, "2")
        switched = load.wait_for("2", moved, FOLLOW_SECONDS + 60)
        subprocess.run(
            [sys.executable, "-m", "train", "promote", "--rollback", name], env=environment, check=True, cwd=REPO_ROOT
        )
        # Timed from when the command has moved the alias: on a busy machine the command itself takes seconds to start.
        rolled = time.monotonic()
        switched_back = load.wait_for("1", rolled, FOLLOW_SECONDS + 60)
        back = time.monotonic() + 2
        time.sleep(2)
        for refused in ("3", "4"):
            client.set_registered_model_alias(name, "champion", refused)
            time.sleep(FOLLOW_SECONDS * 4)
        refusals = {
            reason: metric(url, "medimg_model_swap_refusals_total", reason=reason)
            for reason in ("incompatible", "unloadable")
        }
        target = metric(url, "medimg_model_target_version", model_name=name, alias="champion")
        served = metric(url, "medimg_model_served_version", model_name=name)
        swaps = metric(url, "medimg_model_swaps_total")
        last_versions = load.versions_since(back)
    answers = load.answers
    assert len(answers) > 50, "the clients kept the app busy"
    assert [status for _, status, _, _ in answers if status != 200] == [], "no request failed during the swaps"
    # No answer mixes versions: each version's answers carry that version's probabilities, one set per version.
    by_version: dict[str, set] = {}
    for _, _, version, probabilities in answers:
        by_version.setdefault(version, set()).add(probabilities)
    assert set(by_version) == {"1", "2"} and all(len(found) == 1 for found in by_version.values()), by_version
    assert by_version["1"] != by_version["2"]
    assert switched < FOLLOW_SECONDS + 30 and switched_back < FOLLOW_SECONDS + 30, (switched, switched_back)
    assert last_versions == {"1"}, "versions 3 and 4 were refused; version 1 kept answering"
    assert refusals == {"incompatible": 1.0, "unloadable": 1.0}
    assert (target, served, swaps) == (4.0, 1.0, 2.0)
    log = following_app["log"].read_text()
    assert len(re.findall(r"refused followed-spot version 3 \(incompatible\)", log)) == 1, log
    assert len(re.findall(r"refused followed-spot version 4 \(unloadable\)", log)) == 1, log
    assert "now serving followed-spot version 2 (was followed-spot version 1)" in log


@pytest.mark.slow
def test_a_uri_naming_a_version_is_served_as_is_while_the_alias_moves(followed_registry, tmp_path):
    client, name = followed_registry["client"], followed_registry["name"]
    client.set_registered_model_alias(name, "champion", "1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "serve.app", "--model", f"models:/{name}/1", "--port", str(port)]
    command += ["--follow-seconds", "0.5"]
    env = serving_environment(followed_registry["tracking_uri"], PYTHONPATH=str(REPO_ROOT))
    with running_server(command, ready_url=f"{url}/health", log_path=tmp_path / "app.log", env=env, cwd=tmp_path):
        client.set_registered_model_alias(name, "champion", "2")
        time.sleep(3)
        info = requests.get(f"{url}/info", timeout=30).json()
        health = requests.get(f"{url}/health", timeout=30).json()
        exposition = requests.get(f"{url}/metrics", timeout=30).text
    client.set_registered_model_alias(name, "champion", "1")
    assert info["following"]["follows"] == "" and health["model"]["version"] == "1"
    assert "medimg_model_swaps_total" not in exposition and "medimg_model_served_version" not in exposition


# --- the PACS worker's scorer -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_pacs_scorer_follows_and_refuses_other_classes(followed_registry):
    """The worker's load_candidate: version 2 is taken (same classes, coded concepts, warm), 3 and 4 refused."""
    import mlflow

    from serve.model_uri import resolve_model_uri
    from serve.pacs.scoring import Scorer, load_candidate

    mlflow.set_tracking_uri(followed_registry["tracking_uri"])
    try:
        name = followed_registry["name"]
        current = Scorer.load(f"models:/{name}/1")
        taken = load_candidate(resolve_model_uri(f"models:/{name}/2"), current)
        assert taken.algorithm.version == "2" and taken.outputs == current.outputs
        with pytest.raises(Refused) as other_classes:
            load_candidate(resolve_model_uri(f"models:/{name}/3"), current)
        with pytest.raises(Refused) as no_model:
            load_candidate(resolve_model_uri(f"models:/{name}/4"), current)
    finally:
        mlflow.set_tracking_uri(None)
    assert other_classes.value.reason == "incompatible" and "blue_spot" in other_classes.value.message
    assert no_model.value.reason == "unloadable"


# --- a promotion by the pipeline, under load -----------------------------------------------------------------------

PIPELINE_MODEL = "chest-followed"
TINY = {"image_size": "32", "batch_size": "16", "convolutions": "1", "augment": "false", "max_examples": "200"}


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory) -> dict:
    """A sqlite store with a trained champion (version 1 of chest-followed) and the run of a better challenger,
    trained on the same data settings (the pipeline's paired comparison needs the same test split)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from train.job.trainer import train
    from train.settings import MainSettings

    directory = tmp_path_factory.mktemp("pipeline_store")
    uri = sqlite_store(directory / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("following", artifact_location=(directory / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(experiment_id=experiment)
        train(MainSettings.from_dict({**TINY, "epochs": "1", "register_as": PIPELINE_MODEL}))
        better = {**TINY, "epochs": "2", "learning_rate": "0.003", "convolutions": "2"}
        challenger = train(MainSettings.from_dict(better)).run_id
    finally:
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias(PIPELINE_MODEL, "champion", "1")
    return {"uri": uri, "client": client, "challenger": challenger, "directory": directory, "experiment": experiment}


@pytest.mark.slow
def test_a_pipeline_promotion_reaches_the_app_under_load_without_a_failed_request(pipeline_store, tmp_path):
    from train.data.synthetic import generate

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "serve.app", "--model", f"models:/{PIPELINE_MODEL}@champion"]
    command += ["--port", str(port), "--follow-seconds", str(FOLLOW_SECONDS)]
    env = serving_environment(pipeline_store["uri"], PYTHONPATH=str(REPO_ROOT))
    cells, _, _ = generate(1, 32, "binary", seed=3)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(cells[0], 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    pipeline = [sys.executable, "-m", "train", "pipeline", "--registered-model", PIPELINE_MODEL]
    pipeline += ["--challenger", pipeline_store["challenger"], "--margin", "0.5", "--alpha", "0.000001"]
    pipeline_env = {**env, "MLFLOW_EXPERIMENT_ID": pipeline_store["experiment"]}
    log_path = tmp_path / "app.log"
    with (
        running_server(command, ready_url=f"{url}/health", log_path=log_path, env=env, cwd=tmp_path),
        Load(url, buffer.getvalue()) as load,
    ):
        load.wait_for("1", time.monotonic(), 60)
        result = subprocess.run(pipeline, env=pipeline_env, cwd=tmp_path, capture_output=True, text=True)
        promoted = time.monotonic()
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        switched = load.wait_for("2", promoted - 5, FOLLOW_SECONDS + 60)
        time.sleep(1)
    assert '"decision": "promoted"' in result.stdout
    answers = load.answers
    assert [status for _, status, _, _ in answers if status != 200] == [], "no request failed during the promotion"
    by_version: dict[str, set] = {}
    for _, _, version, probabilities in answers:
        by_version.setdefault(version, set()).add(probabilities)
    assert set(by_version) == {"1", "2"} and all(len(found) == 1 for found in by_version.values()), by_version
    assert switched < FOLLOW_SECONDS + 30
