"""The one rule that makes a label value positive (soft labels included); NumPy only, reads and writes nothing."""

from __future__ import annotations

import numpy as np

# A label value at or above this is positive: 1 of a 0/1 label, and a soft label of exactly 0.5 too.
POSITIVE_LABEL_AT = 0.5


def is_positive(labels) -> np.ndarray:
    """True where a label (a number, a row or an array of them) is positive; the only place that compares labels."""
    return np.asarray(labels) >= POSITIVE_LABEL_AT
