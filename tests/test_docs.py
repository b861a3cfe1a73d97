"""The docs say what the code does: README tables and commands are checked against the settings models, Makefile and modules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from train.settings import MainSettings, coerce

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()


def markdown_table_after(text: str, heading_fragment: str) -> list[list[str]]:
    """The rows (cells without backticks) of the first table after the line containing `heading_fragment`."""
    lines = text[text.index(heading_fragment) :].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return rows[1:]


def test_readme_main_parameter_table_lists_every_setting_with_its_default():
    rows = markdown_table_after(README, "Parameters of the `main` entry point")
    documented = {name: default for name, default, *_ in rows}
    assert list(documented) == list(MainSettings.model_fields), "README's parameter table drifted from MainSettings"
    for name, default in documented.items():
        shown = "" if default == "empty" else default
        assert coerce(MainSettings, name, shown) == MainSettings.defaults()[name], name


@pytest.mark.parametrize("name", list(MainSettings.model_fields))
def test_every_main_setting_has_help_text(name):
    assert len(MainSettings.model_fields[name].description or "") > 10, name
    assert re.search(rf"\| `{name}` \|", README), f"{name} is missing from README's parameter table"
