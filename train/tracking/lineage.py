"""The one same-data check: reads the dataset name, task and content digest of runs and loaded datasets, refuses a mismatch in one line.

`evaluate` (the scored split against the model's training run), `pipeline` (challenger against
champion) and `promote` (candidates against the champion) all compare data through `DataIdentity`;
a test split is only a test split when the model never saw its images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serve.common import ConfigError
from train.tracking.names import DATASET_DIGEST_TAG, DATASET_TAG, TASK_TAG


@dataclass(frozen=True)
class DataIdentity:
    """What a model was trained on (or a split was drawn from): dataset name, task and content digest."""

    dataset: str = ""
    task: str = ""
    digest: str = ""

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], params: Mapping[str, str] | None = None) -> DataIdentity:
        """From a run's tags; a run logged before the tag existed falls back to its `dataset` param."""
        dataset = tags.get(DATASET_TAG) or (params or {}).get("dataset", "")
        return cls(dataset, tags.get(TASK_TAG, ""), tags.get(DATASET_DIGEST_TAG, ""))

    @classmethod
    def of(cls, data) -> DataIdentity:
        """From a loaded dataset (anything with name, task and digest)."""
        return cls(data.name, data.task, data.digest)

    def tags(self) -> dict[str, str]:
        return {DATASET_TAG: self.dataset, TASK_TAG: self.task, DATASET_DIGEST_TAG: self.digest}

    def describe(self) -> str:
        return (
            f"{self.dataset or 'unknown dataset'}/{self.task or 'unknown task'} (digest {self.digest[:12] or 'none'})"
        )

    def differences(self, reference: DataIdentity) -> list[str]:
        """'dataset 'a' (reference 'b')' for each field both know and that differs; a field either lacks is not compared."""
        found = []
        for key in ("dataset", "task", "digest"):
            mine, theirs = getattr(self, key), getattr(reference, key)
            if mine and theirs and mine != theirs:
                shown = (mine[:12], theirs[:12]) if key == "digest" else (repr(mine), repr(theirs))
                found.append(f"{key} {shown[0]} (not {shown[1]})")
        return found

    def same_as(self, reference: DataIdentity) -> bool:
        return not self.differences(reference)


def check_same_data(found: DataIdentity, reference: DataIdentity, *, what: str, fix: str) -> None:
    """ConfigError `<what>: <differences>; <fix>` when `found` is other data than `reference`."""
    differences = found.differences(reference)
    if differences:
        raise ConfigError(f"{what}: {'; '.join(differences)}; {fix}")
