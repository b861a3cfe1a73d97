"""`python -m train evaluate`: metrics by hand on tiny arrays, then real evaluation runs of trained models read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from stores import sqlite_store

from train.__main__ import main as train_cli
from train.release.evaluate import data_settings
from train.scoring.metrics import classification_metrics, confusion_matrices, sensitivity_at_specificity
from train.settings import ConfigError, EvaluateSettings

PLOTS = {"plots/roc_curves.png", "plots/confusion_matrix.png", "plots/samples.png", "plots/gradcam.png"}


# Metrics, computed by hand.


def test_binary_threshold_metrics_match_hand_counts():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    probabilities = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.3, 0.8])
    metrics = classification_metrics(labels, probabilities, "binary", ["normal", "sick"], threshold=0.5)
    # At 0.5: TP = 3 (0.9, 0.6, 0.8), FN = 1 (0.4), FP = 1 (0.7), TN = 3.
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["specificity"] == pytest.approx(3 / 4)
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    assert metrics["f1"] == pytest.approx(3 / 4)
    # 14 of the 16 positive-negative pairs are ranked right: positives 0.6 and 0.4 score below the negative 0.7.
    assert metrics["auroc"] == pytest.approx(14 / 16)
    (matrix,) = confusion_matrices(labels, probabilities, "binary", 0.5)
    assert matrix.tolist() == [[3, 1], [1, 3]]


def test_sensitivity_at_specificity_takes_the_best_allowed_threshold():
    negatives = np.linspace(0.0, 0.5, 10)
    positives = np.array([0.4, 0.48, 0.7, 0.8])
    labels = np.r_[np.zeros(10), np.ones(4)]
    scores = np.r_[negatives, positives]
    # Specificity 0.9 allows one false positive of ten (the negative 0.5): threshold 0.48 catches three
    # positives; catching 0.4 as well would also admit the negative 0.44.
    assert sensitivity_at_specificity(labels, scores, 0.9) == pytest.approx((0.75, 0.48))
    # Specificity 0.99 allows no false positive: only 0.7 and 0.8 are above every negative.
    assert sensitivity_at_specificity(labels, scores, 0.99) == pytest.approx((0.5, 0.7))


def test_multiclass_metrics_use_the_most_probable_class():
    labels = np.eye(3)[[0, 1, 2, 2, 1]]
    probabilities = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4], [0.3, 0.4, 0.3]], dtype=float
    )
    metrics = classification_metrics(labels, probabilities, "multiclass", ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["recall_c"] == pytest.approx(1 / 2) and metrics["precision_a"] == pytest.approx(1 / 2)
    assert {"auroc_a", "auroc_b", "auroc_c", "auroc", "f1", "sensitivity_at_specificity"} <= set(metrics)
    (matrix,) = confusion_matrices(labels, probabilities, "multiclass", 0.5)
    assert matrix.tolist() == [[1, 0, 0], [0, 2, 0], [1, 0, 1]]


def test_multilabel_metrics_are_per_label_with_means_and_exact_match():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probabilities = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.7], [0.6, 0.1]])
    metrics = classification_metrics(labels, probabilities, "multilabel", ["dots", "ring"], threshold=0.5)
    assert metrics["recall_dots"] == 1.0 and metrics["recall_ring"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.75)
    assert metrics["exact_match"] == pytest.approx(2 / 4)
    assert metrics["mean_auroc"] == metrics["auroc"]
    matrices = confusion_matrices(labels, probabilities, "multilabel", 0.5)
    assert [matrix.tolist() for matrix in matrices] == [[[1, 1], [0, 2]], [[2, 0], [1, 1]]]


def test_data_settings_default_to_the_training_run():
    source = {"dataset": "synthetic", "data_dir": "", "seed": "7", "max_examples": "300", "validation_fraction": "0.2"}
    config = EvaluateSettings.from_dict({"model_uri": "models:/x@champion"})
    assert data_settings(config, source, "multilabel") == {
        "name": "synthetic",
        "data_dir": None,
        "seed": 7,
        "max_examples": 300,
        "validation_fraction": 0.2,
        "view": "all",
        "group_pattern": "",
        "synthetic_task": "multilabel",
    }
    explicit = EvaluateSettings.from_dict({"model_uri": "models:/x@champion", "seed": "3", "max_examples": "0"})
    assert data_settings(explicit, source, "binary")["seed"] == 3
    assert data_settings(explicit, source, "binary")["max_examples"] == 0
    with pytest.raises(ConfigError, match="dataset is required"):
        data_settings(config, {}, "binary")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ([], "a model URI is required"),
        (["--model-uri", "no-such-thing"], "is neither a model URI nor a model folder"),
        (["--model-uri", "models:/x@champion", "--split", "holdout"], "unknown split 'holdout'"),
        (["--model-uri", "models:/x@champion", "--specificity", "1.0"], "specificity must be in (0, 1)"),
        (["--model-uri", "models:/x@champion", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    ],
)
def test_bad_evaluate_settings_exit_2_with_one_line(arguments, expected, capsys):
    assert train_cli(["evaluate", *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and expected in error[0]


def test_unknown_registered_model_exits_2(tracking_uri, capsys):
    assert train_cli(["evaluate", "--model-uri", "models:/nothing-here@champion"]) == 2
    # MLflow logs the creation of the fresh sqlite store first; the error is the last line.
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "does not resolve: Registered Model with name=nothing-here" in error


# Real evaluation runs.


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A module-wide sqlite tracking store with one binary model trained on synthetic data (test_training evaluates a
    multilabel run right after training it)."""
    import mlflow

    from train.job.trainer import train
    from train.settings import MainSettings

    directory = tmp_path_factory.mktemp("evaluate")
    tracking_uri = sqlite_store(directory / "mlflow.db")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("evaluate")
    binary = train(
        MainSettings.from_dict(
            {
                "image_size": "32",
                "epochs": "4",
                "batch_size": "16",
                "max_examples": "300",
                "learning_rate": "0.003",
                "augment": "false",
                "seed": "5",
                "register_as": "evaluated",
            }
        )
    ).run_id
    client = MlflowClient(tracking_uri)
    client.set_registered_model_alias("evaluated", "champion", "1")
    yield {"uri": tracking_uri, "client": client, "binary": binary}
    mlflow.set_tracking_uri(None)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def latest_run(client, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


@pytest.mark.slow
def test_mlflow_run_evaluate_on_the_champion_logs_metrics_plots_and_tags(tracking, repo_root, tmp_path):
    import mlflow

    client = tracking["client"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking["uri"]}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    # mlflow.set_experiment in this process exported the active experiment; the command names its own.
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    command = ["mlflow", "run", str(repo_root), "-e", "evaluate", "--env-manager", "local"]
    command += ["--experiment-name", "evaluations", "-P", "model_uri=models:/evaluated@champion"]
    command += ["-P", "specificity=0.8"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    run = client.get_run(printed["run_id"])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["test_auroc"] > 0.8
    for name in ("accuracy", "precision", "recall", "specificity", "f1", "sensitivity_at_specificity"):
        assert 0.0 <= metrics[f"test_{name}"] <= 1.0, name
    training = client.get_run(tracking["binary"])
    # The default evaluates the training run's own test split: same seed, same size.
    assert metrics["test_examples"] == float(training.data.params["test_examples"])
    assert run.data.params["resolved_seed"] == "5" and run.data.params["resolved_max_examples"] == "300"
    assert float(run.data.params["specificity"]) == 0.8
    tags = run.data.tags
    assert tags["medimg.evaluated_model_uri"] == "models:/evaluated@champion"
    assert tags["medimg.source_run_id"] == tracking["binary"]
    assert tags["medimg.registered_model_version"] == "evaluated/1"
    assert "medimg.model_uri" not in tags
    assert PLOTS | {"predictions/predictions.csv", "metrics/confusion_matrix.json"} <= artifact_paths(
        client, run.info.run_id
    )
    matrix = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/metrics/confusion_matrix.json")["matrices"]
    assert np.asarray(matrix).shape == (1, 2, 2) and np.asarray(matrix).sum() == metrics["test_examples"]
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots")
    from PIL import Image

    for name in ("roc_curves.png", "confusion_matrix.png", "samples.png", "gradcam.png"):
        with Image.open(os.path.join(local, name)) as image:
            assert image.format == "PNG" and min(image.size) > 100, name


@pytest.mark.slow
def test_evaluate_rejects_a_dataset_with_other_classes(tracking, tmp_path, capsys):
    from PIL import Image

    for name in ("cats", "dogs", "birds"):
        (tmp_path / name).mkdir()
        for index in range(4):
            Image.new("RGB", (16, 16), (index * 40, 10, 10)).save(tmp_path / name / f"{index}.png")
    arguments = ["evaluate", "--model-uri", "models:/evaluated@champion", "--dataset", "imagefolder"]
    assert train_cli([*arguments, "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "evaluate on the dataset it was trained for" in error[0]
