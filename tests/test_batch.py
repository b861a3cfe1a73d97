"""`python -m train batch`: an archive of PNGs, DICOMs and broken files scored into part files, resumed, killed and resumed, scored by Spark, and back-tested like evaluate."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from serving_helpers import MODEL_NAME, cell_image, write_dicom

from serve.contract import (
    ERROR_COLUMN,
    FRAME_COLUMN,
    HEATMAP_COLUMN,
    IMAGE_COLUMN,
    MODEL_ID_COLUMN,
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    PATH_COLUMN,
    PREDICTED_COLUMN,
    SHA256_COLUMN,
    threshold_column,
)
from train.__main__ import main as train_cli
from train.batch.output import TEMPORARY_PREFIX, part_files, read_output
from train.tracking import names

POSITIVE = "parasitized"
PNG_COUNT = 300
# The DICOMs: one with .dcm, one named like a PACS export, one named by its SOP Instance UID.
DICOM_NAMES = ("dicom/chest.dcm", "dicom/IM00001", "dicom/1.2.826.0.1.3680043.2.1125.7")
BROKEN = {
    "broken/truncated.png": "undecodable_image",
    "broken/text.png": "not_an_image",
    "broken/empty.jpg": "empty_image",
    "broken/no_pixels.dcm": "undecodable_image",
}
COLUMNS = [
    PATH_COLUMN,
    SHA256_COLUMN,
    FRAME_COLUMN,
    ERROR_COLUMN,
    POSITIVE,
    PREDICTED_COLUMN,
    threshold_column(POSITIVE),
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    MODEL_ID_COLUMN,
]


def write_archive(root: Path, png_count: int) -> Path:
    """PNG cells in three day folders, three DICOMs (two without extension), four broken files and a non-image."""
    for index in range(png_count):
        folder = root / f"day{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(cell_image(32, index)).save(folder / f"cell{index:04d}.png")
    (root / "dicom").mkdir()
    generator = np.random.default_rng(0)
    for name in DICOM_NAMES:
        write_dicom(root / name, generator.integers(0, 4096, (48, 48)).astype(np.uint16), shape=(48, 48))
    (root / "broken").mkdir()
    good = (root / "day0" / "cell0000.png").read_bytes()
    (root / "broken" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "broken" / "text.png").write_text("not an image")
    (root / "broken" / "empty.jpg").write_bytes(b"")
    write_dicom(root / "broken" / "no_pixels.dcm", None)
    (root / "notes.txt").write_text("not scored: not an image name")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("archive"), PNG_COUNT)


@pytest.fixture
def store(registered_model, monkeypatch) -> dict:
    """The registered model's tracking store as this test's MLFLOW_TRACKING_URI (subprocesses inherit it)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered_model["tracking_uri"])
    mlflow.set_tracking_uri(registered_model["tracking_uri"])
    yield registered_model
    mlflow.set_tracking_uri(None)


def batch(*arguments: str) -> int:
    return train_cli(["batch", *arguments])


def run_of(store: dict, run_id: str):
    return MlflowClient(store["tracking_uri"]).get_run(run_id)


def last_batch_run(store: dict, kind: str = names.KIND_BATCH):
    """The newest run of `kind` (batch, evaluation) in the store."""
    client = MlflowClient(store["tracking_uri"])
    runs = client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()],
        f"tags.`{names.KIND_TAG}` = '{kind}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0]


def served_answers(loaded_model, root: Path, paths: list[str]) -> pd.DataFrame:
    """The served pyfunc's answer for files of the archive (one request, as a REST client sends it)."""
    images = [base64.b64encode((root / path).read_bytes()).decode("ascii") for path in paths]
    return loaded_model.predict(pd.DataFrame({IMAGE_COLUMN: images}))


# Settings mistakes.


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model load fails the test: mistakes must be found before it."""
    import mlflow

    def refuse(*arguments, **keywords):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", refuse)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--input": "missing-folder"}, "does not exist"),
        ({"--input": "EMPTY"}, "holds no images"),
        ({"--engine": "flink"}, "unknown engine 'flink'; valid engines: local, spark"),
        ({"--model-uri": "models:/served-classifier/Staging"}, "stages are not used"),
        ({"--model-uri": "models:/no-such-model@champion"}, "does not resolve"),
        ({"--output": ""}, "output is required"),
    ],
)
def test_mistakes_fail_in_one_line_with_exit_2_before_any_model_loads(
    store, archive, tmp_path, capsys, no_model_loading, change, expected
):
    (tmp_path / "empty").mkdir()
    values = {"--model-uri": store["uri"], "--input": str(archive), "--output": str(tmp_path / "scores.parquet")}
    values.update({flag: str(tmp_path / "empty") if value == "EMPTY" else value for flag, value in change.items()})
    arguments = [part for flag, value in values.items() for part in (flag, value)]
    assert batch(*arguments) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and expected in error
    assert not (tmp_path / "scores.parquet").exists()


def test_an_output_of_another_model_version_is_refused_before_loading(store, archive, tmp_path, capsys):
    output = tmp_path / "scores.parquet"
    output.mkdir()
    row = {column: None for column in COLUMNS} | {PATH_COLUMN: "day0/cell0000.png", ERROR_COLUMN: ""}
    row |= {MODEL_NAME_COLUMN: MODEL_NAME, MODEL_VERSION_COLUMN: "7", MODEL_ID_COLUMN: "m-" + "0" * 32}
    pd.DataFrame([row]).to_parquet(output / "part-00000.parquet")
    assert batch("--model-uri", store["uri"], "--input", str(archive), "--output", str(output)) == 2
    assert f"holds rows scored by {MODEL_NAME} version 7" in capsys.readouterr().err


# The local engine.


@pytest.fixture(scope="module")
def scored(registered_model, archive, tmp_path_factory):
    """The archive scored once into Parquet parts of 100 rows, then scored again (resume): both runs' ids."""
    import mlflow

    output = tmp_path_factory.mktemp("scored") / "scores.parquet"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = registered_model["tracking_uri"]
    mlflow.set_tracking_uri(registered_model["tracking_uri"])
    runs = []
    try:
        for _ in range(2):
            arguments = ["--model-uri", registered_model["uri"], "--input", str(archive), "--output", str(output)]
            assert batch(*arguments, "--part-size", "100") == 0
            runs.append(last_batch_run(registered_model).info.run_id)
            if not runs[1:]:
                parts = {path: path.stat().st_mtime_ns for path in part_files(output)}
    finally:
        mlflow.set_tracking_uri(None)
        # mlflow.set_tracking_uri(None) drops MLFLOW_TRACKING_URI from the environment as well.
        os.environ.pop("MLFLOW_TRACKING_URI", None) if previous is None else os.environ.update(
            MLFLOW_TRACKING_URI=previous
        )
    return {"output": output, "first": runs[0], "second": runs[1], "parts": parts}


def test_one_row_per_file_with_the_served_columns_and_a_reason_for_each_broken_file(scored, archive):
    rows = read_output(scored["output"])
    assert list(rows.columns) == COLUMNS
    expected_paths = {f"day{i % 3}/cell{i:04d}.png" for i in range(PNG_COUNT)} | set(DICOM_NAMES) | set(BROKEN)
    assert len(rows) == len(expected_paths) == PNG_COUNT + 7 and set(rows[PATH_COLUMN]) == expected_paths
    failed = rows[rows[ERROR_COLUMN] != ""].set_index(PATH_COLUMN)
    assert {path: error.split(":")[0] for path, error in failed[ERROR_COLUMN].items()} == BROKEN
    assert failed[POSITIVE].isna().all() and failed[FRAME_COLUMN].isna().all()
    good = rows[rows[ERROR_COLUMN] == ""]
    assert good[POSITIVE].between(0, 1).all() and (good[FRAME_COLUMN] == 0).all()
    assert set(good[MODEL_NAME_COLUMN]) == {MODEL_NAME} and set(good[MODEL_VERSION_COLUMN]) == {"1"}
    assert good[MODEL_ID_COLUMN].str.startswith("m-").all()
    import hashlib

    assert (
        rows.set_index(PATH_COLUMN).loc["dicom/IM00001", SHA256_COLUMN]
        == hashlib.sha256((archive / "dicom/IM00001").read_bytes()).hexdigest()
    )
    # Complete parts of 100 rows, nothing half-written.
    assert [len(pd.read_parquet(path)) for path in part_files(scored["output"])] == [100, 100, 100, 7]
    assert not list(scored["output"].glob(f"{TEMPORARY_PREFIX}*"))


def test_batch_rows_equal_the_served_answer_for_the_same_files(scored, archive, loaded_model):
    paths = ["day0/cell0000.png", "day1/cell0001.png", "day2/cell0299.png", *DICOM_NAMES]
    served = served_answers(loaded_model, archive, paths)
    rows = read_output(scored["output"]).set_index(PATH_COLUMN).loc[paths]
    np.testing.assert_allclose(rows[POSITIVE].to_numpy(), served[POSITIVE].to_numpy(), atol=1e-6)
    assert rows[PREDICTED_COLUMN].tolist() == served[PREDICTED_COLUMN].tolist()
    assert rows[threshold_column(POSITIVE)].tolist() == served[threshold_column(POSITIVE)].tolist()


def test_the_run_counts_by_reason_and_carries_no_file_path(scored, store):
    run = run_of(store, scored["first"])
    metrics = run.data.metrics
    assert metrics[names.IMAGES_SCORED_METRIC] == PNG_COUNT + 3 and metrics[names.IMAGES_RESUMED_METRIC] == 0
    assert metrics[names.IMAGES_FAILED_METRIC] == 4
    assert metrics[names.failed_metric("undecodable_image")] == 2 and metrics[names.failed_metric("empty_image")] == 1
    assert metrics[names.IMAGES_PER_S_METRIC] > 0
    # The job watched its answers as the app does: drift against the model's validation reference.
    assert metrics[names.monitoring_metric("reference_available")] == 1.0
    assert metrics[names.monitoring_metric("window_answers")] == PNG_COUNT + 3
    assert metrics[names.monitoring_metric(f"score_psi.{POSITIVE}")] >= 0.0
    assert metrics[names.monitoring_metric("input_mean_intensity")] > 0.0
    assert run.data.tags[names.KIND_TAG] == names.KIND_BATCH
    assert run.data.tags[names.REGISTERED_MODEL_VERSION_TAG] == f"{MODEL_NAME}/1"
    assert run.data.tags[names.RUN_NAME_TAG] == f"batch {MODEL_NAME} version 1"
    assert run.data.params["output"] == str(scored["output"])
    recorded = " ".join([*map(str, run.data.params.values()), *run.data.tags.values(), *run.data.metrics])
    for name in ("cell0000", "IM00001", "truncated", "no_pixels", "day1/"):
        assert name not in recorded
    # Small outputs are copied into the run.
    artifacts = MlflowClient(store["tracking_uri"]).list_artifacts(scored["first"], names.BATCH_OUTPUT_ARTIFACT)
    assert len(artifacts) == 4


def test_a_rerun_scores_nothing_new_and_rewrites_no_part(scored, store):
    metrics = run_of(store, scored["second"]).data.metrics
    assert metrics[names.IMAGES_SCORED_METRIC] == 0 and metrics[names.IMAGES_FAILED_METRIC] == 0
    assert metrics[names.IMAGES_RESUMED_METRIC] == PNG_COUNT + 7
    assert {path: path.stat().st_mtime_ns for path in part_files(scored["output"])} == scored["parts"]


@pytest.mark.slow
def test_a_job_killed_half_way_and_started_again_gives_each_file_exactly_one_row(store, archive, tmp_path, repo_root):
    output = tmp_path / "scores.parquet"
    arguments = ["--model-uri", store["uri"], "--input", str(archive), "--output", str(output)]
    # Small parts and one image per prediction, so that the job is still running when the first parts appear.
    slow = ["--part-size", "10", "--batch-size", "1", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "train", "batch", *arguments, *slow],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while len(part_files(output)) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    killed = read_output(output)
    assert 30 <= len(killed) < PNG_COUNT + 7 and not killed[PATH_COLUMN].duplicated().any()
    # Started again as a user of the MLflow project would: `mlflow run . -e batch` with the same settings.
    restart = ["mlflow", "run", str(repo_root), "-e", "batch", "--env-manager", "local"]
    restart += ["-P", f"model_uri={store['uri']}", "-P", f"input={archive}", "-P", f"output={output}"]
    restart += ["-P", "part_size=100"]
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    done = subprocess.run(restart, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = read_output(output)
    assert len(rows) == PNG_COUNT + 7 and not rows[PATH_COLUMN].duplicated().any()
    assert not list(output.glob(f"{TEMPORARY_PREFIX}*"))
    metrics = last_batch_run(store).data.metrics
    assert metrics[names.IMAGES_RESUMED_METRIC] == len(killed)
    assert metrics[names.IMAGES_SCORED_METRIC] + metrics[names.IMAGES_FAILED_METRIC] == PNG_COUNT + 7 - len(killed)


def test_a_path_list_into_csv_with_heatmaps(store, archive, tmp_path, loaded_model):
    listed = ["day0/cell0000.png", "dicom/IM00001", "missing/gone.png", "broken/text.png"]
    list_file = tmp_path / "list.csv"
    pd.DataFrame({PATH_COLUMN: [str(archive / path) for path in listed], "note": "x"}).to_csv(list_file, index=False)
    output = tmp_path / "scores.csv"
    assert (
        batch("--model-uri", store["uri"], "--input", str(list_file), "--output", str(output), "--explain", "true") == 0
    )
    assert [path.name for path in part_files(output)] == ["part-00000.csv"]
    rows = read_output(output).set_index(PATH_COLUMN)
    assert rows.index.tolist() == [str(archive / path) for path in listed]
    assert rows[ERROR_COLUMN].str.split(":").str[0].tolist() == ["", "", "unreadable_file", "not_an_image"]
    served = served_answers(loaded_model, archive, listed[:2])
    np.testing.assert_allclose(rows[POSITIVE].iloc[:2].to_numpy(), served[POSITIVE].to_numpy(), atol=1e-6)
    heatmaps = tmp_path / "scores_heatmaps"
    for name in rows[HEATMAP_COLUMN].iloc[:2]:
        with Image.open(heatmaps / name) as heatmap:
            assert heatmap.mode == "RGBA" and heatmap.size[0] > 0


def test_parallel_decoding_reports_the_first_bad_row_as_one_by_one_decoding_would(loaded_model, archive):
    from serve.pyfunc import InvalidImageInput

    paths = ["day0/cell0000.png", "day1/cell0001.png", "broken/truncated.png", "day2/cell0002.png"]
    images = [base64.b64encode((archive / path).read_bytes()).decode("ascii") for path in paths]
    images.append(images[2])
    with pytest.raises(InvalidImageInput) as rejected:
        loaded_model.predict(pd.DataFrame({IMAGE_COLUMN: images}))
    assert rejected.value.reason == "undecodable_image" and rejected.value.message.startswith("row 2:")
    together = loaded_model.predict(pd.DataFrame({IMAGE_COLUMN: images[:2] + images[3:4]}))
    alone = pd.concat(
        [loaded_model.predict(pd.DataFrame({IMAGE_COLUMN: [image]})) for image in images[:2] + images[3:4]]
    )
    np.testing.assert_allclose(together[POSITIVE].to_numpy(), alone[POSITIVE].to_numpy(), atol=1e-6)


# Back-testing.


def test_labels_are_found_in_layouts_that_match_the_model(tmp_path):
    from train.data import labels_in

    classes = ["uninfected", "parasitized"]
    for name in ("b_normal", "a_sick"):
        (tmp_path / "folders" / name).mkdir(parents=True)
    assert labels_in(str(tmp_path / "folders"), ["a_sick", "b_normal"]) == "imagefolder"
    # imagefolder's classes are its sorted folder names: another order is another model's label space.
    assert labels_in(str(tmp_path / "folders"), ["b_normal", "a_sick"]) == ""
    for name in ("Parasitized", "Uninfected"):
        (tmp_path / "cells" / name).mkdir(parents=True)
    assert labels_in(str(tmp_path / "cells"), classes) == "malaria"
    (tmp_path / "nih").mkdir()
    (tmp_path / "nih" / "Data_Entry_2017_v2020.csv").write_text("Image Index,Finding Labels\n")
    assert labels_in(str(tmp_path / "nih"), classes) == "chestxray14"
    assert labels_in(str(tmp_path / "folders" / "a_sick"), classes) == ""


def write_cell_images(root: Path, count: int) -> Path:
    """The malaria cell_images/ layout: its classes are the model's, and its cells are grouped by smear."""
    for index in range(count):
        folder = root / ("Parasitized" if index % 2 == 0 else "Uninfected")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"C{index // 4}P{index // 4}thinF_IMG_2015_cell_{index}.png"
        Image.fromarray(cell_image(32, 1000 + index)).save(folder / name)
    return root


def test_labelled_input_is_back_tested_with_the_metrics_evaluate_logs(store, tmp_path):
    root = write_cell_images(tmp_path / "cell_images", 48)
    common = ["--model-uri", store["uri"], "--allow-different-data", "true"]
    assert train_cli(["evaluate", *common, "--dataset", "malaria", "--data-dir", str(root)]) == 0
    evaluation = last_batch_run(store, names.KIND_EVALUATION)
    # The labels are found in the input: no dataset is named.
    output = tmp_path / "scores.parquet"
    assert batch(*common, "--input", str(root), "--output", str(output), "--split", "test") == 0
    back_test = last_batch_run(store)
    expected = {key: value for key, value in evaluation.data.metrics.items() if key.startswith("test_")}
    found = {key: value for key, value in back_test.data.metrics.items() if key.startswith("test_")}
    assert {"test_auroc", "test_auroc_ci_low", "test_ece", "test_ece_uncalibrated", "test_examples"} <= set(expected)
    assert found == pytest.approx(expected, rel=1e-9)
    assert back_test.data.tags[names.BACKTEST_TAG] == "true"
    assert back_test.data.tags[names.DATASET_TAG] == "malaria"
    logged = {
        artifact.path
        for artifact in MlflowClient(store["tracking_uri"]).list_artifacts(back_test.info.run_id, "metrics")
    }
    assert names.classes_artifact("test") in logged
    assert len(read_output(tmp_path / "scores.parquet")) == 48


def test_a_prepared_folder_is_scored_on_the_images_it_stores(store, tmp_path, loaded_model):
    import tensorflow as tf

    from train.data.prepare import prepare
    from train.data.prepared import ID_FEATURE, IMAGE_FEATURE
    from train.settings import PrepareSettings

    cells = write_cell_images(tmp_path / "cell_images", 24)
    prepared = tmp_path / "prepared"
    settings = {"dataset": "malaria", "data_dir": str(cells), "output_dir": str(prepared), "image_size": "32"}
    prepare(PrepareSettings.from_dict({**settings, "shard_size": "8", "workers": "1"}))
    output = tmp_path / "scores.parquet"
    arguments = ["--model-uri", store["uri"], "--input", str(prepared), "--output", str(output), "--dataset", "none"]
    assert batch(*arguments) == 0
    rows = read_output(output).set_index(PATH_COLUMN)
    assert len(rows) == 24 and (rows[ERROR_COLUMN] == "").all()
    shard, _, record_id = rows.index[0].partition("#")
    assert (prepared / shard).is_file() and record_id
    # The row's probability is the served answer for the PNG the record stores.
    for serialized in tf.data.TFRecordDataset(str(prepared / shard)).take(1):
        example = tf.io.parse_single_example(
            serialized,
            {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string), ID_FEATURE: tf.io.FixedLenFeature([], tf.string)},
        )
    assert example[ID_FEATURE].numpy().decode() == record_id
    image = base64.b64encode(example[IMAGE_FEATURE].numpy()).decode("ascii")
    served = loaded_model.predict(pd.DataFrame({IMAGE_COLUMN: [image]}))
    assert rows[POSITIVE].iloc[0] == pytest.approx(served[POSITIVE].iloc[0], abs=1e-6)
    assert names.BACKTEST_TAG not in last_batch_run(store).data.tags


# The Spark engine.


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole test session. Without Java the test skips on a developer machine
    and fails in CI (CI set), so CI can never skip the Spark engine silently."""
    import shutil

    if shutil.which("java") is None:
        message = "Spark needs Java 17 (apt-get install openjdk-17-jre-headless)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Spark tests: {message}")
        pytest.skip(message)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("medimg tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.mark.slow
def test_spark_engine_gives_the_local_engine_rows_to_1e_5(spark, store, tmp_path):
    root = write_archive(tmp_path / "archive", 20)
    common = ["--model-uri", store["uri"], "--input", str(root)]
    assert batch(*common, "--output", str(tmp_path / "local.parquet")) == 0
    local_run_id = last_batch_run(store).info.run_id
    output = tmp_path / "spark.parquet"
    assert batch(*common, "--output", str(output), "--engine", "spark", "--spark-master", "local[2]") == 0
    local = read_output(tmp_path / "local.parquet").set_index(PATH_COLUMN).sort_index()
    distributed = read_output(output).set_index(PATH_COLUMN).sort_index()
    assert list(distributed.columns) == COLUMNS[1:] and distributed.index.tolist() == local.index.tolist()
    assert len(distributed) == 20 + 7
    np.testing.assert_allclose(distributed[POSITIVE].to_numpy(), local[POSITIVE].to_numpy(), atol=1e-5)
    for column in (SHA256_COLUMN, ERROR_COLUMN, PREDICTED_COLUMN, MODEL_ID_COLUMN):
        assert distributed[column].fillna("").tolist() == local[column].fillna("").tolist()
    assert distributed[FRAME_COLUMN].fillna(-1).tolist() == local[FRAME_COLUMN].fillna(-1).tolist()
    run = last_batch_run(store)
    assert run.data.tags[names.BATCH_ENGINE_TAG] == "spark"
    assert run.data.metrics[names.IMAGES_SCORED_METRIC] == 23 and run.data.metrics[names.IMAGES_FAILED_METRIC] == 4
    # Score drift from the rows Spark wrote equals the local engine's on the same answers.
    local_run = run_of(store, local_run_id)
    psi = names.monitoring_metric(f"score_psi.{POSITIVE}")
    assert run.data.metrics[psi] == pytest.approx(local_run.data.metrics[psi], abs=1e-4)
    assert run.data.metrics[names.monitoring_metric("window_answers")] == 23
    # Resumed on Spark: every file is in the output already, so nothing is read or written.
    before = {path: path.stat().st_mtime_ns for path in part_files(output)}
    assert batch(*common, "--output", str(output), "--engine", "spark", "--spark-master", "local[2]") == 0
    assert last_batch_run(store).data.metrics[names.IMAGES_RESUMED_METRIC] == 27
    assert {path: path.stat().st_mtime_ns for path in part_files(output)} == before
