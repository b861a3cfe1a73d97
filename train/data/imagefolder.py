"""Loads the `imagefolder` dataset: one subfolder per class, optionally under train/ val/ test/; reads image files.

Two classes give a binary task whose positive class (label 1.0) is the second folder name in
sorted order (NORMAL/PNEUMONIA -> PNEUMONIA); more classes give a multiclass task with one-hot
labels. Accepted files: .png .jpg .jpeg .bmp .gif .dcm .dicom in any letter case; unreadable ones are skipped.
With a group_pattern (train.data.groups), every patient's or slide's images stay in one split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.data.files import list_image_files, scan_images
from train.data.groups import (
    compile_group_pattern,
    group_ids,
    groups_in_several_splits,
    resolve_group_pattern,
)
from train.data.spec import LoadedDataset
from train.data.splits import (
    TEST,
    TRAIN,
    VAL,
    carve_split,
    grouped_carve,
    grouped_split,
    stratified_choice,
    stratified_split,
)

NAME = "imagefolder"
SPLIT_FOLDER_IDS = {"train": TRAIN, "val": VAL, "validation": VAL, "test": TEST}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def split_folders(root: Path) -> dict[int, Path]:
    """Split id -> folder when `root` holds train/ (and val/ or validation/, test/); empty when it holds classes."""
    subfolders = _subfolders(root)
    named = {folder.name.lower(): folder for folder in subfolders if folder.name.lower() in SPLIT_FOLDER_IDS}
    if not named:
        return {}
    others = [folder.name for folder in subfolders if folder.name.lower() not in SPLIT_FOLDER_IDS]
    if "train" not in named or others:
        raise ValueError(
            f"{root} mixes split folders ({', '.join(sorted(named))}) with other folders ({', '.join(others) or 'none'}) "
            "or has no train/ folder; use either train/ [val/] [test/] each holding one folder per class, "
            "or one folder per class at the top level"
        )
    if "val" in named and "validation" in named:
        raise ValueError(f"{root} has both val/ and validation/; keep one of them")
    return {SPLIT_FOLDER_IDS[name]: folder for name, folder in named.items()}


def class_folder_names(root: str | Path) -> list[str]:
    """The class folder names of a layout (those of train/ when it has split folders); ValueError for a mixed one."""
    root = Path(root)
    return [folder.name for folder in _subfolders(split_folders(root).get(TRAIN, root))]


def _labels_for(class_indices: np.ndarray, num_classes: int) -> tuple[str, np.ndarray]:
    if num_classes == 2:
        return "binary", class_indices[:, None].astype(np.float32)
    return "multiclass", np.eye(num_classes, dtype=np.float32)[class_indices]


def load_class_folders(
    root: str | Path,
    *,
    name: str,
    image_size: int,
    seed: int,
    max_examples: int,
    validation_fraction: float,
    test_fraction: float,
    classes: list[tuple[str, str]] | None = None,
    group_pattern: str = "",
) -> LoadedDataset:
    """Load class subfolders under `root` (or under its train/val/test folders) into a LoadedDataset.

    classes: (class name, folder name) pairs in label order, to force names and the positive class
    (the malaria cell_images layout); by default the sorted folder names of the training folder.
    group_pattern: a regular expression (already resolved from presets) whose first group is the
    patient or slide key in each file name; "" splits per image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data_dir {root} does not exist or is not a folder; point it at the dataset folder")
    if group_pattern:
        # A bad pattern fails before the scan, which can take minutes on a large folder.
        compile_group_pattern(group_pattern)
    layout = split_folders(root)
    classes = _check_classes(layout.get(TRAIN, root), layout, classes)
    paths, class_indices, preset = _list_class_files(root, layout, classes)

    if max_examples and max_examples < len(paths):
        # Stratify the cap by split folder and class so every split keeps its class balance.
        keep = stratified_choice(preset * len(classes) + class_indices, max_examples, seed)
        paths = [paths[index] for index in keep]
        class_indices, preset = class_indices[keep], preset[keep]

    scan = scan_images(paths, description=f"checking {name} images")
    readable = scan.readable
    paths = [path for path, good in zip(paths, readable, strict=True) if good]
    class_indices, preset = class_indices[readable], preset[readable]

    groups = group_ids(paths, group_pattern) if group_pattern else None
    fractions = (validation_fraction, test_fraction)
    if layout:
        split_ids = _fill_missing_splits(preset, class_indices, layout, fractions, seed, root, groups)
    else:
        split_ids = _split(class_indices, groups, fractions, seed)
    task, labels = _labels_for(class_indices, len(classes))
    settings = {
        "seed": seed,
        "max_examples": max_examples,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
    }
    if group_pattern:
        # Only set when grouping, so per-image datasets keep the digests they had before grouping existed.
        settings["group_pattern"] = group_pattern

    from train.data.pipeline import loaded_from_files

    return loaded_from_files(
        name=name,
        task=task,
        class_names=[class_name for class_name, _ in classes],
        source=root,
        paths=paths,
        labels=labels,
        split_ids=split_ids,
        content_hashes=scan.readable_hashes(),
        skipped=scan.skipped,
        image_size=image_size,
        settings=settings,
        groups=groups,
        graph_decodable=scan.readable_graph_decodable(),
    )


def _check_classes(
    train_folder: Path, layout: dict[int, Path], classes: list[tuple[str, str]] | None
) -> list[tuple[str, str]]:
    """(class name, folder name) pairs: the given ones or the training folder's subfolders; every split has the same."""
    if classes is None:
        folder_names = [folder.name for folder in _subfolders(train_folder)]
        classes = [(folder_name, folder_name) for folder_name in folder_names]
    if len(classes) < 2:
        found = ", ".join(folder for _, folder in classes) or "none"
        raise ValueError(
            f"{train_folder} needs one subfolder per class and at least 2 classes, found {len(classes)} ({found})"
        )
    known_folders = {folder.lower() for _, folder in classes}
    for split_folder in layout.values():
        extra = [folder.name for folder in _subfolders(split_folder) if folder.name.lower() not in known_folders]
        if extra:
            raise ValueError(
                f"{split_folder} has class folders {', '.join(extra)} that {train_folder} lacks; "
                "use the same class folders in every split"
            )
    return classes


def _list_class_files(
    root: Path, layout: dict[int, Path], classes: list[tuple[str, str]]
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Image paths, their class indices and their split folder ids (-1 without split folders)."""
    paths: list[Path] = []
    class_list: list[int] = []
    preset_list: list[int] = []
    for split_id, split_folder in layout.items() or [(-1, root)]:
        existing = {folder.name.lower(): folder for folder in _subfolders(split_folder)}
        for class_index, (_, folder_name) in enumerate(classes):
            class_folder = existing.get(folder_name.lower())
            if class_folder is None:
                continue
            files = list_image_files(class_folder)
            paths.extend(files)
            class_list.extend([class_index] * len(files))
            preset_list.extend([split_id] * len(files))
    class_indices = np.array(class_list, dtype=np.int64)
    counts = np.bincount(class_indices, minlength=len(classes))
    empty = [folder for (_, folder), count in zip(classes, counts, strict=True) if count == 0]
    if empty:
        raise ValueError(
            f"class folder(s) {', '.join(empty)} under {root} hold no .png/.jpg/.jpeg/.bmp/.gif/.dcm or DICOM images"
        )
    return paths, class_indices, np.array(preset_list, dtype=np.int64)


def _split(class_indices: np.ndarray, groups: np.ndarray | None, fractions: tuple[float, float], seed: int):
    """Split ids for a set: stratified by class, and keeping whole groups when there are groups."""
    validation_fraction, test_fraction = fractions
    if groups is not None:
        return grouped_split(
            groups, class_indices, validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
        )
    return stratified_split(
        class_indices, validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
    )


def _fill_missing_splits(
    preset: np.ndarray,
    class_indices: np.ndarray,
    layout: dict[int, Path],
    fractions: tuple[float, float],
    seed: int,
    root: Path,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the folder splits; carve a missing val/ or test/ out of train/, stratified by class (and by whole groups).

    With groups, the folders must already keep each group in one split; otherwise ValueError says how many cross.
    """
    validation_fraction, test_fraction = fractions
    if groups is not None:
        crossing = groups_in_several_splits(groups, preset)
        if crossing:
            raise ValueError(
                f"{crossing} patient/slide group(s) have images in more than one of the split folders of {root}; "
                "move each group's images into one of train/, val/, test/, or put all images in class folders "
                "at the top level so that medimg splits them by group"
            )
    split_ids = preset.copy()
    train_members = np.flatnonzero(split_ids == TRAIN)
    train_groups = groups[train_members] if groups is not None else None
    if VAL not in layout and TEST not in layout:
        split_ids[train_members] = _split(class_indices[train_members], train_groups, fractions, seed)
        return split_ids
    for missing_id, fraction in ((VAL, validation_fraction), (TEST, test_fraction)):
        if missing_id in layout:
            continue
        if len(train_members) < 2:
            raise ValueError(f"{root}/train has too few readable images to carve out a split; add images")
        if train_groups is not None:
            carved = grouped_carve(train_groups, class_indices[train_members], fraction, seed)
        else:
            carved = carve_split(class_indices[train_members], fraction, seed)
        split_ids[train_members[carved]] = missing_id
    return split_ids


def load_imagefolder(
    *,
    data_dir: str | None = None,
    image_size: int = 128,
    seed: int = 42,
    max_examples: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    group_pattern: str = "",
) -> LoadedDataset:
    """Load a class-per-subfolder dataset from data_dir.

    group_pattern: "" (split per image), a preset (`pneumonia`, `malaria`) or a regular expression whose
    first group is the patient or slide key in each file name; see train.data.groups.
    """
    if not data_dir:
        raise ValueError("dataset imagefolder needs data_dir: a folder with one subfolder per class")
    return load_class_folders(
        data_dir,
        name="imagefolder",
        image_size=image_size,
        seed=seed,
        max_examples=max_examples,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        group_pattern=resolve_group_pattern(group_pattern),
    )


def finds_labels(folder: Path, class_names: list[str]) -> bool:
    """Whether the folder's class folders, in sorted order, are the model's classes (with or without train/ val/ test/)."""
    try:
        return class_folder_names(folder) == class_names
    except ValueError:
        return False
