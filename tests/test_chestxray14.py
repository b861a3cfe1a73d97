"""chestxray14 dataset: a miniature NIH folder written into tmp_path (CSV, split lists, PNGs), loaded and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.data.chestxray14 import CLASS_NAMES, build_index, parse_findings

# The header of Data_Entry_2017_v2020.csv; the 2017 file has the same columns plus a trailing comma.
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
TRAIN_VAL_PATIENTS = range(1, 26)
TEST_PATIENTS = range(26, 31)
MISSING_IMAGE = "00000003_002.png"
UNLISTED_IMAGE = "00000031_000.png"
RGBA_IMAGE = "00000001_000.png"
SIXTEEN_BIT_IMAGE = "00000028_000.png"
# Flat gray levels of the RGBA and 16-bit images, so a test can recognise them after decoding.
RGBA_LEVEL = 77
SIXTEEN_BIT_LEVEL = 201
IMAGE_SIZE = 32


def findings_of(patient: int) -> list[str]:
    """Three findings per patient; the five test patients together have all fourteen."""
    if patient in TEST_PATIENTS:
        first = 3 * (patient - TEST_PATIENTS[0])
        indices = [first, first + 1, first + 2]
    else:
        indices = [patient % 14, (patient + 5) % 14, (patient + 9) % 14]
    return sorted({CLASS_NAMES[index % 14] for index in indices})


def image_name(patient: int, follow_up: int) -> str:
    return f"{patient:08d}_{follow_up:03d}.png"


def write_nih_folder(
    root: Path, *, metadata_name: str = "Data_Entry_2017_v2020.csv", trailing_comma: bool = False
) -> dict[str, dict]:
    """Write a miniature NIH ChestX-ray14 folder; return {image name: {labels, patient, view, split}} of listed rows.

    30 patients with two images each (one with three findings, one 'No Finding'), in
    images_001/images and images_002/images; patients 26-30 are the official test list. Patient 3
    has a listed third image that is missing on disk; patient 31 has an image in no split list.
    """
    rng = np.random.default_rng(0)
    rows, train_val, test, expected = [], [], [], {}
    for patient in [*TRAIN_VAL_PATIENTS, *TEST_PATIENTS, 31]:
        view = "PA" if patient % 2 else "AP"
        follow_ups = [(0, findings_of(patient)), (1, [])]
        if patient == 3:
            follow_ups.append((2, ["Hernia"]))
        if patient == 31:
            follow_ups = [(0, ["Mass"])]
        for follow_up, findings in follow_ups:
            name = image_name(patient, follow_up)
            text = "|".join(findings) if findings else "No Finding"
            width, height = 36 + patient % 5 * 3, 40 + follow_up * 4
            row = f"{name},{text},{follow_up},{patient},{40 + patient},{'MF'[patient % 2]},{view},{width},{height},0.143,0.143"
            rows.append(row + ("," if trailing_comma else ""))
            folder = root / ("images_001" if patient <= 15 else "images_002") / "images"
            folder.mkdir(parents=True, exist_ok=True)
            if name == RGBA_IMAGE:
                pixels = np.full((height, width, 4), [RGBA_LEVEL, RGBA_LEVEL, RGBA_LEVEL, 128], dtype=np.uint8)
                Image.fromarray(pixels, mode="RGBA").save(folder / name)
            elif name == SIXTEEN_BIT_IMAGE:
                Image.fromarray(np.full((height, width), SIXTEEN_BIT_LEVEL * 257, dtype=np.uint16)).save(folder / name)
            elif name != MISSING_IMAGE:
                base = rng.integers(30, 220)
                pixels = np.clip(base + rng.normal(0, 25, size=(height, width)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / name)
            if patient == 31:
                continue
            split = "test" if patient in TEST_PATIENTS else "train_val"
            (test if split == "test" else train_val).append(name)
            labels = np.zeros(14, dtype=np.float32)
            labels[[CLASS_NAMES.index(finding) for finding in findings]] = 1.0
            expected[name] = {"labels": labels, "patient": str(patient), "view": view, "split": split}
    header = NIH_HEADER + ("," if trailing_comma else "")
    (root / metadata_name).write_text("\n".join([header, *rows]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return expected


@pytest.fixture
def nih_folder(tmp_path) -> tuple[Path, dict[str, dict]]:
    root = tmp_path / "nih"
    root.mkdir()
    return root, write_nih_folder(root)


def test_class_names_are_the_fourteen_nih_findings_in_order():
    assert CLASS_NAMES == (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
        "Emphysema",
        "Fibrosis",
        "Hernia",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pleural_Thickening",
        "Pneumonia",
        "Pneumothorax",
    )
    assert parse_findings("No Finding").sum() == 0
    assert parse_findings("Effusion|Pleural_Thickening|Hernia").nonzero()[0].tolist() == [4, 7, 11]
    with pytest.raises(ValueError, match="unknown finding 'Pleural Thickening'.*Pleural_Thickening"):
        parse_findings("Pleural Thickening")


def test_index_counts_labels_and_patient_disjoint_splits(nih_folder):
    root, expected = nih_folder
    index = build_index(root, seed=0, validation_fraction=0.3)
    # 61 listed images, one of them missing: 50 train_val + 10 test remain.
    assert len(index.names) == 60
    assert index.split_counts()["test"] == 10
    assert index.split_counts()["train"] + index.split_counts()["val"] == 50
    assert 14 <= index.split_counts()["val"] <= 18
    assert [line.split(": ")[0].endswith(MISSING_IMAGE) for line in index.missing] == [True]
    assert index.left_out["not_in_split_lists"] == 1
    assert UNLISTED_IMAGE not in index.names
    for name, path, labels, patient, split_id in zip(
        index.names, index.paths, index.labels, index.patient_ids, index.split_ids, strict=True
    ):
        assert path.name == name and path.is_file()
        np.testing.assert_array_equal(labels, expected[name]["labels"])
        assert patient == expected[name]["patient"]
        assert (split_id == 2) == (expected[name]["split"] == "test")
    patients = [set(index.patient_ids[index.split_ids == split_id]) for split_id in range(3)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    # Every finding has positives and negatives in validation and test, so all 14 AUROCs are defined.
    for split_id in (1, 2):
        labels = index.labels[index.split_ids == split_id]
        assert labels.max(axis=0).tolist() == [1.0] * 14
        assert labels.min(axis=0).tolist() == [0.0] * 14
    again = build_index(root, seed=0, validation_fraction=0.3)
    other = build_index(root, seed=1, validation_fraction=0.3)
    np.testing.assert_array_equal(index.split_ids, again.split_ids)
    assert not np.array_equal(index.split_ids, other.split_ids)


def test_official_lists_that_share_a_patient_are_rejected(nih_folder):
    root, _ = nih_folder
    test_list = (root / "test_list.txt").read_text()
    (root / "test_list.txt").write_text(test_list + image_name(5, 1) + "\n")
    train_val = (root / "train_val_list.txt").read_text().replace(image_name(5, 1) + "\n", "")
    (root / "train_val_list.txt").write_text(train_val)
    with pytest.raises(ValueError, match="patient 5 is in both train_val_list.txt .* and test_list.txt"):
        build_index(root)


def test_view_filter_keeps_one_view(nih_folder):
    root, expected = nih_folder
    index = build_index(root, view="pa", validation_fraction=0.3)
    assert index.settings["view"] == "PA"
    assert {expected[name]["view"] for name in index.names} == {"PA"}
    listed_pa = [name for name, row in expected.items() if row["view"] == "PA" and name != MISSING_IMAGE]
    assert sorted(index.names) == sorted(listed_pa)
    with pytest.raises(ValueError, match="valid views: all, PA, AP"):
        build_index(root, view="lateral")


def test_missing_images_above_the_threshold_stop_the_load_naming_a_path(nih_folder):
    root, _ = nih_folder
    with pytest.raises(ValueError, match=f"1 of 61 listed images .* missing .*{MISSING_IMAGE}.*max_missing_fraction"):
        build_index(root, max_missing_files=0)
    for name in ("00000004_000.png", "00000005_000.png", "00000006_000.png", "00000007_000.png", "00000008_000.png"):
        (root / "images_001" / "images" / name).unlink()
    with pytest.raises(ValueError, match="6 of 61 listed images"):
        build_index(root)
    assert len(build_index(root, max_missing_fraction=0.2, validation_fraction=0.3).missing) == 6


def test_2017_metadata_file_with_trailing_commas_and_flat_images(tmp_path):
    root = tmp_path / "nih2017"
    root.mkdir()
    expected = write_nih_folder(root, metadata_name="Data_Entry_2017.csv", trailing_comma=True)
    # The flat layout: every image directly in data_dir.
    for path in list(root.glob("images_*/images/*.png")):
        path.rename(root / path.name)
    index = build_index(root, validation_fraction=0.3)
    assert index.metadata_file.name == "Data_Entry_2017.csv"
    assert len(index.names) == 60
    assert all(path.parent == root for path in index.paths)
    for name, labels in zip(index.names, index.labels, strict=True):
        np.testing.assert_array_equal(labels, expected[name]["labels"])


def test_max_examples_caps_by_patient_and_keeps_both_official_splits(nih_folder):
    root, _ = nih_folder
    index = build_index(root, max_examples=24, seed=3, validation_fraction=0.25)
    counts = index.split_counts()
    assert sum(counts.values()) == 24
    assert counts["test"] == 4 and counts["val"] >= 1 and counts["train"] >= 1
    patients = [set(index.patient_ids[index.split_ids == split_id]) for split_id in range(3)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    again = build_index(root, max_examples=24, seed=3, validation_fraction=0.25)
    assert again.names == index.names


def test_load_dataset_decodes_rgba_and_16_bit_and_counts_skips(nih_folder):
    from train.data import load_dataset

    root, expected = nih_folder
    loaded = load_dataset("chestxray14", data_dir=str(root), image_size=IMAGE_SIZE, validation_fraction=0.3, seed=0)
    assert (loaded.task, loaded.num_outputs, loaded.class_names) == ("multilabel", 14, list(CLASS_NAMES))
    assert {name: split.count for name, split in loaded.splits.items()}["test"] == 10
    assert sum(split.count for split in loaded.splits.values()) == 60
    assert loaded.skipped_images == 1 and MISSING_IMAGE in loaded.skipped_examples[0]
    means = []
    for split in loaded.splits.values():
        for image, label in split.dataset.as_numpy_iterator():
            assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and label.shape == (14,)
            means.append(float(image.mean()))
    # The RGBA image keeps its gray level (alpha dropped); the 16-bit one is scaled to 0-255.
    assert min(abs(mean - RGBA_LEVEL) for mean in means) < 0.5
    assert min(abs(mean - SIXTEEN_BIT_LEVEL) for mean in means) < 0.5
    test_labels = [row["labels"] for row in expected.values() if row["split"] == "test"]
    assert loaded.splits["test"].positives.tolist() == np.sum(test_labels, axis=0).astype(int).tolist()


def test_config_checks_view_and_validation_fraction():
    from train.settings import ConfigError, MainSettings

    assert MainSettings.from_dict({"dataset": "synthetic", "validation_fraction": "0.2"}).validation_fraction == 0.2
    with pytest.raises(ConfigError, match=r"view=PA does not apply to dataset synthetic \(only to chestxray14\)"):
        MainSettings.from_dict({"view": "PA"})
    with pytest.raises(ConfigError, match="valid views: all, PA, AP"):
        MainSettings.from_dict({"view": "LL"})
    with pytest.raises(ConfigError, match="validation_fraction"):
        MainSettings.from_dict({"validation_fraction": "0.9"})


@pytest.mark.slow
def test_training_chestxray14_logs_per_class_auroc(nih_folder, tracking_uri):
    from mlflow.tracking import MlflowClient

    root, _ = nih_folder
    import mlflow

    from train.__main__ import main as train_cli

    parameters = {
        "dataset": "chestxray14",
        "data_dir": str(root),
        "image_size": "32",
        "epochs": "2",
        "batch_size": "16",
        "validation_fraction": "0.3",
        "seed": "0",
        "augment": "false",
    }
    # `python -m train main` in-process, as `mlflow run` starts it (test_training runs the entry point itself).
    mlflow.set_experiment("nih")
    assert train_cli(["main", *(f"--{key.replace('_', '-')}={value}" for key, value in parameters.items())]) == 0

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nih").experiment_id])
    metrics = run.data.metrics
    assert run.data.params["task"] == "multilabel" and run.data.params["num_outputs"] == "14"
    assert run.data.params["view"] == "all" and run.data.params["validation_fraction"] == "0.3"
    assert metrics["data.skipped_images"] == 1
    for name in CLASS_NAMES:
        assert [point.step for point in client.get_metric_history(run.info.run_id, f"val_auroc_{name}")] == [0, 1]
        assert 0.0 <= metrics[f"test_auroc_{name}"] <= 1.0
    assert metrics["val_mean_auroc"] == pytest.approx(np.mean([metrics[f"val_auroc_{name}"] for name in CLASS_NAMES]))
    assert 0.0 <= metrics["test_mean_auroc"] <= 1.0
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/metrics/test_classes.json"))
    assert [row[0] for row in table["data"]] == list(CLASS_NAMES)
    # Calibration, operating points, patient-level intervals and subgroups from the CSV's metadata.
    params = run.data.params
    assert int(params["test_groups"]) == 5 and int(params["train_groups"]) + int(params["val_groups"]) == 25
    assert metrics["test_mean_auroc_ci_low"] <= metrics["test_mean_auroc"] <= metrics["test_mean_auroc_ci_high"]
    assert "test_ece" in metrics and "test_ece_uncalibrated" in metrics and "val_brier" in metrics
    points = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/metrics/operating_points.json"))
    assert [row[0] for row in points["data"]] == list(CLASS_NAMES)
    subgroups = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/metrics/test_subgroups.json"))
    columns = subgroups["columns"]
    rows = [dict(zip(columns, row, strict=True)) for row in subgroups["data"]]
    assert {(row["attribute"], row["subgroup"]) for row in rows} >= {
        ("view", "PA"),
        ("view", "AP"),
        ("sex", "M"),
        ("sex", "F"),
    }
    assert {row["subgroup"] for row in rows if row["attribute"] == "age"} <= {"40-59", "60-79"}
    assert sum(row["examples"] for row in rows if row["attribute"] == "view") == metrics["test_examples"]
    assert {key for key in metrics if key.startswith("test_subgroup_auroc_gap_")} <= {
        "test_subgroup_auroc_gap_view",
        "test_subgroup_auroc_gap_sex",
        "test_subgroup_auroc_gap_age",
    }
    # The served model keeps the modalities of its dataset: the PACS worker scores CR and DX images by default.
    from train.tracking.names import MODEL_URI_TAG

    logged = client.get_logged_model(run.data.tags[MODEL_URI_TAG].removeprefix("models:/"))
    served = json.loads(mlflow.artifacts.load_text(f"{logged.artifact_location}/artifacts/classifier.json"))
    assert served["modalities"] == ["CR", "DX"]
