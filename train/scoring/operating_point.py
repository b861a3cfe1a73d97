"""Parses an operating-point rule (`youden`, `sensitivity:x`, `specificity:x`, a threshold); standard library only, reads and writes nothing."""

from __future__ import annotations

# The fixed specificity at which evaluate and training report sensitivity (evaluate's `specificity` default).
REPORTED_SPECIFICITY = 0.9


def parse_operating_point(rule: str) -> tuple[str, float]:
    """('youden', 0) | ('sensitivity', x) | ('specificity', x) | ('threshold', x); ValueError naming the valid forms."""
    text = str(rule).strip().lower()
    valid = "use youden, sensitivity:0.95, specificity:0.90 or a threshold between 0 and 1"
    if text == "youden":
        return "youden", 0.0
    kind, _, value = text.partition(":")
    try:
        number = float(value if value else kind)
    except ValueError:
        raise ValueError(f"{rule!r} is not understood; {valid}") from None
    if value and kind not in ("sensitivity", "specificity"):
        raise ValueError(f"{rule!r} is not understood; {valid}")
    if not 0.0 < number < 1.0 and not (not value and 0.0 <= number <= 1.0):
        raise ValueError(f"{rule!r} needs a value between 0 and 1; {valid}")
    return (kind, number) if value else ("threshold", number)
