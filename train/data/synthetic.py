"""Generates the `synthetic` dataset in memory with numpy: round cells on a noisy background; reads and writes nothing.

Binary task: class_names ["uninfected", "parasitized"]; parasitized cells carry 1-3 dark
parasite-like dots. Multi-label task: three independent findings, "dots", "ring" (a dark ring
inside the cell) and "stripes" (dark bands across the cell), each present in about 40% of images.
Every image depends only on (seed, index), so a smaller count gives a prefix of a larger one.
Each image also has a `scanner` (A, B or C, 50/30/20%, independent of the labels) that shifts its
brightness a little, as acquisition sites do: subgroup metrics report AUROC per scanner.
"""

from __future__ import annotations

import numpy as np

from train.data.digest import array_digest
from train.data.spec import LoadedDataset

NAME = "synthetic"

BINARY_CLASS_NAMES = ["uninfected", "parasitized"]
MULTILABEL_CLASS_NAMES = ["dots", "ring", "stripes"]
SYNTHETIC_TASKS = ("binary", "multilabel")
BINARY_PREVALENCE = 0.5
MULTILABEL_PREVALENCE = 0.4

BACKGROUND_COLOR = np.array([232.0, 222.0, 228.0])
CELL_COLOR = np.array([214.0, 150.0, 172.0])
PARASITE_COLOR = np.array([88.0, 38.0, 112.0])
# Scanner name -> (share of images, brightness offset, contrast factor about mid-grey).
SCANNERS = {"A": (0.5, 0.0, 1.0), "B": (0.3, 10.0, 1.0), "C": (0.2, -10.0, 0.9)}


def _disc(distance: np.ndarray, radius: float, image_size: int) -> np.ndarray:
    """Soft-edged disc mask (1 inside, 0 outside, about one pixel of anti-aliasing)."""
    return np.clip((np.float32(radius) - distance) * np.float32(image_size), 0.0, 1.0)


def _paint(image: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    image += mask[..., None] * (color.astype(np.float32) - image)


def render_cell(generator: np.random.Generator, image_size: int, findings: dict[str, bool]) -> np.ndarray:
    """One uint8 [S, S, 3] cell image with the requested findings (dots, ring, stripes) drawn in."""
    coordinates = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    rows, columns = np.meshgrid(coordinates, coordinates, indexing="ij")
    image = np.broadcast_to(BACKGROUND_COLOR.astype(np.float32), (image_size, image_size, 3)).copy()
    center = 0.5 + generator.uniform(-0.08, 0.08, size=2)
    radius = generator.uniform(0.30, 0.40)
    distance = np.hypot(rows - center[0], columns - center[1])
    cell = _disc(distance, radius, image_size)
    _paint(image, cell, CELL_COLOR + generator.uniform(-18.0, 18.0, size=3))
    if findings.get("stripes"):
        # Dark bands across the cell only, at a random phase and 5-7 bands per image height.
        frequency = generator.uniform(5.0, 7.0)
        bands = (np.sin(2.0 * np.pi * (rows * frequency + generator.uniform())) > 0.3).astype(np.float32)
        _paint(image, cell * bands * 0.45, PARASITE_COLOR)
    if findings.get("ring"):
        ring_radius = radius * generator.uniform(0.45, 0.6)
        ring_width = max(0.035, 1.5 / image_size)
        ring = _disc(np.abs(distance - ring_radius), ring_width / 2.0, image_size)
        _paint(image, ring * 0.9, PARASITE_COLOR)
    if findings.get("dots"):
        for _ in range(generator.integers(1, 4)):
            angle = generator.uniform(0.0, 2.0 * np.pi)
            offset = radius * np.sqrt(generator.uniform(0.0, 0.5))
            dot_center = center + offset * np.array([np.sin(angle), np.cos(angle)])
            # At least one pixel, so dots stay visible in tiny test images.
            dot_radius = max(generator.uniform(0.05, 0.08), 1.0 / image_size)
            dot = _disc(np.hypot(rows - dot_center[0], columns - dot_center[1]), dot_radius, image_size)
            _paint(image, dot, PARASITE_COLOR + generator.uniform(-15.0, 15.0, size=3))
    image += 6.0 * generator.standard_normal(size=image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def scanner_of(seed: int, index: int) -> str:
    """The scanner of image `index`, from its own random stream so the images do not depend on it."""
    shares = np.array([share for share, _, _ in SCANNERS.values()])
    return list(SCANNERS)[int(np.random.default_rng([seed, index, 1]).choice(len(shares), p=shares))]


def as_scanned(image: np.ndarray, scanner: str) -> np.ndarray:
    _, offset, contrast = SCANNERS[scanner]
    if offset == 0.0 and contrast == 1.0:
        return image
    shifted = (image.astype(np.float32) - 128.0) * contrast + 128.0 + offset
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


def generate(count: int, image_size: int, task: str, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 [count, S, S, 3], labels float32 [count, outputs] and class names for `task`."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic_task {task!r}; valid choices: {', '.join(SYNTHETIC_TASKS)}")
    images = np.zeros((count, image_size, image_size, 3), dtype=np.uint8)
    class_names = BINARY_CLASS_NAMES if task == "binary" else MULTILABEL_CLASS_NAMES
    labels = np.zeros((count, 1 if task == "binary" else len(class_names)), dtype=np.float32)
    for index in range(count):
        # A generator per (seed, index) makes image i independent of how many images are drawn.
        generator = np.random.default_rng([seed, index])
        if task == "binary":
            findings = {"dots": bool(generator.random() < BINARY_PREVALENCE)}
            labels[index, 0] = float(findings["dots"])
        else:
            present = generator.random(len(class_names)) < MULTILABEL_PREVALENCE
            findings = dict(zip(class_names, present.tolist(), strict=True))
            labels[index] = present
        images[index] = as_scanned(render_cell(generator, image_size, findings), scanner_of(seed, index))
    return images, labels, list(class_names)


def load_synthetic(
    *,
    image_size: int = 128,
    seed: int = 42,
    max_examples: int = 0,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
    synthetic_task: str = "binary",
    synthetic_examples: int = 600,
) -> LoadedDataset:
    """Generate, split (stratified, seeded) and wrap the synthetic dataset."""
    from train.data.pipeline import arrays_split
    from train.data.spec import SPLIT_NAMES
    from train.data.splits import strata_from_labels, stratified_split

    if synthetic_task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic_task {synthetic_task!r}; valid choices: {', '.join(SYNTHETIC_TASKS)}")
    if synthetic_examples < 3:
        raise ValueError(f"synthetic_examples must be at least 3, got {synthetic_examples}")
    # Images depend only on (seed, index), so capping by generating fewer is the same as drawing a subset.
    count = min(synthetic_examples, max_examples) if max_examples else synthetic_examples
    images, labels, class_names = generate(count, image_size, synthetic_task, seed)
    split_ids = stratified_split(
        strata_from_labels(labels),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    settings = {
        "name": "synthetic",
        "task": synthetic_task,
        "image_size": image_size,
        "seed": seed,
        "count": count,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
    }
    scanners = np.array([scanner_of(seed, index) for index in range(count)])
    splits = {}
    for split_id, split_name in enumerate(SPLIT_NAMES):
        members = split_ids == split_id
        splits[split_name] = arrays_split(images[members], labels[members])
        splits[split_name].metadata = {"scanner": scanners[members]}
    return LoadedDataset(
        name="synthetic",
        task=synthetic_task,
        class_names=class_names,
        num_outputs=labels.shape[1],
        splits=splits,
        digest=array_digest(settings, images, labels, split_ids),
        source="synthetic",
    )
