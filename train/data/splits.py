"""Seeded, stratified train/val/test assignment and subsampling of example indices: pure numpy, reads no files."""

from __future__ import annotations

import math

import numpy as np

from train.data.spec import SPLIT_NAMES, check_fractions

TRAIN, VAL, TEST = 0, 1, 2


def strata_from_labels(labels: np.ndarray) -> np.ndarray:
    """One integer stratum per distinct label row (class for one-hot/binary, label combination for multi-label)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    _, inverse = np.unique(labels, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _round_half_up(value: float) -> int:
    # Python's round() rounds 4.5 to 4; users expect 15% of 30 examples to be 5.
    return int(math.floor(value + 0.5 + 1e-9))


def split_counts(total: int, validation_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Train, val and test sizes for `total` examples; val and test get at least one example each."""
    check_fractions(validation_fraction, test_fraction)
    if total < 3:
        raise ValueError(f"need at least 3 examples to make train/val/test splits, got {total}")
    test_count = max(1, _round_half_up(total * test_fraction))
    val_count = max(1, _round_half_up(total * validation_fraction))
    train_count = total - val_count - test_count
    if train_count < 1:
        raise ValueError(
            f"{total} examples leave no training examples with validation_fraction={validation_fraction} "
            f"and test_fraction={test_fraction}; use more examples or smaller fractions"
        )
    return train_count, val_count, test_count


def _interleaved_pattern(counts: list[int], offset: int) -> np.ndarray:
    """A sequence holding group g counts[g] times, each group spread evenly, rotated by `offset`."""
    keys = np.concatenate([(np.arange(count) + 0.5) / count for count in counts if count > 0])
    groups = np.concatenate([np.full(count, group) for group, count in enumerate(counts) if count > 0])
    pattern = groups[np.argsort(keys, kind="stable")]
    return np.roll(pattern, offset)


def stratified_assignment(strata: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """Assign each example a group id so that group g gets exactly counts[g] examples, in proportion per stratum.

    Examples are ordered by stratum (randomly within a stratum) and the groups are laid over that
    order in an evenly interleaved pattern, so every stratum is shared out in the same proportions
    give or take one example.
    """
    strata = np.asarray(strata)
    total = len(strata)
    if sum(counts) != total:
        raise ValueError(f"group sizes {counts} do not add up to the {total} examples")
    assignment = np.zeros(total, dtype=np.int64)
    if total == 0:
        return assignment
    generator = np.random.default_rng(seed)
    order = np.lexsort((generator.random(total), strata))
    assignment[order] = _interleaved_pattern(list(counts), int(generator.integers(total)))
    return assignment


def stratified_split(strata: np.ndarray, *, validation_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Split id per example (0 train, 1 val, 2 test), stratified by `strata` and deterministic by seed."""
    counts = split_counts(len(strata), validation_fraction, test_fraction)
    return stratified_assignment(strata, list(counts), seed)


def stratified_choice(strata: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of `count` examples chosen in proportion to each stratum, deterministic by seed."""
    total = len(strata)
    if count >= total:
        return np.arange(total)
    assignment = stratified_assignment(strata, [count, total - count], seed)
    return np.flatnonzero(assignment == 0)


def carve_split(strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified `fraction` carved out of a set (at least one example, never all)."""
    total = len(strata)
    if total < 2:
        raise ValueError(f"need at least 2 examples to carve out a split, got {total}")
    carved = min(total - 1, max(1, _round_half_up(total * fraction)))
    return stratified_assignment(strata, [carved, total - carved], seed) == 0


def split_name(split_id: int) -> str:
    """The split name for a split id (0 train, 1 val, 2 test)."""
    return SPLIT_NAMES[split_id]


def group_assignment(groups: np.ndarray, strata: np.ndarray, fractions: list[float], seed: int) -> np.ndarray:
    """Part id per example such that every group lies in one part and part i holds about fractions[i] of the examples.

    Stratified as well as whole groups allow: each group counts for its majority stratum, and groups,
    largest first (seeded random order among equal sizes), go to the part furthest below its share of
    that stratum. Every part gets at least one group. Deterministic by seed.
    """
    groups, strata = np.asarray(groups), np.asarray(strata, dtype=np.int64)
    unique, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    parts = len(fractions)
    if len(unique) < parts:
        raise ValueError(
            f"only {len(unique)} patient/slide group(s) for {parts} splits; add images of more patients or check "
            "group_pattern"
        )
    sizes = np.bincount(inverse, minlength=len(unique))
    per_group = np.zeros((len(unique), int(strata.max()) + 1 if len(strata) else 1), dtype=np.int64)
    np.add.at(per_group, (inverse, strata), 1)
    group_stratum = per_group.argmax(axis=1)
    generator = np.random.default_rng(seed)
    order = np.lexsort((generator.random(len(unique)), -sizes))
    targets = np.outer(np.bincount(group_stratum, weights=sizes, minlength=per_group.shape[1]), fractions)
    filled = np.zeros_like(targets)
    part_of_group = np.zeros(len(unique), dtype=np.int64)
    for group in order:
        stratum = group_stratum[group]
        shortfall = (targets[stratum] - filled[stratum]) / np.maximum(targets[stratum], 1e-9)
        part_of_group[group] = int(np.argmax(shortfall))
        filled[stratum, part_of_group[group]] += sizes[group]
    for part in range(parts):
        if not np.any(part_of_group == part):
            # A part that got no group takes the smallest group of the part with the most groups.
            donor = int(np.argmax(np.bincount(part_of_group, minlength=parts)))
            members = np.flatnonzero(part_of_group == donor)
            part_of_group[members[np.argmin(sizes[members])]] = part
    return part_of_group[inverse]


def grouped_split(
    groups: np.ndarray, strata: np.ndarray, *, validation_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Split id per example (0 train, 1 val, 2 test) that keeps every group in one split, stratified as far as possible."""
    check_fractions(validation_fraction, test_fraction)
    fractions = [1.0 - validation_fraction - test_fraction, validation_fraction, test_fraction]
    return group_assignment(groups, strata, fractions, seed)


def grouped_carve(groups: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of whole groups holding about `fraction` of a set (at least one group, never all)."""
    return group_assignment(groups, strata, [fraction, 1.0 - fraction], seed) == 0
