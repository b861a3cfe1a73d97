"""Numbers a clinician can act on: no invented AUROC, calibration, operating points, confidence intervals, subgroups."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from stores import sqlite_store

from serve.calibration import apply_calibration
from train.scoring.calibration import fit_calibration
from train.scoring.metrics import (
    calibration_error,
    calibration_scores,
    choose_threshold,
    subgroup_table,
    uncertainty,
    weighted_auroc,
)
from train.scoring.operating_point import parse_operating_point
from train.settings import ConfigError, MainSettings

TINY = {"image_size": "32", "batch_size": "16", "convolutions": "1", "augment": "false"}


# Pure functions, on numbers worked out by hand or by scikit-learn.


def test_weighted_auroc_equals_scikit_learn_with_ties_and_weights():
    generator = np.random.default_rng(0)
    labels = generator.random(400) < 0.3
    scores = np.round(generator.random(400) + 0.4 * labels, 1)  # coarse scores: many ties
    weights = generator.integers(0, 4, size=(6, 400)).astype(float)
    expected = [roc_auc_score(labels, scores, sample_weight=row) for row in weights]
    assert weighted_auroc(labels, scores, weights) == pytest.approx(expected)
    assert np.isnan(weighted_auroc(np.zeros(5), np.arange(5.0), np.ones((1, 5))))[0]


def test_intervals_cover_the_estimate_and_widen_when_patients_repeat_themselves():
    generator = np.random.default_rng(1)
    # 60 patients with 10 near-identical images each: the information of 60 images, not of 600.
    patient_label = generator.random(60) < 0.4
    patient_score = generator.normal(patient_label * 1.0, 1.0)
    labels = np.repeat(patient_label, 10)[:, None].astype(float)
    scores = np.repeat(patient_score, 10) + generator.normal(0, 0.01, 600)
    probabilities = (1 / (1 + np.exp(-scores)))[:, None]
    groups = np.repeat(np.arange(60), 10)
    by_image, _ = uncertainty(labels, probabilities, "binary", ["no", "yes"], thresholds=0.5, seed=3)
    by_patient, table = uncertainty(
        labels, probabilities, "binary", ["no", "yes"], thresholds=0.5, groups=groups, seed=3
    )
    point = roc_auc_score(labels[:, 0], probabilities[:, 0])
    assert by_patient["auroc_ci_low"] < point < by_patient["auroc_ci_high"]
    width = {
        name: result["auroc_ci_high"] - result["auroc_ci_low"]
        for name, result in (("image", by_image), ("patient", by_patient))
    }
    assert width["patient"] > 2 * width["image"]
    assert table["class"] == ["yes"] and table["positives"] == [int(labels.sum())]
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        assert 0.0 <= by_patient[f"{name}_ci_low"] <= by_patient[f"{name}_ci_high"] <= 1.0


def test_classes_without_positives_are_reported_not_averaged():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=float)
    probabilities = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.7, 0.6, 0.2], [0.2, 0.1, 0.4]])
    metrics, table = uncertainty(labels, probabilities, "multilabel", ["a", "b", "c"], thresholds=[0.5] * 3, seed=0)
    assert metrics["n_classes"] == 3 and metrics["n_classes_scored"] == 2
    assert table["scored"] == [True, True, False] and table["positives"] == [2, 2, 0]
    assert "auroc_c_ci_low" not in metrics and np.isnan(table["auroc"][2])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("youden", ("youden", 0.0)), ("sensitivity:0.95", ("sensitivity", 0.95)), ("0.3", ("threshold", 0.3))],
)
def test_operating_point_rules_parse(rule, expected):
    assert parse_operating_point(rule) == expected


def test_bad_operating_point_is_one_line_naming_the_forms():
    with pytest.raises(
        ConfigError, match=r"operating_point 'sens:0.9' is not understood; use youden, sensitivity:0.95"
    ):
        MainSettings.from_dict({"operating_point": "sens:0.9"})


def test_operating_points_meet_their_targets_on_validation_scores():
    generator = np.random.default_rng(2)
    labels = generator.random(2000) < 0.3
    scores = np.clip(generator.normal(0.35 + 0.3 * labels, 0.15), 0, 1)
    for rule, name, target in (("sensitivity:0.95", "sensitivity", 0.95), ("specificity:0.9", "specificity", 0.9)):
        called = scores >= choose_threshold(labels, scores, rule)
        achieved = (
            (called & labels).sum() / labels.sum()
            if name == "sensitivity"
            else (~called & ~labels).sum() / (~labels).sum()
        )
        assert achieved >= target
    youden = choose_threshold(labels, scores, "youden")
    assert 0.4 < youden < 0.6
    assert choose_threshold(labels, scores, "0.7") == 0.7


def test_youden_takes_the_middle_of_a_tied_range_of_thresholds():
    """A separable validation split ties every threshold between the highest negative and lowest positive score;
    the edge (the lowest positive, 0.999 on make demo's cells) would call a calibrated 0.9 negative."""
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert choose_threshold(labels, np.array([0.01, 0.02, 0.1, 0.999, 0.9995, 0.9999]), "youden") == pytest.approx(
        0.5495
    )
    # Two separate tied ranges, (0.2, 0.3] and (0.4, 0.6]: the middle of the wider one.
    labels = np.array([0, 0, 1, 0, 1, 1])
    threshold = choose_threshold(labels, np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.8]), "youden")
    assert threshold == pytest.approx(0.5) and (np.array([0.6, 0.8]) >= threshold).all() and threshold > 0.4


def test_calibration_repairs_over_confident_and_prior_shifted_probabilities():
    generator = np.random.default_rng(4)
    labels = (generator.random((4000, 2)) < [0.1, 0.3]).astype(float)
    logits = generator.normal(0, 1, labels.shape) + 2 * labels
    # Over-confident (logits x3) and shifted as a balanced loss leaves them (+1.5).
    raw = 1 / (1 + np.exp(-(3 * logits + 1.5)))
    calibration = fit_calibration(labels[:2000], raw[:2000], "multilabel")
    before = calibration_scores(labels[2000:], raw[2000:], "multilabel")
    after = calibration_scores(labels[2000:], apply_calibration(raw[2000:], calibration), "multilabel")
    assert after["ece"] < 0.3 * before["ece"] and after["brier"] < before["brier"]
    # Calibration keeps the ranking: AUROC is unchanged.
    calibrated = apply_calibration(raw, calibration)
    assert roc_auc_score(labels[:, 0], calibrated[:, 0]) == pytest.approx(roc_auc_score(labels[:, 0], raw[:, 0]))
    assert calibration_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0


def test_subgroups_share_one_class_set_and_report_the_gap():
    generator = np.random.default_rng(5)
    labels = (generator.random((600, 2)) < 0.4).astype(float)
    view = np.where(np.arange(600) < 300, "PA", "AP")
    noise = np.where(view == "PA", 0.3, 1.5)[:, None]
    probabilities = 1 / (1 + np.exp(-(2 * labels - 1 + generator.normal(0, 1, labels.shape) * noise)))
    table, gaps = subgroup_table({"view": view}, labels, probabilities, "multilabel", ["a", "b"], None, 0)
    rows = {subgroup: index for index, subgroup in enumerate(table["subgroup"])}
    assert table["examples"][rows["PA"]] == 300 and table["n_classes_scored"] == [2, 2]
    assert table["mean_auroc"][rows["PA"]] > table["mean_auroc"][rows["AP"]]
    assert gaps["view"] == pytest.approx(table["mean_auroc"][rows["PA"]] - table["mean_auroc"][rows["AP"]])
    assert all(
        low <= value <= high
        for low, value, high in zip(table["ci_low"], table["mean_auroc"], table["ci_high"], strict=True)
    )


# Training runs.


def test_a_validation_class_without_positives_stops_the_run_before_training(tracking_uri, capsys):
    from train.__main__ import main as train_cli

    arguments = ["--synthetic-task", "multilabel", "--max-examples", "20", "--image-size", "32"]
    started = time.perf_counter()
    assert train_cli(["main", *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: val_auroc is undefined on the val split of synthetic")
    assert "positive" in error[0] and "monitor=val_loss" in error[0]
    print(f"failed after {time.perf_counter() - started:.1f} s")
    # Nothing was tracked: the run never started.
    assert not MlflowClient(tracking_uri).search_runs(["0"])


def test_monitor_val_loss_trains_and_logs_only_computed_aurocs(tracking_uri):
    """A validation split where one label is always present, one never and one sometimes: only the last is scored."""
    import mlflow

    from train.job.stages import load_data
    from train.job.trainer import train

    settings = MainSettings.from_dict(
        {**TINY, "synthetic_task": "multilabel", "max_examples": "20", "epochs": "1", "monitor": "val_loss"}
    )
    val = load_data(settings).splits["val"]
    two_sided = [0 < count < val.count for count in val.positives]
    assert two_sided == [False, False, True], "these settings no longer give a partly one-sided validation split"
    train(settings)
    (run,) = mlflow.search_runs(output_format="list")
    metrics, params = run.data.metrics, run.data.params
    assert params["monitor"] == "val_loss" and "best_val_loss" in metrics
    assert int(metrics["val_n_classes_scored"]) == 1
    per_class = [key for key in metrics if key.startswith("val_auroc_")]
    assert per_class == ["val_auroc_stripes"]
    assert metrics["val_auroc"] == pytest.approx(metrics["val_auroc_stripes"])


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory):
    """One small multi-label synthetic training run, in process."""
    import mlflow

    from train.job.trainer import train

    directory = tmp_path_factory.mktemp("clinical")
    tracking_uri = sqlite_store(directory / "mlflow.db")
    mlflow.set_tracking_uri(tracking_uri)
    # An experiment of this store: an earlier test's set_experiment may name one of another store.
    mlflow.set_experiment("clinical")
    settings = MainSettings.from_dict(
        {**TINY, "convolutions": "2", "epochs": "3", "max_examples": "300", "synthetic_task": "multilabel"}
    )
    result = train(settings)
    yield tracking_uri, result
    mlflow.set_tracking_uri(None)


def test_run_logs_calibration_operating_points_intervals_and_subgroups(multilabel_run):
    import mlflow

    tracking_uri, result = multilabel_run
    client = MlflowClient(tracking_uri)
    metrics = client.get_run(result.run_id).data.metrics
    for split in ("val", "test"):
        for name in ("ece", "brier"):
            assert 0.0 <= metrics[f"{split}_{name}"] <= 1.0 and f"{split}_{name}_uncalibrated" in metrics
    assert metrics["val_ece"] < metrics["val_ece_uncalibrated"]
    for label in ("dots", "ring", "stripes"):
        low, value, high = (metrics[f"test_auroc_{label}{suffix}"] for suffix in ("_ci_low", "", "_ci_high"))
        assert low <= value <= high
        assert metrics[f"test_sensitivity_{label}_ci_low"] <= metrics[f"test_sensitivity_{label}"]
    assert metrics["test_n_classes_scored"] == 3 and "test_subgroup_auroc_gap_scanner" in metrics
    mlflow.set_tracking_uri(tracking_uri)
    base = f"runs:/{result.run_id}/"
    points = json.loads(mlflow.artifacts.load_text(base + "metrics/operating_points.json"))
    assert [row[0] for row in points["data"]] == ["dots", "ring", "stripes"]
    subgroups = json.loads(mlflow.artifacts.load_text(base + "metrics/test_subgroups.json"))
    assert {row[1] for row in subgroups["data"]} <= {"A", "B", "C"} and subgroups["columns"][:3] == [
        "attribute",
        "subgroup",
        "examples",
    ]
    artifacts = {item.path for item in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/reliability_val.png", "plots/reliability_test.png"} <= artifacts


def test_served_probabilities_are_the_calibrated_ones_and_follow_the_stored_thresholds(multilabel_run):
    import base64
    import io

    import mlflow
    import pandas as pd
    from PIL import Image

    from train.data.synthetic import generate

    tracking_uri, result = multilabel_run
    mlflow.set_tracking_uri(tracking_uri)
    served = mlflow.pyfunc.load_model(result.model_uri)
    classifier = served.unwrap_python_model()
    assert classifier.config.calibration["method"] == "platt" and len(classifier.config.thresholds) == 3
    images, _, _ = generate(6, 32, "multilabel", 99)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    answer = served.predict(pd.DataFrame({"image": encoded}))
    raw = classifier.model.predict(images.astype("float32"), verbose=0)
    expected = apply_calibration(raw, classifier.config.calibration)
    assert answer[["dots", "ring", "stripes"]].to_numpy() == pytest.approx(expected, abs=1e-5)
    thresholds = classifier.config.thresholds
    for row, probabilities in zip(answer["predicted"], expected, strict=True):
        called = [
            name for name, p, t in zip(["dots", "ring", "stripes"], probabilities, thresholds, strict=True) if p >= t
        ]
        assert (row.split("|") if row else []) == called
    assert answer["threshold_ring"].tolist() == [pytest.approx(thresholds[1])] * 6
    overridden = served.predict(pd.DataFrame({"image": encoded}), params={"threshold": 0.0})
    assert set(overridden["predicted"]) == {"dots|ring|stripes"} and set(overridden["threshold_dots"]) == {0.0}


def test_evaluate_refuses_other_data_unless_allowed_and_records_it(multilabel_run, capsys):
    import mlflow

    from train.__main__ import main as train_cli

    tracking_uri, result = multilabel_run
    mlflow.set_tracking_uri(tracking_uri)
    uri = f"runs:/{result.run_id}/model"
    # Another split seed moves images between splits: the "test" images may have been trained on.
    capsys.readouterr()
    assert train_cli(["evaluate", "--model-uri", uri, "--seed", "7"]) == 2
    # MLflow's download progress bars may come first; medimg's refusal is one line, the last.
    lines = capsys.readouterr().err.strip().splitlines()
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1 and lines[-1] == error[0]
    assert "differs from the training run's: digest" in error[0] and "allow_different_data" in error[0]
    assert train_cli(["evaluate", "--model-uri", uri, "--seed", "7", "--allow-different-data", "true"]) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.data.tags["medimg.allow_different_data"] == "true" and run.data.params["allow_different_data"] == "True"
    assert "test_mean_auroc_ci_low" in run.data.metrics and "test_ece" in run.data.metrics


@pytest.mark.slow
def test_a_mixed_precision_run_serves_float32(tmp_path):
    import base64
    import io

    import keras
    import mlflow
    import pandas as pd
    from PIL import Image

    from serve.preprocess import load_image_tensor
    from train.data.synthetic import generate
    from train.job.trainer import train

    mlflow.set_tracking_uri(sqlite_store(tmp_path / "mlflow.db"))
    mlflow.set_experiment("mixed-precision")
    try:
        settings = MainSettings.from_dict({**TINY, "epochs": "1", "max_examples": "120", "precision": "mixed_float16"})
        with pytest.warns(UserWarning, match="mixed_float16 on CPU"):
            result = train(settings)
        served = mlflow.pyfunc.load_model(result.model_uri)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        mlflow.set_tracking_uri(None)
    classifier = served.unwrap_python_model()
    assert {layer.dtype_policy.name for layer in classifier.model.layers} == {"float32"}
    images, _, _ = generate(4, 32, "binary", 11)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    answer = served.predict(pd.DataFrame({"image": [base64.b64encode(data).decode() for data in encoded]}))
    assert answer["parasitized"].dtype == np.float64
    # The reference: the trained weights in a model built under float32, on the same decoded tensors.
    reference = keras.models.clone_model(classifier.model)
    reference.set_weights(classifier.model.get_weights())
    tensors = np.stack([np.asarray(load_image_tensor(data, 32)) for data in encoded])
    expected = apply_calibration(reference.predict(tensors, verbose=0), classifier.config.calibration)
    assert answer["parasitized"].to_numpy() == pytest.approx(expected[:, 0], abs=1e-3)


def test_calibration_lowers_the_test_ece_of_a_deliberately_over_confident_model(multilabel_run):
    import mlflow

    from train.job.stages import calibrate, load_data, score_splits

    tracking_uri, result = multilabel_run
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(result.model_uri).unwrap_python_model().model
    # Six times sharper logits: the same ranking, far too sure of itself.
    predictions = model.get_layer("predictions")
    kernel, bias = predictions.get_weights()
    predictions.set_weights([kernel * 6.0, bias * 6.0])
    # The served model is loaded without its training loss; the test split's loss needs one.
    model.compile(loss="binary_crossentropy")
    settings = MainSettings.from_dict(
        {**TINY, "convolutions": "2", "epochs": "3", "max_examples": "300", "synthetic_task": "multilabel"}
    )
    data = load_data(settings)
    with mlflow.start_run(run_name="over-confident"):
        scores = score_splits(model, data, settings, calibrate(model, data, settings))
    assert scores["test_ece_uncalibrated"] > 0.1
    assert scores["test_ece"] < 0.75 * scores["test_ece_uncalibrated"]
    assert scores["test_brier"] < scores["test_brier_uncalibrated"]
