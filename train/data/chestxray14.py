"""Loads NIH ChestX-ray14 from a data_dir: reads the Data_Entry CSV, the official split lists and the PNG images.

NIH ChestX-ray14: 112,120 frontal chest radiographs (1024x1024 PNG) of 30,805 patients, each with
zero or more of 14 findings text-mined from the radiology reports ("No Finding" = none of them).
Labels, in this fixed order (the order of the model outputs and of every per-class metric):
Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion, Emphysema, Fibrosis, Hernia,
Infiltration, Mass, Nodule, Pleural_Thickening, Pneumonia, Pneumothorax.

Download: https://nihcc.app.box.com/v/ChestXray-NIHCC (Data_Entry_2017_v2020.csv, train_val_list.txt,
test_list.txt and images_001.tar.gz ... images_012.tar.gz; extracted, the images sit in
images_NNN/images/, in images/ or directly in data_dir).
Citation: Wang X., Peng Y., Lu L., Lu Z., Bagheri M., Summers R. M., "ChestX-ray8: Hospital-scale
Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common
Thorax Diseases", CVPR 2017, pp. 2097-2106.

Splits: the official test_list.txt is the test split; validation is carved out of
train_val_list.txt by patient (seeded), so no patient appears in two splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serve.concepts import Concept
from train.data.files import has_image_extension, scan_images
from train.data.labels import is_positive
from train.data.splits import TEST, TRAIN, VAL

if TYPE_CHECKING:
    from train.data.spec import LoadedDataset

# The fourteen findings in the model's output order, each with its SNOMED CT concept where one was found in a source
# that could be checked (the source is written beside each code; docs/PACS.md lists them). DICOM PS3.16 comes first: a
# source that starts with PS3_16 names the context group(s) holding the code, and tests/test_pacs.py checks code,
# meaning and CIDs offline against pydicom 3.0.2's dictionaries (generated from PS3.16's context groups and its Table
# O-1, the SNOMED CT concept ids DICOM uses with their fully specified names). The eight other codes are in neither
# (checked the same way), so their sources are public terminology sources that name the SNOMED CT id with its fully
# specified name. PS3.16 codes cardiomegaly in CIDs 12248/12249 as 287272002, but its own Table O-1 gives 287272002 as
# "Enlarged septal foramen of heart (disorder)"; that code is not taken. Pleural thickening has no concept in PS3.16
# (no CID, no Table O-1 entry) nor in any checkable source (docs/PACS.md lists what was searched), so it stays in
# medimg's private scheme (serve.concepts) rather than carry a guessed identifier.
PS3_16 = "DICOM PS3.16"
FINDINGS: tuple[tuple[str, Concept | None], ...] = (
    (
        "Atelectasis",
        Concept(
            "46621007",
            "SCT",
            "Atelectasis",
            f"SNOMED CT 'Atelectasis (disorder)' as named in public FHIR concept maps and code tables; not in {PS3_16}",
        ),
    ),
    (
        "Cardiomegaly",
        Concept(
            "8186001",
            "SCT",
            "Cardiomegaly",
            "IHE AI Results FHIR IG draft (github.com/xmiao/AI.interoperability, AIRLesionTypeValueSet: "
            f"'Cardiomegaly (disorder)'); not {PS3_16}'s 287272002, which its CIDs 12248/12249 call 'Cardiomegaly' "
            "but its Table O-1 calls 'Enlarged septal foramen of heart (disorder)'",
        ),
    ),
    (
        "Consolidation",
        Concept("95436008", "SCT", "Lung consolidation", "OHDSI SNOMED vocabulary: 'Lung consolidation'"),
    ),
    ("Edema", Concept("19242006", "SCT", "Pulmonary edema", f"{PS3_16} CID 3700 (pydicom codes.SCT.PulmonaryEdema)")),
    (
        "Effusion",
        Concept(
            "60046008",
            "SCT",
            "Pleural effusion",
            f"{PS3_16} CID 645 (pydicom codes.SCT.PleuralEffusion); IHE AIR FHIR IG draft AIRLesionTypeValueSet",
        ),
    ),
    (
        "Emphysema",
        Concept(
            "87433001",
            "SCT",
            "Pulmonary emphysema",
            "SNOMED CT 'Pulmonary emphysema (disorder)' as named in public HL7 FHIR IG value sets",
        ),
    ),
    (
        "Fibrosis",
        Concept(
            "51615001",
            "SCT",
            "Fibrosis of lung",
            "SNOMED CT 'Fibrosis of lung (disorder)' as named in public HL7 FHIR IG value sets",
        ),
    ),
    (
        "Hernia",
        Concept(
            "84089009",
            "SCT",
            "Hiatal hernia",
            "SNOMED CT 'Hiatal hernia' in public SNOMED CT to ICD-10 tables (K44.9); narrower than the NIH label "
            "'Hernia' (see docs/PACS.md)",
        ),
    ),
    (
        "Infiltration",
        Concept(
            "409609008",
            "SCT",
            "Radiologic infiltrate of lung",
            "NLM UMLS Terminology Services: SNOMEDCT_US 409609008, member of the CORE Problem List Subset",
        ),
    ),
    ("Mass", Concept("4147007", "SCT", "Mass", f"{PS3_16} CID 6104 Abnormal Opacity Finding (pydicom codes.SCT.Mass)")),
    (
        "Nodule",
        Concept("27925004", "SCT", "Nodule", f"{PS3_16} CID 6104 Abnormal Opacity Finding (pydicom codes.SCT.Nodule)"),
    ),
    ("Pleural_Thickening", None),
    (
        "Pneumonia",
        Concept("233604007", "SCT", "Pneumonia", "NLM UMLS: SNOMED CT 233604007 is concept C0032285 'Pneumonia'"),
    ),
    (
        "Pneumothorax",
        Concept(
            "36118008",
            "SCT",
            "Pneumothorax",
            f"{PS3_16} CID 6105 Abnormal Lucency Finding (pydicom codes.SCT.Pneumothorax)",
        ),
    ),
)
CLASS_NAMES = tuple(name for name, _ in FINDINGS)
CONCEPTS = tuple((name, concept) for name, concept in FINDINGS if concept is not None)
CLASS_INDEX = {name: index for index, name in enumerate(CLASS_NAMES)}
NO_FINDING = "No Finding"
# The 2020 re-release first, then the original 2017 file name; both have the same columns.
NAME = "chestxray14"
METADATA_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
VIEWS = ("all", "PA", "AP")
IMAGE_COLUMN = "Image Index"
FINDINGS_COLUMN = "Finding Labels"
PATIENT_COLUMN = "Patient ID"
VIEW_COLUMN = "View Position"
AGE_COLUMN = "Patient Age"
SEX_COLUMN = "Patient Gender"
# Age bands of the subgroup metrics (years, upper bound exclusive).
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 121, "80+"))
# Missing images are skipped until there are more than this many and this fraction of the listed ones.
MAX_MISSING_FILES = 5
MAX_MISSING_FRACTION = 0.01
SPLIT_IDS = {"train": TRAIN, "val": VAL, "test": TEST}


@dataclass
class ChestXray14Index:
    """The images one load uses, before any pixel is read: where they are, their labels, patients and splits."""

    root: Path
    metadata_file: Path
    names: list[str]
    paths: list[Path]
    labels: np.ndarray
    patient_ids: np.ndarray
    split_ids: np.ndarray
    # "path: reason" lines of images listed in the split files but not found on disk.
    missing: list[str] = field(default_factory=list)
    # Images the settings left out: view filter, max_examples, rows in neither split list.
    left_out: dict[str, int] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    # Per image: subgroup attributes for subgroup metrics (view PA/AP, sex M/F, age band).
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)

    def split_counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.split_ids == split_id)) for name, split_id in SPLIT_IDS.items()}

    def source_digest(self) -> str:
        """SHA-256 of the metadata files, settings and (name, byte size, labels, split) of every used image.

        File sizes stand in for contents so that checking whether a 45 GB folder changed costs one
        stat per file instead of reading every image.
        """
        hasher = hashlib.sha256()
        hasher.update(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for path in (self.metadata_file, self.root / TRAIN_VAL_LIST, self.root / TEST_LIST):
            hasher.update(path.name.encode())
            hasher.update(hashlib.sha256(path.read_bytes()).digest())
        for name, path, label, split_id in zip(self.names, self.paths, self.labels, self.split_ids, strict=True):
            label_text = "".join("1" if is_positive(value) else "0" for value in label)
            hasher.update(f"{name}\t{path.stat().st_size}\t{label_text}\t{int(split_id)}\n".encode())
        return hasher.hexdigest()


def normalize_view(view: str) -> str:
    """'all', 'PA' or 'AP' from any letter case; anything else raises ValueError listing the choices."""
    word = str(view).strip()
    for choice in VIEWS:
        if word.lower() == choice.lower():
            return choice
    raise ValueError(f"unknown view {view!r}; valid views: {', '.join(VIEWS)}")


def find_metadata_file(root: str | Path) -> Path:
    """Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv) under root, else ValueError naming what is missing."""
    root = Path(root)
    for name in METADATA_FILES:
        if (root / name).is_file():
            return root / name
    raise ValueError(
        f"{root} has no {' or '.join(METADATA_FILES)}; point data_dir at the extracted NIH ChestX-ray14 folder "
        "(download: https://nihcc.app.box.com/v/ChestXray-NIHCC)"
    )


def parse_findings(text: str, where: str = "") -> np.ndarray:
    """A `|`-separated Finding Labels cell as a float32 vector over CLASS_NAMES ('No Finding' = all zeros)."""
    vector = np.zeros(len(CLASS_NAMES), dtype=np.float32)
    for finding in (part.strip() for part in text.split("|")):
        if not finding or finding == NO_FINDING:
            continue
        if finding not in CLASS_INDEX:
            raise ValueError(
                f"unknown finding {finding!r}{where}; expected {NO_FINDING!r} or one of: {', '.join(CLASS_NAMES)}"
            )
        vector[CLASS_INDEX[finding]] = 1.0
    return vector


@dataclass
class MetadataRow:
    labels: np.ndarray
    patient_id: str
    view: str
    sex: str = "unknown"
    age_band: str = "unknown"


def age_band(text: str) -> str:
    """The age band of a Patient Age cell: whole years ('58') or a DICOM age string ('058Y', '011M', '003W', '020D').

    Ages the file cannot mean (over 120 years; the 2017 release has a few) are 'unknown'.
    """
    word = str(text).strip().upper()
    unit = word[-1] if word[-1:] in ("Y", "M", "W", "D") else "Y"
    digits = word[:-1] if word[-1:] in ("Y", "M", "W", "D") else word
    if not digits.isdigit():
        return "unknown"
    years = int(digits) / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[unit]
    return next((name for low, high, name in AGE_BANDS if low <= years < high), "unknown")


def cell(row: list[str], columns: dict[str, int], name: str) -> str:
    """A row's value in the named column ('' when the file has no such column)."""
    index = columns.get(name)
    return row[index].strip() if index is not None and index < len(row) else ""


def _patient_key(value: str) -> str:
    # The CSV writes patient 1 as "1" while file names write "00000001"; compare them as numbers.
    value = value.strip()
    return str(int(value)) if value.isdigit() else value


def read_metadata(path: str | Path) -> dict[str, MetadataRow]:
    """Image Index -> labels, patient, view, sex and age band, from the Data_Entry CSV (2017 or 2020 release)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        columns = {name: index for index, name in enumerate(header) if name}
        required = (IMAGE_COLUMN, FINDINGS_COLUMN, PATIENT_COLUMN)
        absent = [name for name in required if name not in columns]
        if absent:
            raise ValueError(
                f"{path} lacks the column(s) {', '.join(absent)}; its header is {','.join(header)!r}, expected the "
                f"NIH header starting {IMAGE_COLUMN},{FINDINGS_COLUMN},Follow-up #,{PATIENT_COLUMN}"
            )
        rows: dict[str, MetadataRow] = {}
        for line_number, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(columns[name] for name in required):
                raise ValueError(f"{path}, line {line_number} has only {len(row)} fields; the file looks truncated")
            name = row[columns[IMAGE_COLUMN]].strip()
            if name in rows:
                raise ValueError(f"{path} lists {name} twice (line {line_number}); use the unmodified NIH file")
            sex = cell(row, columns, SEX_COLUMN).upper()
            age = cell(row, columns, AGE_COLUMN)
            rows[name] = MetadataRow(
                labels=parse_findings(row[columns[FINDINGS_COLUMN]], f" for {name} in {path.name}"),
                patient_id=_patient_key(row[columns[PATIENT_COLUMN]]),
                view=cell(row, columns, VIEW_COLUMN).upper(),
                sex=sex if sex in ("M", "F") else "unknown",
                age_band=age_band(age) if age else "unknown",
            )
    if not rows:
        raise ValueError(f"{path} has no image rows")
    return rows


def read_split_list(path: Path) -> list[str]:
    """Image names, one a line, from train_val_list.txt or test_list.txt."""
    if not path.is_file():
        raise ValueError(
            f"{path.parent} has no {path.name}; the official split lists come with the NIH download "
            "(https://nihcc.app.box.com/v/ChestXray-NIHCC)"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def index_image_files(root: str | Path) -> dict[str, Path]:
    """Image file name -> path, for images in root/images_*/images/, root/images_*/, root/images/ and root itself.

    One directory listing per folder, so 112,120 images cost a handful of system calls, not one
    stat per image. A name found in two folders keeps the first in that order.
    """
    root = Path(root)
    folders = []
    extracted = sorted(
        entry.path for entry in os.scandir(root) if entry.is_dir() and entry.name.lower().startswith("images_")
    )
    for folder in extracted:
        folders.extend([Path(folder) / "images", Path(folder)])
    folders.extend([root / "images", root])
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(".") or not has_image_extension(entry.name) or entry.name in found:
                continue
            if entry.is_file():
                found[entry.name] = Path(entry.path)
    return found


def patient_order(patient_ids: np.ndarray, labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Groups of example indices, one per patient, in a seeded order that covers every label early.

    The order starts with patients chosen to cover each label that at least two patients have
    (rarest label first; of the patients with it, the one adding the most uncovered labels), so a
    small slice taken from its front, such as a validation split or a max_examples cap,
    holds a positive of every label when it can; the remaining patients follow in random order.
    Labels found in a single patient are left to the rest of the order, so the slice does not take
    the only positive examples away from the remainder.
    """
    generator = np.random.default_rng(seed)
    unique, inverse = np.unique(np.asarray(patient_ids), return_inverse=True)
    inverse = inverse.reshape(-1)
    shuffled = generator.permutation(len(unique))
    presence = np.zeros((len(unique), labels.shape[1]), dtype=bool)
    np.logical_or.at(presence, inverse, is_positive(labels))
    patients_per_label = presence.sum(axis=0)
    chosen: list[int] = []
    taken = np.zeros(len(unique), dtype=bool)
    covered = np.zeros(labels.shape[1], dtype=bool)
    for label in np.argsort(patients_per_label, kind="stable"):
        if patients_per_label[label] < 2 or covered[label]:
            continue
        # Of the patients with this label, the one adding the most uncovered labels (first in shuffled order on ties).
        candidates = shuffled[presence[shuffled, label] & ~taken[shuffled]]
        if len(candidates) == 0:
            continue
        gains = (presence[candidates] & ~covered).sum(axis=1)
        patient = int(candidates[int(np.argmax(gains))])
        chosen.append(patient)
        taken[patient] = True
        covered |= presence[patient]
    chosen.extend(int(patient) for patient in shuffled if not taken[patient])
    members = [[] for _ in unique]
    for index, patient in enumerate(inverse):
        members[patient].append(index)
    return [np.array(members[patient], dtype=np.int64) for patient in chosen]


def carve_by_patient(patient_ids: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of whole patients holding about `fraction` of the examples (at least one patient, never all)."""
    groups = patient_order(patient_ids, labels, seed)
    if len(groups) < 2:
        raise ValueError(
            f"need at least 2 patients to carve a validation split by patient, got {len(groups)}; "
            "use more images (max_examples) or a larger view selection"
        )
    target = max(1, math.floor(fraction * len(patient_ids) + 0.5))
    mask = np.zeros(len(patient_ids), dtype=bool)
    for taken, group in enumerate(groups):
        if mask.sum() >= target or taken == len(groups) - 1:
            break
        mask[group] = True
    return mask


def cap_by_patient(patient_ids: np.ndarray, labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of `count` examples taken patient by patient (the last patient may be cut short)."""
    if count >= len(patient_ids):
        return np.arange(len(patient_ids))
    groups = patient_order(patient_ids, labels, seed)
    return np.sort(np.concatenate(groups)[:count])


def _check_patient_disjoint(
    train_val: Sequence[str], test: Sequence[str], rows: dict[str, MetadataRow], root: Path
) -> None:
    train_val_patients = {rows[name].patient_id: name for name in train_val if name in rows}
    for name in test:
        if name in rows and rows[name].patient_id in train_val_patients:
            patient = rows[name].patient_id
            raise ValueError(
                f"patient {patient} is in both {TRAIN_VAL_LIST} ({train_val_patients[patient]}) and {TEST_LIST} "
                f"({name}) under {root}; the official lists are patient-disjoint, so use the unmodified lists "
                "from the NIH download"
            )


def _check_missing(missing: list[str], listed: int, root: Path, max_missing_fraction: float, max_missing_files: int):
    if len(missing) > max_missing_files and len(missing) > max_missing_fraction * listed:
        raise ValueError(
            f"{len(missing)} of {listed} listed images ({len(missing) / listed:.1%}) are missing under {root}, "
            f"e.g. {missing[0].split(': ')[0]}; images are looked up in images_*/images/, images/ and the folder "
            f"itself. Extract the missing images_*.tar.gz archives, or allow more with max_missing_fraction "
            f"(now {max_missing_fraction}) to train on the images that are there"
        )


def _listed_images(root: Path, rows: dict[str, MetadataRow], metadata_file: Path, view: str):
    """(name, official split id) of the listed images of the view, and left-out counts; checks the official lists."""
    train_val = read_split_list(root / TRAIN_VAL_LIST)
    test = read_split_list(root / TEST_LIST)
    unknown = [name for name in (*train_val, *test) if name not in rows]
    if unknown:
        raise ValueError(
            f"{len(unknown)} image(s) in the split lists have no row in {metadata_file.name}, e.g. {unknown[0]}; "
            "use the CSV and the lists of the same NIH download"
        )
    _check_patient_disjoint(train_val, test, rows, root)
    left_out = {"not_in_split_lists": len(set(rows) - set(train_val) - set(test))}
    listed = [(name, TRAIN) for name in train_val] + [(name, TEST) for name in test]
    if view != "all":
        if not any(row.view for row in rows.values()):
            raise ValueError(f"{metadata_file} has no {VIEW_COLUMN} column; use view=all")
        kept = [(name, split_id) for name, split_id in listed if rows[name].view == view]
        left_out["other_view"] = len(listed) - len(kept)
        listed = kept
    if not listed:
        raise ValueError(f"no images of view {view} in {metadata_file}; use view=all")
    return listed, left_out


def _cap(split_ids: np.ndarray, patient_ids: np.ndarray, labels: np.ndarray, max_examples: int, seed: int):
    """Sorted indices kept by max_examples: per official split in proportion, whole patients first."""
    test_members = np.flatnonzero(split_ids == TEST)
    train_val_members = np.flatnonzero(split_ids == TRAIN)
    test_cap = min(len(test_members), max(1, math.floor(max_examples * len(test_members) / len(split_ids) + 0.5)))
    keep = [
        train_val_members[
            cap_by_patient(patient_ids[train_val_members], labels[train_val_members], max_examples - test_cap, seed)
        ],
        test_members[cap_by_patient(patient_ids[test_members], labels[test_members], test_cap, seed)],
    ]
    return np.sort(np.concatenate(keep))


def build_index(
    data_dir: str | Path,
    *,
    seed: int = 42,
    validation_fraction: float = 0.1,
    view: str = "all",
    max_examples: int = 0,
    max_missing_fraction: float = MAX_MISSING_FRACTION,
    max_missing_files: int = MAX_MISSING_FILES,
) -> ChestXray14Index:
    """Read metadata and split lists, find the image files and assign train/val/test; reads no pixels.

    Order of the steps: patient-disjointness check of the official lists, view filter, missing-file
    check (ValueError above both max_missing_files and max_missing_fraction of the listed images),
    max_examples cap (per official split, in proportion, whole patients first), then the
    validation split carved out of train_val by patient.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir {root} does not exist or is not a folder; point it at the NIH ChestX-ray14 folder")
    view = normalize_view(view)
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    if max_examples and max_examples < 3:
        raise ValueError(f"max_examples must be 0 (all) or at least 3 for train/val/test, got {max_examples}")
    metadata_file = find_metadata_file(root)
    rows = read_metadata(metadata_file)
    listed, left_out = _listed_images(root, rows, metadata_file, view)
    files = index_image_files(root)
    missing = [f"{root / 'images_*' / 'images' / name}: missing" for name, _ in listed if name not in files]
    _check_missing(missing, len(listed), root, max_missing_fraction, max_missing_files)
    listed = [(name, split_id) for name, split_id in listed if name in files]

    names = np.array([name for name, _ in listed])
    split_ids = np.array([split_id for _, split_id in listed], dtype=np.int64)
    labels = np.stack([rows[name].labels for name in names]) if len(names) else np.zeros((0, len(CLASS_NAMES)))
    patient_ids = np.array([rows[name].patient_id for name in names])
    if max_examples and max_examples < len(names):
        keep = _cap(split_ids, patient_ids, labels, max_examples, seed)
        left_out["max_examples"] = len(names) - len(keep)
        names, split_ids, labels, patient_ids = names[keep], split_ids[keep], labels[keep], patient_ids[keep]

    train_val_members = np.flatnonzero(split_ids == TRAIN)
    carved = carve_by_patient(patient_ids[train_val_members], labels[train_val_members], validation_fraction, seed)
    split_ids[train_val_members[carved]] = VAL

    # Sorted by name within the index, so the order does not depend on the lists' line order.
    order = np.argsort(names, kind="stable")
    names = [str(name) for name in names[order]]
    subgroups = {
        "view": np.array([rows[name].view or "unknown" for name in names]),
        "sex": np.array([rows[name].sex for name in names]),
        "age": np.array([rows[name].age_band for name in names]),
    }
    return ChestXray14Index(
        root=root,
        metadata_file=metadata_file,
        names=names,
        paths=[files[name] for name in names],
        labels=labels[order].astype(np.float32),
        patient_ids=patient_ids[order],
        split_ids=split_ids[order],
        missing=missing,
        left_out=left_out,
        settings={
            "name": "chestxray14",
            "metadata": metadata_file.name,
            "seed": seed,
            "validation_fraction": validation_fraction,
            "view": view,
            "max_examples": max_examples,
        },
        subgroups=subgroups,
    )


def load_chestxray14(
    *,
    data_dir: str | None = None,
    image_size: int = 224,
    seed: int = 42,
    max_examples: int = 0,
    validation_fraction: float = 0.1,
    view: str = "all",
    max_missing_fraction: float = MAX_MISSING_FRACTION,
    max_missing_files: int = MAX_MISSING_FILES,
) -> LoadedDataset:
    """Index the folder, check that every used image decodes (parallel, with a progress bar) and wrap the splits."""
    from train.data.pipeline import loaded_from_files

    if not data_dir:
        raise ValueError("dataset chestxray14 needs data_dir: the extracted NIH ChestX-ray14 folder")
    index = build_index(
        data_dir,
        seed=seed,
        validation_fraction=validation_fraction,
        view=view,
        max_examples=max_examples,
        max_missing_fraction=max_missing_fraction,
        max_missing_files=max_missing_files,
    )
    scan = scan_images(index.paths, description="checking chestxray14 images")
    readable = scan.readable
    paths = [path for path, good in zip(index.paths, readable, strict=True) if good]
    skipped = [*index.missing, *scan.skipped]
    # Integer patient codes: confidence intervals resample whole patients, and patient ids stay out of any record.
    _, patients = np.unique(index.patient_ids[readable], return_inverse=True)
    loaded = loaded_from_files(
        name="chestxray14",
        task="multilabel",
        class_names=list(CLASS_NAMES),
        source=index.root,
        paths=paths,
        labels=index.labels[readable],
        split_ids=index.split_ids[readable],
        groups=patients.reshape(-1),
        metadata={attribute: values[readable] for attribute, values in index.subgroups.items()},
        content_hashes=scan.readable_hashes(),
        graph_decodable=scan.readable_graph_decodable(),
        skipped=skipped,
        image_size=image_size,
        settings={key: value for key, value in index.settings.items() if key != "name"},
    )
    return loaded


def finds_labels(folder: Path, class_names: list[str]) -> bool:
    """Whether the folder is an NIH ChestX-ray14 folder (its Data_Entry CSV at the top)."""
    return any((folder / name).is_file() for name in METADATA_FILES)
