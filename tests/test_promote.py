"""`python -m train promote`: picks the best finished run, registers it once, and moves `champion` only when it wins."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from stores import sqlite_store

from train.__main__ import main as train_cli
from train.release.promote import promote
from train.settings import PromoteSettings


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A module-wide sqlite tracking store (runs here are cheap; one test adds a real training run)."""
    import mlflow

    directory = tmp_path_factory.mktemp("promote")
    tracking_uri = sqlite_store(directory / "mlflow.db")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    yield MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(None)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def echo(model_input: list[str]) -> list[str]:
    return model_input


def fake_run(experiment: str, metrics: dict[str, float], *, status: str = "FINISHED", with_model: bool = True) -> str:
    """A run with known metrics and a tiny real logged model (not a training): enough for the selection logic."""
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
        if with_model:
            info = mlflow.pyfunc.log_model(name="model", python_model=echo, pip_requirements=["mlflow"])
            mlflow.set_tag("medimg.model_uri", info.model_uri)
    if status != "FINISHED":
        MlflowClient().set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def aliases(client, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_best_finished_run_across_experiments_becomes_champion_once(client):
    fake_run("alpha", {"best_val_auroc": 0.80})
    fake_run("alpha", {"best_val_auroc": 0.95}, status="FAILED")
    fake_run("alpha", {"best_val_auroc": 0.99}, with_model=False)
    winner = fake_run("beta", {"best_val_auroc": 0.90, "test_auroc": 0.70})
    fake_run("beta", {"test_auroc": 0.99})
    fake_run("gamma", {"best_val_auroc": 0.97})

    result = promote(PromoteSettings.from_dict({"experiment": "alpha, beta", "registered_model": "selector"}))
    assert (result.run_id, result.value, result.action, result.new_version) == (winner, 0.90, "champion", True)
    (version,) = client.search_model_versions("name='selector'")
    assert version.run_id == winner
    assert version.source == client.get_run(winner).data.tags["medimg.model_uri"]
    assert version.tags["medimg.source_run_id"] == winner
    assert float(version.tags["medimg.metric.best_val_auroc"]) == 0.90
    # A creation tag: MLflow's model_version.created webhook carries it, so receivers know medimg registered it.
    assert version.tags["medimg.registered_by"] == "promote"
    assert aliases(client, "selector") == {"champion": str(version.version)}

    again = promote(PromoteSettings.from_dict({"experiment": "alpha,beta", "registered_model": "selector"}))
    assert (again.action, again.new_version, again.version) == ("unchanged", False, str(version.version))
    assert len(client.search_model_versions("name='selector'")) == 1
    assert aliases(client, "selector") == {"champion": str(version.version)}


def test_a_worse_best_run_becomes_challenger_and_a_better_one_takes_over(client):
    strong = fake_run("delta", {"test_auroc": 0.93})
    first = promote(
        PromoteSettings.from_dict({"experiment": "delta", "registered_model": "arena", "metric": "test_auroc"})
    )
    assert first.action == "champion" and first.run_id == strong

    weaker = fake_run("epsilon", {"test_auroc": 0.88})
    second = promote(
        PromoteSettings.from_dict({"experiment": "epsilon", "registered_model": "arena", "metric": "test_auroc"})
    )
    assert (second.run_id, second.action, second.champion_version, second.champion_value) == (
        weaker,
        "challenger",
        first.version,
        0.93,
    )
    assert aliases(client, "arena") == {"champion": first.version, "challenger": second.version}
    # Twice changes nothing.
    repeat = promote(
        PromoteSettings.from_dict({"experiment": "epsilon", "registered_model": "arena", "metric": "test_auroc"})
    )
    assert (repeat.action, repeat.new_version) == ("unchanged", False)
    assert len(client.search_model_versions("name='arena'")) == 2

    best = fake_run("epsilon", {"test_auroc": 0.96})
    third = promote(
        PromoteSettings.from_dict({"experiment": "epsilon", "registered_model": "arena", "metric": "test_auroc"})
    )
    assert (third.run_id, third.action) == (best, "champion")
    # The replaced champion is kept as `previous`: one command rolls back.
    assert aliases(client, "arena") == {
        "champion": third.version,
        "challenger": second.version,
        "previous": first.version,
    }
    assert train_cli(["promote", "--rollback", "arena"]) == 0
    assert aliases(client, "arena") == {
        "champion": first.version,
        "challenger": second.version,
        "previous": third.version,
    }


def test_only_runs_on_the_champions_data_compete_and_test_metrics_are_preferred(client, capsys):
    import mlflow

    def run_on(dataset: str, digest: str, metrics: dict[str, float]) -> str:
        run_id = fake_run("eta", metrics)
        MlflowClient().set_tag(run_id, "medimg.dataset", dataset)
        MlflowClient().set_tag(run_id, "medimg.task", "binary")
        MlflowClient().set_tag(run_id, "medimg.dataset_digest", digest)
        return run_id

    mlflow.set_experiment("eta")
    chest = run_on("chestxray14", "a" * 64, {"best_val_auroc": 0.80, "test_auroc": 0.78})
    first = promote(PromoteSettings.from_dict({"experiment": "eta", "registered_model": "chest"}))
    assert (first.run_id, first.metric) == (chest, "test_auroc")
    # A demo run on synthetic data scores higher but must never become the chest model's champion.
    run_on("synthetic", "b" * 64, {"best_val_auroc": 0.99, "test_auroc": 0.99})
    better = run_on("chestxray14", "a" * 64, {"best_val_auroc": 0.79, "test_auroc": 0.85})
    capsys.readouterr()
    second = promote(PromoteSettings.from_dict({"experiment": "eta", "registered_model": "chest"}))
    assert (second.run_id, second.action, second.metric) == (better, "champion", "test_auroc")
    assert "excluded 1 run(s) trained on other data: synthetic/binary (digest bbbbbbbbbbbb)" in capsys.readouterr().out


def test_rollback_without_a_previous_version_is_one_line(client, capsys):
    fake_run("theta", {"test_auroc": 0.9})
    promote(PromoteSettings.from_dict({"experiment": "theta", "registered_model": "lonely"}))
    capsys.readouterr()
    assert train_cli(["promote", "--rollback", "lonely"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "has no @previous version to roll back to" in error[0]


def test_mode_min_prefers_the_lowest_value(client):
    fake_run("zeta", {"val_loss": 0.40})
    lowest = fake_run("zeta", {"val_loss": 0.20})
    fake_run("zeta", {"val_loss": 0.30})
    result = promote(
        PromoteSettings.from_dict(
            {"experiment": "zeta", "metric": "val_loss", "mode": "min", "registered_model": "lows"}
        )
    )
    assert result.run_id == lowest and result.action == "champion"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--experiment", "iota"], "registered_model is required"),
        (["--registered-model", "x", "--experiment", "no-such-experiment"], "unknown experiment 'no-such-experiment'"),
        (["--registered-model", "x", "--experiment", "iota", "--metric", "nothing_logged"], "no FINISHED run"),
        (["--registered-model", "x", "--mode", "best"], "unknown mode 'best'"),
    ],
)
def test_bad_promote_settings_exit_2_with_one_line(client, arguments, expected, capsys):
    # An experiment of this test, with a finished run that logged another metric than the one asked for.
    fake_run("iota", {"test_auroc": 0.9}, with_model=False)
    assert train_cli(["promote", *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and expected in error


@pytest.mark.slow
def test_mlflow_run_promote_names_a_real_trained_model_champion(client, repo_root, tmp_path):
    """A real trained model: registered at training time, promote reuses that version and names it champion."""
    import mlflow
    import pandas as pd
    from PIL import Image

    from train.job.trainer import train
    from train.settings import MainSettings

    mlflow.set_experiment("real")
    run_id = train(
        MainSettings.from_dict(
            {"image_size": "32", "epochs": "1", "batch_size": "16", "max_examples": "120", "register_as": "real-model"}
        )
    ).run_id
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    # mlflow.set_experiment in this process exported the active experiment; the command names its own.
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    command = ["mlflow", "run", str(repo_root), "-e", "promote", "--env-manager", "local"]
    command += ["--experiment-name", "promotions", "-P", "experiment=real", "-P", "registered_model=real-model"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    assert printed["run_id"] == run_id and printed["action"] == "champion" and printed["new_version"] is False
    # The project run of the promote entry point records the decision.
    (promotion_run,) = client.search_runs([client.get_experiment_by_name("promotions").experiment_id])
    assert promotion_run.data.tags["medimg.promoted_run_id"] == run_id
    assert promotion_run.data.tags["medimg.promotion_action"] == "champion"
    (version,) = client.search_model_versions("name='real-model'")
    assert version.source == client.get_run(run_id).data.tags["medimg.model_uri"]
    assert aliases(client, "real-model") == {"champion": str(version.version)}

    champion = mlflow.pyfunc.load_model("models:/real-model@champion")
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(buffer, format="PNG")
    output = champion.predict(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]}))
    assert list(output.columns) == ["parasitized", "predicted", "threshold_parasitized", "frame"]
    assert 0.0 <= output["parasitized"][0] <= 1.0
