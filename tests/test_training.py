"""End-to-end training: the real `mlflow run`, in-process runs read back through MlflowClient, learnability."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from stores import sqlite_store

from train.settings import MainSettings

TINY = {"image_size": "32", "epochs": "2", "batch_size": "16", "max_examples": "160", "seed": "3"}


def mlflow_env(tracking_uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run_id, key))


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found |= artifact_paths(client, run_id, item.path)
        else:
            found.add(item.path)
    return found


@pytest.mark.slow
def test_mlflow_run_trains_logs_and_registers(repo_root, tmp_path):
    tracking_uri = sqlite_store(tmp_path / "mlflow.db")
    command = ["mlflow", "run", str(repo_root), "--env-manager", "local", "--experiment-name", "smoke"]
    for key, value in {**TINY, "register_as": "smoke-classifier", "run_name": "smoke-run"}.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(
        command, capture_output=True, text=True, env=mlflow_env(tracking_uri), cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("smoke")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "smoke-run"
    run_id = run.info.run_id
    for key in (
        "loss",
        "val_loss",
        "val_auroc",
        "auc",
        "val_precision",
        "val_recall",
        "learning_rate",
        "train_images_per_s",
    ):
        assert metric_steps(client, run_id, key) == [0, 1], key
    params = run.data.params
    assert params["model"] == "small_cnn" and params["image_size"] == "32" and params["task"] == "binary"
    assert set(MainSettings.defaults()) <= set(params)
    tags = run.data.tags
    assert tags["medimg.dataset"] == "synthetic" and tags["medimg.task"] == "binary"
    assert tags["medimg.version.tensorflow"].startswith("2.21")
    assert "hardware.device" in tags and tags["medimg.dataset_digest"]
    assert run.data.metrics["data.skipped_images"] == 0
    assert 0.0 <= run.data.metrics["test_auroc"] <= 1.0
    assert run.data.metrics["wall_time_s"] > 0
    artifacts = artifact_paths(client, run_id)
    assert {"plots/training_curves.png", "config/resolved_config.yaml", "architecture/model_summary.txt"} <= artifacts
    assert len(run.inputs.dataset_inputs) == 1
    (version,) = client.search_model_versions("name='smoke-classifier'")
    assert version.run_id == run_id and version.status == "READY"
    (logged,) = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert logged.source_run_id == run_id
    assert version.source == f"models:/{logged.model_id}"

    # `mlflow run` logged the empty data_dir as '' : evaluation must still find the dataset settings.
    import mlflow

    from train.__main__ import main as train_cli

    mlflow.set_tracking_uri(tracking_uri)
    try:
        assert train_cli(["evaluate", "--model-uri", "models:/smoke-classifier/1", "--run-name", "eval"]) == 0
    finally:
        mlflow.set_tracking_uri(None)
    all_experiments = [item.experiment_id for item in client.search_experiments()]
    (evaluated,) = client.search_runs(all_experiments, "attributes.run_name = 'eval'")
    assert evaluated.data.tags["medimg.source_run_id"] == run_id
    assert 0.0 <= evaluated.data.metrics["test_auroc"] <= 1.0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One small in-process training run on synthetic data, shared by the read-back tests below."""
    import mlflow

    from train.job.trainer import train

    directory = tmp_path_factory.mktemp("inprocess")
    tracking_uri = sqlite_store(directory / "mlflow.db")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("learnability")
    config = MainSettings.from_dict(
        {
            "image_size": "32",
            "epochs": "4",
            "batch_size": "32",
            "seed": "0",
            "learning_rate": "0.003",
            "augment": "false",
        }
    )
    run_id = train(config).run_id
    yield tracking_uri, run_id
    mlflow.set_tracking_uri(None)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.mark.slow
def test_small_cnn_learns_synthetic(trained_run):
    tracking_uri, run_id = trained_run
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.data.metrics["best_val_auroc"] >= 0.9
    assert run.data.metrics["test_auroc"] >= 0.85


@pytest.mark.slow
def test_logged_model_predicts_like_keras(trained_run, tmp_path):
    import base64

    import mlflow
    import pandas as pd

    tracking_uri, run_id = trained_run
    mlflow.set_tracking_uri(tracking_uri)
    model_uri = MlflowClient(tracking_uri).get_run(run_id).data.tags["medimg.model_uri"]
    served = mlflow.pyfunc.load_model(model_uri)
    rng = np.random.default_rng(0)
    path = tmp_path / "cell.png"
    Image.fromarray(rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)).save(path)
    frame = pd.DataFrame({"image": [base64.b64encode(path.read_bytes()).decode()]})
    output = served.predict(frame)
    assert list(output.columns) == ["parasitized", "predicted", "threshold_parasitized", "frame"]
    classifier = served.unwrap_python_model()
    from serve.preprocess import load_image_tensor

    raw = classifier.model.predict(np.asarray(load_image_tensor(path.read_bytes(), 32))[None], verbose=0)
    # The served probability is the Keras output mapped through the calibration stored with the model.
    expected = classifier.calibrated(raw)
    assert abs(float(output["parasitized"][0]) - float(expected[0, 0])) < 1e-5
    threshold = classifier.config.thresholds[0]
    assert output["threshold_parasitized"][0] == pytest.approx(threshold)
    assert output["predicted"][0] == ("parasitized" if expected[0, 0] >= threshold else "uninfected")


@pytest.mark.slow
def test_imagefolder_with_unreadable_files_completes_and_reports_skips(tracking_uri, tmp_path):
    from train.job.trainer import train

    rng = np.random.default_rng(1)
    root = tmp_path / "folder"
    for class_name in ("NORMAL", "PNEUMONIA"):
        (root / class_name).mkdir(parents=True)
        for index in range(12):
            size = (40 + index, 36 + 2 * index)
            mode = ("L", "RGB", "RGBA")[index % 3]
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(
                root / class_name / f"{index}.png"
            )
    (root / "NORMAL" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (root / "PNEUMONIA" / "empty.jpg").write_bytes(b"")
    good = (root / "PNEUMONIA" / "0.png").read_bytes()
    (root / "PNEUMONIA" / "truncated.png").write_bytes(good[: len(good) // 2])

    import mlflow

    mlflow.set_experiment("imagefolder")
    config = MainSettings.from_dict({"dataset": "imagefolder", "data_dir": str(root), **TINY, "epochs": "1"})
    run_id = train(config).run_id
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["data.skipped_images"] == 3
    assert run.data.params["train_examples"] != "0"
    skipped = mlflow.artifacts.load_text(f"runs:/{run_id}/data/skipped_images.txt")
    assert "corrupt.png" in skipped and "empty.jpg" in skipped and "truncated.png" in skipped
    # A folder of chest radiographs gets the radiograph policy by default: no vertical flips, no rotations.
    assert run.data.params["augment"] == "auto" and run.data.params["resolved_augmentation"] == "radiograph"
    # Images decoded from files are augmented one by one before batching (train.data.pipeline.augmentation_placement).
    assert run.data.params["resolved_augmentation_placement"] == "per_image"
    resolved = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config/resolved_config.yaml"))
    augmentation = resolved["resolved"]["augmentation"]
    assert augmentation["horizontal_flip"] is True
    assert augmentation["vertical_flip"] is False and augmentation["rotate_90"] is False


@pytest.mark.slow
def test_multilabel_run_logs_per_class_auroc_and_evaluate_scores_each_label(tracking_uri, capsys):
    import mlflow

    from train.job.trainer import train

    mlflow.set_experiment("multilabel")
    config = MainSettings.from_dict({**TINY, "synthetic_task": "multilabel"})
    run_id = train(config).run_id
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    resolved = mlflow.artifacts.load_text(f"runs:/{run_id}/config/resolved_config.yaml")
    assert "multilabel" in resolved
    per_class = [key for key in run.data.metrics if key.startswith("val_auroc_")]
    assert len(per_class) >= 2
    assert metric_steps(client, run_id, "val_mean_auroc") == [0, 1]
    assert json.loads(run.data.params["num_outputs"]) == 3
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/metrics/test_classes.json"))
    assert table["columns"][0] == "class" and {"auroc", "auroc_ci_low", "auroc_ci_high"} <= set(table["columns"])
    assert [row[0] for row in table["data"]] == ["dots", "ring", "stripes"]

    # `python -m train evaluate` of that run, in-process, on its validation split: per-label metrics.
    from train.__main__ import main as train_cli

    mlflow.set_experiment("evaluations")
    uri = f"runs:/{run_id}/model"
    assert train_cli(["evaluate", "--model-uri", uri, "--split", "val", "--threshold", "0.4"]) == 0
    evaluated = client.get_run(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"])
    metrics = evaluated.data.metrics
    for label in ("dots", "ring", "stripes"):
        for name in ("auroc", "precision", "recall", "f1"):
            assert 0.0 <= metrics[f"val_{name}_{label}"] <= 1.0, (name, label)
    assert metrics["val_mean_auroc"] == pytest.approx(
        np.mean([metrics[f"val_auroc_{label}"] for label in ("dots", "ring", "stripes")])
    )
    assert 0.0 <= metrics["val_exact_match"] <= 1.0
    assert evaluated.data.tags["medimg.source_run_id"] == run_id
    assert evaluated.data.tags["medimg.split"] == "val"
    plots = {"plots/roc_curves.png", "plots/confusion_matrix.png", "plots/samples.png", "plots/gradcam.png"}
    assert artifact_paths(client, evaluated.info.run_id) >= plots
    matrix = mlflow.artifacts.load_dict(f"runs:/{evaluated.info.run_id}/metrics/confusion_matrix.json")["matrices"]
    assert np.asarray(matrix).shape == (3, 2, 2)
