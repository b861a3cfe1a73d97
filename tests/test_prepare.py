"""`python -m train prepare`: TFRecord round trip, manifest, idempotence, resume, TFDS malaria; data in tmp_path only."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_chestxray14 import CLASS_NAMES, IMAGE_SIZE, write_nih_folder

from train.data import load_dataset, validate_dataset_args
from train.data.prepare import IMAGES_PER_WORKER, PreparedSource, ShardPlan, prepare, process_count
from train.data.prepared import MANIFEST_NAME, STATE_NAME, count_records, read_manifest, split_records
from train.settings import ConfigError, PrepareSettings

SHARD_SIZE = 16


@pytest.fixture(scope="module")
def nih_raw(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("nih")
    return root, write_nih_folder(root)


def nih_config(root: Path, output: Path, **overrides) -> PrepareSettings:
    settings = {
        "dataset": "chestxray14",
        "data_dir": str(root),
        "output_dir": str(output),
        "image_size": str(IMAGE_SIZE),
        "shard_size": str(SHARD_SIZE),
        "workers": "1",
        "validation_fraction": "0.3",
        "seed": "0",
    }
    settings.update({key: str(value) for key, value in overrides.items()})
    return PrepareSettings.from_dict(settings)


def shard_mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.glob("*.tfrecord"))}


def rounded_image_hashes(dataset) -> list[str]:
    """Sorted hashes of the images of an (image, label) dataset, rounded to whole gray levels."""
    return sorted(hashlib.sha1(np.round(image).astype(np.uint8).tobytes()).hexdigest() for image, _ in dataset)


@pytest.fixture(scope="module")
def prepared_nih(nih_raw, tmp_path_factory) -> Path:
    root, _ = nih_raw
    output = tmp_path_factory.mktemp("prepared") / "nih-32"
    prepare(nih_config(root, output))
    return output


def test_round_trip_gives_the_directly_decoded_tensors(nih_raw, prepared_nih):
    import tensorflow as tf

    from serve.preprocess import decode_and_resize

    root, expected = nih_raw
    manifest = read_manifest(prepared_nih)
    paths = {path.name: path for path in root.glob("images_*/images/*.png")}
    seen = {}
    for split in ("train", "val", "test"):
        for example_id, image, label in split_records(prepared_nih, manifest, split, IMAGE_SIZE, include_ids=True):
            name = example_id.numpy().decode()
            direct = decode_and_resize(tf.io.read_file(str(paths[name])), IMAGE_SIZE).numpy()
            # A record holds the direct tensor rounded to whole gray levels (uint8 PNG, lossless).
            assert image.shape == direct.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
            np.testing.assert_allclose(image.numpy(), np.round(direct), atol=1e-4)
            assert np.abs(image.numpy() - direct).max() <= 0.5 + 1e-4
            np.testing.assert_array_equal(label.numpy(), expected[name]["labels"])
            seen[name] = split
    assert len(seen) == 60 and {name for name, split in seen.items() if split == "test"} == {
        name for name, row in expected.items() if row["split"] == "test" and name in paths
    }

    # Training from the prepared folder sees the same splits as training from the raw folder.
    direct = load_dataset("chestxray14", data_dir=str(root), image_size=IMAGE_SIZE, seed=0, validation_fraction=0.3)
    from_records = load_dataset(
        "chestxray14", data_dir=str(prepared_nih), image_size=IMAGE_SIZE, seed=0, validation_fraction=0.3
    )
    assert from_records.source == str(prepared_nih) and from_records.task == "multilabel"
    assert from_records.skipped_images == 1
    for split in ("train", "val", "test"):
        assert from_records.splits[split].count == direct.splits[split].count
        assert from_records.splits[split].positives.tolist() == direct.splits[split].positives.tolist()
        assert rounded_image_hashes(from_records.splits[split].dataset.as_numpy_iterator()) == rounded_image_hashes(
            direct.splits[split].dataset.as_numpy_iterator()
        )


def test_manifest_records_counts_prevalence_and_settings(prepared_nih):
    manifest = json.loads((prepared_nih / MANIFEST_NAME).read_text())
    assert (manifest["dataset"], manifest["task"], manifest["num_outputs"]) == ("chestxray14", "multilabel", 14)
    assert manifest["class_names"] == list(CLASS_NAMES)
    assert manifest["image_size"] == IMAGE_SIZE and manifest["image_encoding"] == "png-uint8"
    assert manifest["counts"]["test"] == 10 and manifest["total"] == 60
    assert manifest["skipped"]["count"] == 1 and "00000003_002.png" in manifest["skipped"]["examples"][0]
    assert manifest["settings"]["validation_fraction"] == 0.3 and manifest["settings"]["view"] == "all"
    assert len(manifest["source_digest"]) == 64
    for split, content in manifest["splits"].items():
        assert sum(shard["count"] for shard in content["shards"]) == content["count"] == manifest["counts"][split]
        for shard in content["shards"]:
            assert count_records(prepared_nih / shard["file"]) == shard["count"] <= SHARD_SIZE
        prevalence = [content["prevalence"][name] for name in CLASS_NAMES]
        np.testing.assert_allclose(prevalence, np.array(content["positives"]) / content["count"], atol=1e-6)
    assert not (prepared_nih / STATE_NAME).exists()


def test_prepare_twice_does_the_work_once(nih_raw, tmp_path):
    root, _ = nih_raw
    output = tmp_path / "twice"
    # Two worker processes: the pool path.
    first = prepare(nih_config(root, output, workers=2))
    assert len(first.written_shards) == 5 and first.reused_shards == [] and first.processes == 2
    mtimes = shard_mtimes(output)
    manifest = (output / MANIFEST_NAME).read_text()
    second = prepare(nih_config(root, output, workers=2))
    assert second.written_shards == [] and sorted(second.reused_shards) == sorted(mtimes)
    assert shard_mtimes(output) == mtimes
    assert (output / MANIFEST_NAME).read_text() == manifest


def test_workers_0_starts_a_worker_per_images_per_worker_images_up_to_the_cores_and_shards():
    """A worker process costs a TensorFlow import: with workers 0 a small folder is written in this process."""
    cores = PrepareSettings.from_dict({"dataset": "synthetic", "output_dir": "unused", "workers": "0"}).worker_count

    def count(workers: int, images: int, shards: int, loaded=None) -> int:
        config = PrepareSettings.from_dict({"dataset": "synthetic", "output_dir": "unused", "workers": str(workers)})
        plans = [ShardPlan("train", f"train-{index}", 0, images // shards) for index in range(shards)]
        source = PreparedSource("binary", ["a", "b"], "folder", "digest", plans, loaded=loaded)
        return process_count(config, source, plans)

    assert count(0, IMAGES_PER_WORKER - 4, 4) == 1
    assert count(0, 2 * IMAGES_PER_WORKER, 4) == min(2, cores)
    assert count(0, 100 * IMAGES_PER_WORKER, 100) == cores
    assert count(0, 100 * IMAGES_PER_WORKER, 1) == 1
    # An explicit number is taken as given, up to one process per shard.
    assert (count(3, 12, 4), count(3, 12, 2)) == (3, 2)
    # A dataset loaded in memory (synthetic, TFDS) is written by this process.
    assert count(4, 100 * IMAGES_PER_WORKER, 100, loaded=object()) == 1


def test_a_removed_shard_is_the_only_one_rewritten(nih_raw, tmp_path):
    root, _ = nih_raw
    output = tmp_path / "resume"
    prepare(nih_config(root, output))
    mtimes = shard_mtimes(output)
    counts = read_manifest(output)["counts"]
    removed = "train-00001-of-00003.tfrecord"
    (output / removed).unlink()
    again = prepare(nih_config(root, output))
    assert again.written_shards == [removed]
    after = shard_mtimes(output)
    assert {name: mtime for name, mtime in after.items() if name != removed} == {
        name: mtime for name, mtime in mtimes.items() if name != removed
    }
    assert count_records(output / removed) == SHARD_SIZE
    assert read_manifest(output)["counts"] == counts


def test_an_interrupted_prepare_resumes_with_the_missing_shards(nih_raw, tmp_path, monkeypatch):
    import train.data.prepare as prepare_module

    root, _ = nih_raw
    output = tmp_path / "interrupted"
    real_writer = prepare_module.write_file_shard
    calls = []

    def interrupt_third_shard(task):
        calls.append(task["file"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_writer(task)

    monkeypatch.setattr(prepare_module, "write_file_shard", interrupt_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare(nih_config(root, output))
    monkeypatch.setattr(prepare_module, "write_file_shard", real_writer)
    assert (output / STATE_NAME).is_file() and not (output / MANIFEST_NAME).exists()
    with pytest.raises(ValueError, match="unfinished preparation"):
        validate_dataset_args("chestxray14", str(output))

    finished = set(shard_mtimes(output))
    resumed = prepare(nih_config(root, output))
    assert set(resumed.reused_shards) == finished == set(calls[:2])
    assert len(resumed.written_shards) == 5 - 2
    assert (output / MANIFEST_NAME).is_file() and not (output / STATE_NAME).exists()


def test_prepared_folder_checks_name_view_size_and_caps(prepared_nih, nih_raw, tmp_path):
    root, _ = nih_raw
    with pytest.raises(ValueError, match="holds prepared 'chestxray14' records, not 'malaria'"):
        validate_dataset_args("malaria", str(prepared_nih))
    with pytest.raises(ValueError, match="prepared with view=all, but view=PA"):
        load_dataset("chestxray14", data_dir=str(prepared_nih), image_size=IMAGE_SIZE, view="PA")
    with pytest.raises(ValueError, match="already holds a different preparation"):
        prepare(nih_config(root, prepared_nih, image_size=48))

    small = load_dataset(
        "chestxray14", data_dir=str(prepared_nih), image_size=IMAGE_SIZE, max_examples=20, validation_fraction=0.3
    )
    assert {name: split.count for name, split in small.splits.items()} == {"train": 12, "val": 5, "test": 3}
    for split in small.splits.values():
        images, labels = zip(*split.dataset.as_numpy_iterator(), strict=True)
        assert len(images) == split.count and images[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert np.sum(labels, axis=0).astype(int).tolist() == split.positives.tolist()


def test_prepare_downloads_and_prepares_tfds_malaria(tmp_path):
    import tensorflow_datasets as tfds

    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    output = tmp_path / "malaria-32"
    config = PrepareSettings.from_dict(
        {"dataset": "malaria", "data_dir": str(tfds_dir), "output_dir": str(output), "image_size": "32"}
    )
    with tfds.testing.mock_data(num_examples=40, data_dir=str(tfds_dir)):
        result = prepare(config)
        direct = load_dataset("malaria", data_dir=str(tfds_dir), image_size=32, validation_fraction=0.1)
        direct_hashes = {
            split: rounded_image_hashes(direct.splits[split].dataset.as_numpy_iterator()) for split in direct.splits
        }
    manifest = result.manifest
    assert (manifest["task"], manifest["class_names"], manifest["num_outputs"]) == (
        "binary",
        ["uninfected", "parasitized"],
        1,
    )
    assert manifest["total"] == 40 and manifest["counts"] == {"train": 30, "val": 4, "test": 6}
    assert list(manifest["splits"]["train"]["prevalence"]) == ["parasitized"]
    loaded = load_dataset("malaria", data_dir=str(output), image_size=32, validation_fraction=0.1)
    for split, hashes in direct_hashes.items():
        assert loaded.splits[split].positives.tolist() == direct.splits[split].positives.tolist()
        assert rounded_image_hashes(loaded.splits[split].dataset.as_numpy_iterator()) == hashes


def test_prepare_command_line(repo_root, tmp_path):
    output = tmp_path / "synthetic"
    missing = subprocess.run(
        [sys.executable, "-m", "train", "prepare", "--dataset", "chestxray14", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "error: output_dir is required: the folder that receives the TFRecord shards and manifest.json"
    ]
    with pytest.raises(ConfigError, match="valid views: all, PA, AP"):
        PrepareSettings.from_dict({"output_dir": str(output), "data_dir": str(tmp_path), "view": "LL"})
    arguments = ["--dataset", "synthetic", "--output-dir", str(output), "--image-size", "32.0", "--shard-size", "200"]
    result = subprocess.run(
        [sys.executable, "-m", "train", "prepare", *arguments],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(output)
    assert manifest["dataset"] == "synthetic" and manifest["total"] == 600
    assert [shard["file"] for shard in manifest["splits"]["train"]["shards"]] == [
        "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord",
    ]


def test_a_prepared_folder_keeps_patients_and_subgroups_of_its_test_split(nih_raw, prepared_nih):
    """Patient-level intervals and subgroup tables need each test record's patient and metadata, in read order."""
    root, expected = nih_raw
    manifest = read_manifest(prepared_nih)
    assert manifest["examples"]["columns"] == ["group", "view", "sex", "age"]
    # Patients are integer codes in the manifest, never the CSV's patient ids.
    assert all(isinstance(row[0], int) for row in manifest["examples"]["rows"].values())
    loaded = load_dataset("chestxray14", data_dir=str(prepared_nih), image_size=IMAGE_SIZE, validation_fraction=0.3)
    test = loaded.splits["test"]
    ids = [
        example_id.numpy().decode()
        for example_id, _, _ in split_records(prepared_nih, manifest, "test", IMAGE_SIZE, include_ids=True)
    ]
    assert len(test.groups) == len(ids) == test.count
    assert test.metadata["view"].tolist() == [expected[name]["view"] for name in ids]
    patients = [expected[name]["patient"] for name in ids]
    # Same patient, same group code; five test patients, five codes.
    assert len(set(test.groups.tolist())) == len(set(patients)) == 5
    for first in range(len(ids)):
        for second in range(len(ids)):
            assert (test.groups[first] == test.groups[second]) == (patients[first] == patients[second])


def test_a_prepare_run_carries_the_preparation_kind_tag(tracking_uri, tmp_path, monkeypatch):
    """Under `mlflow run -e prepare` the run MLflow started is tagged as a preparation, like every other kind."""
    from mlflow.tracking import MlflowClient

    from train.data.prepare import PrepareResult
    from train.prepare import log_to_active_run
    from train.tracking import names

    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("prepare-kind")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    manifest = {"dataset": "synthetic", "counts": {"train": 2}, "skipped": {"count": 0}, "splits": {}}
    log_to_active_run(PrepareResult(tmp_path, manifest, [], [], 1.0))
    tags = client.get_run(run_id).data.tags
    assert tags[names.KIND_TAG] == names.KIND_PREPARATION
    assert tags[names.DATASET_TAG] == "synthetic"
