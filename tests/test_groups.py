"""Patient- and slide-grouped splits (train.data.groups, splits.group_assignment): no patient in two splits; writes tmp images."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.data import load_dataset
from train.data.groups import MALARIA_GROUP_PATTERN, PNEUMONIA_GROUP_PATTERN, group_ids, resolve_group_pattern
from train.data.splits import group_assignment

IMAGE_SIZE = 32
# Each patient's images share one gray level, so a split's images tell which patients it holds.
NORMAL_PATIENTS = [f"IM-{number:04d}" for number in (115, 117, 119, 121)] + ["NORMAL2-IM-0012", "NORMAL2-IM-0027"]
PNEUMONIA_PATIENTS = [f"person{number}" for number in (1, 3, 7, 12, 19, 22, 31, 40, 41, 58)]


def patient_files(patient: str, count: int) -> list[str]:
    if patient.startswith("person"):
        kinds = ["bacteria", "virus"]
        return [f"{patient}_{kinds[index % 2]}_{7 * index + 1}.jpeg" for index in range(count)]
    return [f"{patient}-{index + 1:04d}.jpeg" for index in range(count)]


def write_pneumonia_folder(root: Path, layout: dict[str, str] | None = None) -> dict[str, int]:
    """The pediatric pneumonia naming: NORMAL/ and PNEUMONIA/ (under a split folder from `layout`); patient -> level."""
    levels = {}
    for index, patient in enumerate(NORMAL_PATIENTS + PNEUMONIA_PATIENTS):
        level = 12 + 15 * index
        levels[patient] = level
        class_name = "NORMAL" if patient in NORMAL_PATIENTS else "PNEUMONIA"
        for file_name in patient_files(patient, 2 + index % 3):
            folder = root / (layout or {}).get(patient, "") / class_name
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("L", (10, 10), level).save(folder / file_name, format="JPEG", quality=95)
    return levels


def patients_per_split(loaded, levels: dict[str, int]) -> dict[str, set[str]]:
    by_level = {level: patient for patient, level in levels.items()}
    found = defaultdict(set)
    for name, split in loaded.splits.items():
        for image, _ in split.dataset.as_numpy_iterator():
            mean = float(image.mean())
            level = min(by_level, key=lambda candidate, mean=mean: abs(candidate - mean))
            found[name].add(by_level[level])
    return found


def test_file_name_conventions_give_one_key_per_patient_or_smear():
    pneumonia = ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg", "IM-0115-0001.jpeg", "IM-0115-0002.jpeg"]
    pneumonia += ["NORMAL2-IM-0115-0001.jpeg", "person11_bacteria_45.jpeg"]
    assert group_ids(pneumonia, PNEUMONIA_GROUP_PATTERN).tolist() == [2, 2, 0, 0, 1, 3]
    malaria = ["C100P61ThinF_IMG_20150918_144104_cell_162.png", "C100P61ThinF_IMG_20150918_144348_cell_5.png"]
    malaria += ["C1_thinF_IMG_20150604_104722_cell_9.png", "C2NThinF_IMG_20150604_114751_cell_1.png"]
    malaria += ["C33P1thinF_IMG_20150619_114756a_cell_179.png"]
    assert group_ids(malaria, MALARIA_GROUP_PATTERN).tolist() == [1, 1, 0, 2, 3]
    assert resolve_group_pattern("pneumonia") == PNEUMONIA_GROUP_PATTERN
    assert resolve_group_pattern("", default="malaria") == MALARIA_GROUP_PATTERN
    assert resolve_group_pattern("none", default="malaria") == ""


def test_group_assignment_keeps_groups_whole_near_the_fractions_and_seeded():
    generator = np.random.default_rng(0)
    sizes = generator.integers(1, 6, size=120)
    groups = np.repeat(np.arange(120), sizes)
    strata = np.repeat(generator.random(120) < 0.3, sizes).astype(np.int64)
    parts = group_assignment(groups, strata, [0.7, 0.15, 0.15], seed=4)
    for group in range(120):
        assert len(np.unique(parts[groups == group])) == 1
    shares = np.bincount(parts, minlength=3) / len(parts)
    np.testing.assert_allclose(shares, [0.7, 0.15, 0.15], atol=0.03)
    for stratum in (0, 1):
        stratum_shares = np.bincount(parts[strata == stratum], minlength=3) / np.sum(strata == stratum)
        np.testing.assert_allclose(stratum_shares, [0.7, 0.15, 0.15], atol=0.05)
    np.testing.assert_array_equal(parts, group_assignment(groups, strata, [0.7, 0.15, 0.15], seed=4))
    assert not np.array_equal(parts, group_assignment(groups, strata, [0.7, 0.15, 0.15], seed=5))
    # Three groups still fill three parts.
    assert sorted(
        group_assignment(np.array([0, 0, 0, 0, 1, 2]), np.zeros(6, np.int64), [0.7, 0.15, 0.15], 0)[[0, 4, 5]]
    ) == [0, 1, 2]


def test_pneumonia_set_split_by_patient_has_no_patient_in_two_splits(tmp_path):
    levels = write_pneumonia_folder(tmp_path / "chest_xray")
    loaded = load_dataset(
        "imagefolder", data_dir=str(tmp_path / "chest_xray"), image_size=IMAGE_SIZE, seed=1, group_pattern="pneumonia"
    )
    found = patients_per_split(loaded, levels)
    assert sum(len(patients) for patients in found.values()) == len(levels)
    assert set().union(*found.values()) == set(levels)
    assert loaded.group_counts == {name: len(found[name]) for name in ("train", "val", "test")}
    assert min(loaded.group_counts.values()) >= 1
    # Per image, the same folder puts patients in two splits: the leak the pattern closes.
    per_image = load_dataset("imagefolder", data_dir=str(tmp_path / "chest_xray"), image_size=IMAGE_SIZE, seed=1)
    leaked = patients_per_split(per_image, levels)
    assert sum(len(patients) for patients in leaked.values()) > len(levels)
    assert per_image.group_counts == {}
    assert per_image.digest != loaded.digest


def test_split_folders_that_share_a_patient_fail_with_a_count_and_no_patient_id(tmp_path):
    layout = {patient: "train" for patient in NORMAL_PATIENTS + PNEUMONIA_PATIENTS}
    layout.update({"IM-0121": "test", "person40": "test", "person41": "test", "NORMAL2-IM-0027": "test"})
    write_pneumonia_folder(tmp_path / "chest_xray", layout)
    # person3's second image lands in test/ although the first stays in train/.
    moved = tmp_path / "chest_xray" / "train" / "PNEUMONIA" / "person3_virus_8.jpeg"
    crossing = moved.rename(tmp_path / "chest_xray" / "test" / "PNEUMONIA" / moved.name)
    with pytest.raises(ValueError, match=r"^1 patient/slide group\(s\) have images in more than one") as raised:
        load_dataset(
            "imagefolder", data_dir=str(tmp_path / "chest_xray"), image_size=IMAGE_SIZE, group_pattern="pneumonia"
        )
    assert "person3" not in str(raised.value) and "\n" not in str(raised.value)
    crossing.rename(moved)
    loaded = load_dataset(
        "imagefolder", data_dir=str(tmp_path / "chest_xray"), image_size=IMAGE_SIZE, group_pattern="pneumonia"
    )
    # test/ keeps its 4 patients; val/ is carved out of train/ by whole patients.
    assert loaded.group_counts["test"] == 4 and loaded.group_counts["val"] >= 1
    assert sum(loaded.group_counts.values()) == len(layout)


def test_bad_group_patterns_fail_in_one_line_without_file_names(tmp_path):
    write_pneumonia_folder(tmp_path / "chest_xray")
    Image.new("L", (10, 10), 3).save(tmp_path / "chest_xray" / "NORMAL" / "scan-unknown.jpeg")
    with pytest.raises(ValueError, match=r"finds no patient or slide key in 1 of \d+ file names") as raised:
        load_dataset(
            "imagefolder", data_dir=str(tmp_path / "chest_xray"), image_size=IMAGE_SIZE, group_pattern="pneumonia"
        )
    assert "scan-unknown" not in str(raised.value)
    with pytest.raises(ValueError, match="has no capturing group"):
        load_dataset(
            "imagefolder", data_dir=str(tmp_path / "chest_xray"), image_size=IMAGE_SIZE, group_pattern=r"person\d+"
        )
    with pytest.raises(ValueError, match="the TFDS copy of malaria has no file names"):
        load_dataset("malaria", image_size=IMAGE_SIZE, group_pattern="malaria")
