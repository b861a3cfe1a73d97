"""The eval-and-deploy flow: DeLong's test on known values, the decision rule, the real `mlflow run . -e pipeline`,
then later challengers through the same code in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import norm
from stores import sqlite_store

from train.release.pipeline import decide
from train.scoring.comparison import delong_components, delong_test, paired_bootstrap
from train.settings import ConfigError, PipelineSettings

# Tiny synthetic trainings: a few seconds each on two cores.
TINY = {"image_size": "32", "batch_size": "16", "convolutions": "1", "augment": "false", "max_examples": "300"}


# The paired test.


def test_delong_matches_a_hand_computed_example():
    # Positives p1-p3, negatives n1-n2. Model A ranks p3 below n1; model B ranks p2 below both negatives.
    labels = np.array([1, 1, 1, 0, 0])
    model_a = np.array([0.9, 0.6, 0.3, 0.5, 0.2])
    model_b = np.array([0.8, 0.05, 0.7, 0.6, 0.1])
    auc_a, v10_a, v01_a = delong_components(labels, model_a)
    # V10 (per positive, share of negatives below it) and V01 (per negative, share of positives above it).
    assert (
        auc_a == pytest.approx(5 / 6) and v10_a.tolist() == [1, 1, 0.5] and v01_a.tolist() == pytest.approx([2 / 3, 1])
    )
    # Var(A - B) = (S10_AA + S10_BB - 2 S10_AB) / 3 + (S01_AA + S01_BB - 2 S01_AB) / 2
    #            = (1/12 + 1/3 + 1/6) / 3 + (1/18 + 0 - 0) / 2 = 2/9, so z = (5/6 - 2/3) / sqrt(2/9) = 1 / (2 sqrt 2).
    result = delong_test(labels, model_a, model_b)
    assert (result.challenger, result.champion, result.difference) == pytest.approx((5 / 6, 2 / 3, 1 / 6))
    z = 1 / (2 * np.sqrt(2))
    assert result.p_value == pytest.approx(2 * norm.sf(z))
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.959964 * np.sqrt(2 / 9), rel=1e-5)


def test_delong_agrees_with_a_paired_bootstrap_on_synthetic_scores():
    generator = np.random.default_rng(7)
    labels = generator.random(3000) < 0.3
    challenger = generator.normal(labels * 1.2, 1.0)
    champion = 0.6 * challenger + 0.8 * generator.normal(labels * 0.8, 1.0)
    exact = delong_test(labels, challenger, champion)
    resampled = paired_bootstrap(labels[:, None], challenger[:, None], champion[:, None], np.array([0]), seed=1)
    assert resampled.difference == pytest.approx(exact.difference)
    assert resampled.ci_low == pytest.approx(exact.ci_low, abs=0.006)
    assert resampled.ci_high == pytest.approx(exact.ci_high, abs=0.006)
    assert exact.p_value < 0.05 and resampled.p_value < 0.05


def evaluation(value: float, low: float, high: float):
    return SimpleNamespace(metrics={"test_auroc": value, "test_auroc_ci_low": low, "test_auroc_ci_high": high})


@pytest.mark.parametrize(
    ("difference", "p_value", "margin", "promoted", "reason"),
    [
        (0.01, 0.40, 0.0, True, "promoted"),
        (0.0, 1.0, 0.0, True, "promoted"),
        (-0.01, 0.60, 0.0, False, "worse by more than the margin 0"),
        (-0.01, 0.60, 0.02, True, "promoted"),
        (-0.01, 0.01, 0.02, False, "significantly worse"),
    ],
)
def test_decision_rule(difference, p_value, margin, promoted, reason):
    settings = PipelineSettings.from_dict({"registered_model": "m", "margin": margin})
    comparison = SimpleNamespace(
        difference=difference, p_value=p_value, ci_low=-0.1, ci_high=0.1, method="delong", champion=0.8
    )
    decision = decide(settings, "test_auroc", evaluation(0.8, 0.7, 0.9), comparison, "1")
    assert decision.promoted is promoted and decision.reason.startswith(reason)


def test_a_first_champion_must_beat_chance():
    settings = PipelineSettings.from_dict({"registered_model": "m"})
    assert decide(settings, "test_auroc", evaluation(0.8, 0.62, 0.95), None, "").promoted
    refused = decide(settings, "test_auroc", evaluation(0.6, 0.45, 0.75), None, "")
    assert not refused.promoted and "does not lie above chance" in refused.reason


def test_pipeline_settings_need_a_registered_model_and_a_comparable_metric():
    with pytest.raises(ConfigError, match="registered_model is required"):
        PipelineSettings.from_dict({})
    with pytest.raises(ConfigError, match="cannot be compared by a paired test"):
        PipelineSettings.from_dict({"registered_model": "m", "metric": "test_accuracy"})
    with pytest.raises(ConfigError, match="register_as does not apply to pipeline"):
        PipelineSettings.from_dict({"registered_model": "m", "register_as": "other"})


def test_the_model_card_states_the_epochs_trained_not_the_epoch_limit():
    """epochs_run is a metric of the training run; the card once printed the epochs param (the limit) as trained."""
    from train.release.model_card import render

    classes = {"class": ["parasitized"], "positives": [40], "negatives": [50], "threshold": [0.5]}
    for statistic in ("auroc", "sensitivity", "specificity", "ppv", "npv"):
        classes.update({statistic: [0.9], f"{statistic}_ci_low": [0.8], f"{statistic}_ci_high": [0.95]})
    data = SimpleNamespace(
        name="synthetic",
        task="binary",
        class_names=["uninfected", "parasitized"],
        source="synthetic",
        digest="d" * 40,
        splits={"test": SimpleNamespace(groups=None)},
    )
    evaluation = SimpleNamespace(
        metrics={"test_auroc": 0.9},
        data=data,
        classifier_config=None,
        scores=SimpleNamespace(classes=classes, subgroups={}),
    )
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r" * 32),
        data=SimpleNamespace(
            params={"epochs": "10", "model": "small_cnn", "image_size": "64", "weights": "none"},
            metrics={"epochs_run": 4.0, "best_epoch": 1.0},
            tags={},
        ),
    )
    decision = SimpleNamespace(promoted=True, reason="first champion", metric="test_auroc")
    card = render(
        PipelineSettings.from_dict({"registered_model": "m"}), SimpleNamespace(version="1"), run, evaluation, decision
    )
    assert "for 4 epoch(s) (limit 10), best epoch 1" in card
    assert "ChestX-ray14" not in card and "generated images" in card


# The real flow through `mlflow run`.


def mlflow_env(tracking_uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    return env


def run_pipeline(store, name: str, *parameters: str) -> subprocess.CompletedProcess:
    command = ["mlflow", "run", str(store.repo_root), "-e", "pipeline", "--env-manager", "local"]
    command += ["--experiment-name", "pipeline", "-P", f"registered_model={name}"]
    values = {**TINY, **dict(parameter.split("=", 1) for parameter in parameters)}
    for key, value in values.items():
        command += ["-P", f"{key}={value}"]
    return subprocess.run(
        command, capture_output=True, text=True, env=mlflow_env(store.uri), cwd=store.cwd, timeout=900
    )


def pipeline_in_process(store, monkeypatch, name: str, *parameters: str) -> int:
    """`python -m train pipeline` in this process, as `mlflow run -e pipeline` starts it (its own experiment, the
    store in the environment): test_first_run_... runs the entry point itself, the other tests need only its code."""
    import mlflow

    from train.__main__ import main

    values = {**TINY, **dict(parameter.split("=", 1) for parameter in parameters)}
    argv = ["pipeline", "--registered-model", name]
    for key, value in values.items():
        argv += [f"--{key.replace('_', '-')}", value]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    mlflow.set_tracking_uri(store.uri)
    try:
        mlflow.set_experiment("pipeline")
        return main(argv)
    finally:
        mlflow.set_tracking_uri(None)


def aliases(client, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def latest_pipeline_run(client, name: str):
    """The last pipeline parent run for the registered model `name`."""
    experiment = client.get_experiment_by_name("pipeline")
    parents = client.search_runs(
        [experiment.experiment_id], f"tags.`medimg.kind` = 'pipeline' and tags.`mlflow.runName` = 'pipeline {name}'"
    )
    return max(parents, key=lambda run: run.info.start_time)


@pytest.fixture(scope="module")
def store(tmp_path_factory, repo_root):
    directory = tmp_path_factory.mktemp("pipeline")
    uri = sqlite_store(directory / "mlflow.db")
    return SimpleNamespace(uri=uri, cwd=directory, repo_root=repo_root, client=MlflowClient(uri))


@pytest.fixture
def name(request) -> str:
    """A registered model name of this test alone: the version numbers it asserts are true whatever ran before."""
    return "chest-" + request.node.name.removeprefix("test_").replace("_", "-")


def trained(store, **settings: str) -> str:
    """A challenger trained in-process on the tiny synthetic data into the pipeline experiment: the run id."""
    import mlflow

    from train.job.trainer import train
    from train.settings import MainSettings

    mlflow.set_tracking_uri(store.uri)
    try:
        mlflow.set_experiment("pipeline")
        return train(MainSettings.from_dict({**TINY, **settings})).run_id
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def first_challenger(store) -> str:
    """What test_first_run_... trains through `mlflow run`: 2 epochs; each test's version 1 and @champion."""
    return trained(store, epochs="2")


@pytest.fixture(scope="module")
def worse_challenger(store) -> str:
    """What the clearly worse challenger test trains through the pipeline: 1 epoch at a learning rate of 1e-6."""
    return trained(store, epochs="1", learning_rate="0.000001", seed="42")


@pytest.fixture(scope="module")
def better_challenger(store) -> str:
    """A challenger trained in-process with more capacity and epochs than version 1: the run id."""
    return trained(store, epochs="3", learning_rate="0.003", convolutions="2")


@pytest.fixture
def history(store, name):
    """The registry of this test's model as earlier pipeline runs leave it: history((run id, promoted), ...) registers
    each challenger run in turn as the pipeline's record step does and moves the aliases as its last step does
    (@champion, the old champion becoming @previous; or @challenger). The decisions themselves are the tests'."""
    import mlflow

    from train.release.pipeline import move_aliases
    from train.release.promote import Candidate, find_or_register

    def send(*steps: tuple[str, bool]) -> str:
        mlflow.set_tracking_uri(store.uri)
        try:
            for run_id, promoted in steps:
                model_uri = store.client.get_run(run_id).data.tags["medimg.model_uri"]
                version, _ = find_or_register(store.client, name, Candidate(run_id, model_uri, 0.0, 0))
                move_aliases(store.client, name, str(version.version), promoted)
        finally:
            mlflow.set_tracking_uri(None)
        return name

    return send


@pytest.mark.slow
def test_first_run_with_an_empty_registry_makes_version_1_champion(store, name):
    result = run_pipeline(store, name, "epochs=2", "run_name=first")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "triggered tf.function retracing" not in result.stdout + result.stderr
    assert aliases(store.client, name) == {"champion": "1"}
    version = store.client.get_model_version(name, "1")
    assert version.tags["medimg.decision"] == "promoted" and version.tags["medimg.decision_reason"].startswith(
        "first champion"
    )
    assert version.tags["medimg.registered_by"] == "pipeline"
    # Progress: one line per step with the elapsed time.
    for step in ("train", "evaluate challenger", "decide", "serve"):
        assert f"] {step}: " in result.stdout, step


@pytest.mark.slow
def test_a_clearly_worse_challenger_is_not_promoted_and_the_reason_says_why(
    store, history, first_challenger, monkeypatch
):
    name = history((first_challenger, True))
    assert pipeline_in_process(store, monkeypatch, name, "epochs=1", "learning_rate=0.000001", "seed=42") == 0
    assert aliases(store.client, name) == {"champion": "1", "challenger": "2"}
    version = store.client.get_model_version(name, "2")
    assert version.tags["medimg.decision"] == "not promoted"
    assert version.tags["medimg.decision_reason"].startswith(("significantly worse", "worse by more than the margin"))
    assert version.tags["medimg.compared_champion_version"] == "1" and float(version.tags["medimg.p_value"]) <= 1
    assert "(95% CI" in version.tags["medimg.metric.test_auroc"] and version.tags["medimg.dataset_digest"]
    note = latest_pipeline_run(store.client, name).data.tags["mlflow.note.content"]
    assert note.startswith(f"{name} version 2 was not promoted:")


@pytest.mark.slow
def test_a_step_that_fails_after_registering_moves_no_alias_and_leaves_no_version(
    store, history, first_challenger, better_challenger, monkeypatch
):
    """The serving step fails (its image requirements are stale): @champion stays, the new version (2) is deleted
    again, exit 1 tagged as a failure. The registry keeps the number of a deleted version: once the step works
    again, the same challenger becomes version 3."""
    import mlflow

    import serve.image
    from train.__main__ import main

    name = history((first_challenger, True))
    before = aliases(store.client, name)
    versions = len(store.client.search_model_versions(f"name='{name}'"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    project_run = store.client.create_run(store.client.get_experiment_by_name("pipeline").experiment_id)
    with monkeypatch.context() as stale:
        stale.setattr(serve.image, "IMAGE_REQUIREMENTS", store.cwd / "missing" / "requirements.txt")
        stale.setenv("MLFLOW_RUN_ID", project_run.info.run_id)
        mlflow.set_tracking_uri(store.uri)
        try:
            code = main(["pipeline", "--registered-model", name, "--challenger", better_challenger, "--margin", "0.5"])
        finally:
            mlflow.set_tracking_uri(None)
    assert code == 1
    assert aliases(store.client, name) == before
    assert len(store.client.search_model_versions(f"name='{name}'")) == versions
    tags = store.client.get_run(project_run.info.run_id).data.tags
    assert "differs from requirements.txt" in tags["medimg.failure"] and "medimg.config_error" not in tags
    assert pipeline_in_process(store, monkeypatch, name, f"challenger={better_challenger}") == 0
    assert aliases(store.client, name) == {"champion": "3", "previous": "1"}


@pytest.mark.slow
def test_a_better_challenger_is_promoted_and_the_old_champion_becomes_previous(
    store, history, first_challenger, worse_challenger, better_challenger, monkeypatch
):
    import mlflow

    name = history((first_challenger, True), (worse_challenger, False))
    assert pipeline_in_process(store, monkeypatch, name, f"challenger={better_challenger}") == 0
    assert aliases(store.client, name) == {"champion": "3", "challenger": "2", "previous": "1"}
    version = store.client.get_model_version(name, "3")
    mlflow.set_tracking_uri(store.uri)
    card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    mlflow.set_tracking_uri(None)
    assert card.startswith(f"# Model card: {name} version 3")
    assert "test_auroc = " in card and "95% CI" in card
    assert "| finding | concept | positives / negatives | AUROC (95% CI)" in card
    # A synthetic model's class has no standard code: the card names its private code, as its SR does.
    assert "| parasitized | 99MEDIMG F1 parasitized |" in card
    assert "mlflow run . --env-manager local -P model=small_cnn -P dataset=synthetic" in card
    assert f"-e pipeline -P registered_model={name}" in card


@pytest.mark.slow
def test_the_promoted_version_carries_the_serving_images_dockerfile_and_requirements(
    store, name, first_challenger, tmp_path, monkeypatch
):
    import mlflow

    from serve.image import DOCKERFILE, IMAGE_REQUIREMENTS

    assert pipeline_in_process(store, monkeypatch, name, f"challenger={first_challenger}") == 0
    latest = latest_pipeline_run(store.client, name)
    assert latest.data.tags["medimg.decision"] == "promoted"
    mlflow.set_tracking_uri(store.uri)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=latest.info.run_id, artifact_path="serving", dst_path=str(tmp_path)
            )
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert (local / "Dockerfile").read_text() == DOCKERFILE.read_text()
    assert (local / "requirements.txt").read_text() == IMAGE_REQUIREMENTS.read_text()


@pytest.mark.slow
def test_rollback_restores_the_previous_champion(store, history, first_challenger, worse_challenger, better_challenger):
    name = history((first_challenger, True), (worse_challenger, False), (better_challenger, True))
    assert aliases(store.client, name) == {"champion": "3", "challenger": "2", "previous": "1"}
    command = [sys.executable, "-m", "train", "promote", "--rollback", name]
    result = subprocess.run(
        command, capture_output=True, text=True, env=mlflow_env(store.uri), cwd=store.repo_root, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert aliases(store.client, name) == {"champion": "1", "challenger": "2", "previous": "3"}
    assert json.loads(result.stdout.strip().splitlines()[-1])["action"] == "rollback"


@pytest.mark.slow
def test_a_challenger_trained_on_another_dataset_is_refused_in_seconds(store, history, first_challenger, tmp_path):
    import mlflow
    from PIL import Image

    from train.job.trainer import train
    from train.settings import MainSettings

    name = history((first_challenger, True))
    for folder in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "xrays" / folder).mkdir(parents=True)
        for index in range(10):
            Image.new("L", (40, 40), 20 * index + (100 if folder == "PNEUMONIA" else 0)).save(
                tmp_path / "xrays" / folder / f"{index}.png"
            )
    mlflow.set_tracking_uri(store.uri)
    try:
        other = train(
            MainSettings.from_dict(
                {
                    "dataset": "imagefolder",
                    "data_dir": str(tmp_path / "xrays"),
                    "epochs": "1",
                    "monitor": "val_loss",
                    **{k: v for k, v in TINY.items() if k != "max_examples"},
                }
            )
        )
    finally:
        mlflow.set_tracking_uri(None)
    command = [sys.executable, "-m", "train", "pipeline", "--registered-model", name, "--challenger", other.run_id]
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, env=mlflow_env(store.uri), cwd=store.repo_root, timeout=300
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "the challenger was trained on imagefolder/binary" in error[0]
    assert "the champion (version 1) on synthetic/binary" in error[0]
    # Refused from the runs' tags before TensorFlow is imported (a few seconds; printed, not asserted).
    print(f"refusal took {seconds:.1f} s")
    assert len(store.client.search_model_versions(f"name='{name}'")) == 1
