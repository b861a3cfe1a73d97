"""The coded concept of each class a model answers for: reads a ClassifierConfig's stored concepts, writes nothing (standard library only).

A dataset whose labels have standard codes (ChestX-ray14: SNOMED CT) gives each class a concept (code value,
coding scheme designator, code meaning, and where the code was looked up); the logged model keeps them in
classifier.json. Classes without one (imagefolder, synthetic, models logged before concepts existed) get medimg's
private code `F<n>` in the private scheme 99MEDIMG (PS3.16 section 8.2: a "99" designator is a private scheme),
n being the output's 1-based position, as every SR written before concepts existed coded them. The PACS worker's SR,
the app's answer and the model card all read concepts through `output_concepts`, so they name the same concept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from serve.contract import CONCEPT_CODE, CONCEPT_MEANING, CONCEPT_SCHEME

PRIVATE_SCHEME = "99MEDIMG"
PRIVATE_SCHEME_NAME = "medimg findings and model outputs"
PRIVATE_SOURCE = "medimg private code: no standard concept is stored for this class"
# DICOM limits: a Code Value (SH) holds 16 characters, a Code Meaning (LO) 64.
MAX_CODE_VALUE = 16
MAX_CODE_MEANING = 64


@dataclass(frozen=True)
class Concept:
    """A coded concept: code value, coding scheme designator (SCT, DCM, 99MEDIMG), code meaning, and its source."""

    value: str
    scheme: str
    meaning: str
    source: str = ""

    def __post_init__(self) -> None:
        if not self.value or len(self.value) > MAX_CODE_VALUE:
            raise ValueError(f"a code value has 1 to {MAX_CODE_VALUE} characters, got {self.value!r}")
        if not self.scheme or not self.meaning or len(self.meaning) > MAX_CODE_MEANING:
            raise ValueError(f"code {self.value}: a scheme and a meaning of at most {MAX_CODE_MEANING} characters")

    @property
    def is_private(self) -> bool:
        return self.scheme == PRIVATE_SCHEME

    def stored(self) -> dict[str, str]:
        """The form classifier.json keeps (with the source)."""
        return asdict(self)

    def answered(self) -> dict[str, str]:
        """The form the app's JSON answer gives (serve.contract's concept keys)."""
        return {CONCEPT_CODE: self.value, CONCEPT_SCHEME: self.scheme, CONCEPT_MEANING: self.meaning}

    def label(self) -> str:
        """One line for people: `SCT 36118008 Pneumothorax`."""
        return f"{self.scheme} {self.value} {self.meaning}"

    @classmethod
    def from_stored(cls, stored: Mapping[str, str]) -> Concept:
        return cls(str(stored["value"]), str(stored["scheme"]), str(stored["meaning"]), str(stored.get("source", "")))


def private_concept(position: int, name: str) -> Concept:
    """medimg's private code of the output at 0-based `position`: F1, F2, ... with the class name as its meaning."""
    return Concept(f"F{position + 1}", PRIVATE_SCHEME, name[:MAX_CODE_MEANING], PRIVATE_SOURCE)


def output_concepts(outputs: Sequence[str], stored: Mapping[str, Mapping[str, str]] | None) -> list[Concept]:
    """The concept of each output: the stored one of its class, else its private code."""
    stored = stored or {}
    return [
        Concept.from_stored(stored[name]) if name in stored else private_concept(position, name)
        for position, name in enumerate(outputs)
    ]


def concepts_of(config) -> list[Concept]:
    """The concepts of a ClassifierConfig's outputs (serve.pyfunc.ClassifierConfig; older ones have none stored)."""
    return output_concepts(config.output_columns, getattr(config, "concepts", None))
