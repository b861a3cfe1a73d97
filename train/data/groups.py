"""Patient or slide groups from image file names, for splits that keep each group whole: reads names, writes nothing.

A group pattern is a regular expression searched in each file name (not the folder path); its first
group (...) is the patient or slide key. Keys are patient identifiers or close to them, so they are
turned into integer ids at once and never printed or logged; only counts leave this module.

Presets (pass the name as group_pattern):
- `pneumonia`: the pediatric pneumonia chest X-ray set (Kermany et al., Cell 2018; Mendeley
  rscbjbr9sj, Kaggle chest-xray-pneumonia). PNEUMONIA files are `person<N>_bacteria_<M>.jpeg` or
  `person<N>_virus_<M>.jpeg` (key `person<N>`, one child however many images and both kinds);
  NORMAL files are `IM-<NNNN>-<MMMM>.jpeg` and `NORMAL2-IM-<NNNN>-<MMMM>.jpeg` (key `IM-<NNNN>` or
  `NORMAL2-IM-<NNNN>`, the prefix kept because the two series number independently).
- `malaria`: the NIH malaria cells (cell_images/Parasitized, cell_images/Uninfected), named
  `C<slide>P<patient>ThinF_IMG_<date>_<time>_cell_<n>.png`, `C<slide>NThinF_...` or `C<slide>_thinF_...`;
  the key is everything before `ThinF`/`thinF` (e.g. `C100P61`), the smear the cells were cut from.
  Uninfected cells come from infected patients' smears too, so one group can hold both classes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from train.data.spec import SPLIT_NAMES

PNEUMONIA_GROUP_PATTERN = r"^((?:NORMAL2-)?IM-\d+|person\d+)[-_]"
MALARIA_GROUP_PATTERN = r"^(.+?)_?[Tt]hin[Ff]_"
GROUP_PRESETS = {"pneumonia": PNEUMONIA_GROUP_PATTERN, "malaria": MALARIA_GROUP_PATTERN}
# group_pattern=none turns off a loader's default grouping (the malaria cell folders group by slide by default).
NO_GROUPS = "none"


def resolve_group_pattern(group_pattern: str, default: str = "") -> str:
    """The regular expression a group_pattern value stands for: a preset's, the loader's default for "", or itself."""
    text = (group_pattern or "").strip()
    if not text:
        text = default
    if text.lower() == NO_GROUPS:
        return ""
    return GROUP_PRESETS.get(text.lower(), text)


def compile_group_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a group pattern; ValueError in one line when it is not a regex or has no capturing group."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"group_pattern {pattern!r} is not a valid regular expression ({error})") from None
    if compiled.groups < 1:
        raise ValueError(
            f"group_pattern {pattern!r} has no capturing group; put (...) around the part of the file name that "
            f"names the patient or slide, or use a preset: {', '.join(GROUP_PRESETS)}"
        )
    return compiled


def group_ids(paths: Sequence[str | Path], pattern: str) -> np.ndarray:
    """One integer group id per file, from the first group of `pattern` searched in the file name.

    Every name must match: a file without a key could put a patient in two splits. The error gives
    counts only, since file names carry the keys.
    """
    compiled = compile_group_pattern(pattern)
    keys = []
    for path in paths:
        match = compiled.search(Path(path).name)
        keys.append(match.group(1) if match and match.group(1) else None)
    unmatched = sum(key is None for key in keys)
    if unmatched:
        raise ValueError(
            f"group_pattern {pattern!r} finds no patient or slide key in {unmatched} of {len(keys)} file names; "
            "change it so that its first group (...) matches in every file name, or pass group_pattern=none"
        )
    if not keys:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.array(keys, dtype=object).astype(str), return_inverse=True)[1].reshape(-1).astype(np.int64)


def groups_per_split(groups: np.ndarray, split_ids: np.ndarray) -> dict[str, int]:
    """Number of distinct groups in each split (train, val, test)."""
    groups, split_ids = np.asarray(groups), np.asarray(split_ids)
    return {name: int(len(np.unique(groups[split_ids == index]))) for index, name in enumerate(SPLIT_NAMES)}


def groups_in_several_splits(groups: np.ndarray, split_ids: np.ndarray) -> int:
    """How many groups have examples in more than one split."""
    pairs = np.unique(np.stack([np.asarray(groups), np.asarray(split_ids)], axis=1), axis=0)
    if len(pairs) == 0:
        return 0
    _, splits_per_group = np.unique(pairs[:, 0], return_counts=True)
    return int(np.sum(splits_per_group > 1))
