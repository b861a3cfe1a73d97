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


# Every command the docs show names things that exist.

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "CONTRIBUTING.md"]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(marker comment before the block, the block's text) for every ```bash block; continuation lines joined."""
    blocks = []
    for match in re.finditer(r"(?:<!--(.*?)-->\n)?```bash\n(.*?)```", text, re.S):
        blocks.append(((match.group(1) or "").strip(), match.group(2).replace("\\\n", " ")))
    return blocks


def commands(text: str) -> list[str]:
    """Every command line of the bash blocks, without its trailing comment."""
    lines = [re.sub(r"(^|\s)#.*$", "", line).strip() for _, block in code_blocks(text) for line in block.splitlines()]
    return [line for line in lines if line]


def entry_point_settings():
    from train.settings import ENTRY_POINT_SETTINGS

    return ENTRY_POINT_SETTINGS


def makefile_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return {name for name in re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_mlflow_run_names_an_entry_point_and_its_parameters(document):
    settings = entry_point_settings()
    for command in commands(document.read_text()):
        if "mlflow run" not in command:
            continue
        entry = re.search(r"\s-e\s+(\S+)", command)
        name = entry.group(1) if entry else "main"
        assert name in settings, f"{document.name}: unknown entry point {name!r} in: {command}"
        for parameter in re.findall(r"-P\s+([A-Za-z_]+)=", command):
            assert parameter in settings[name].model_fields, f"{document.name}: {name} has no parameter {parameter!r}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_make_target_and_python_module_exists(document):
    import importlib.util

    targets = makefile_targets()
    for command in commands(document.read_text()):
        for words in re.findall(r"(?:^|[;&|(]\s*|\$\(|=\S*\s+)make\s+([^#;&|)\"]*)", command):
            for target in [word for word in words.split() if not word.startswith("-") and "=" not in word]:
                assert target in targets, f"{document.name}: make has no target {target!r}: {command}"
        for module in re.findall(r"python\S*\s+-m\s+([\w.]+)", command):
            if module in ("pip", "venv", "pytest", "mlflow"):
                continue
            assert importlib.util.find_spec(module) is not None, f"{document.name}: no module {module!r}: {command}"


def test_every_readme_command_block_is_run_by_a_test_or_says_what_it_needs():
    """A block is either checked (the tests named exist) or needs what a test machine cannot have."""
    hardware = ("GPU", "Docker engine", "AWS account", "network", "download")
    for marker, block in code_blocks(README):
        first = block.strip().splitlines()[0]
        assert marker.startswith(("checked by:", "needs:")), f"README block without a checked-by/needs marker: {first}"
        if marker.startswith("needs:"):
            assert any(word in marker for word in hardware), f"{first}: needs something a test could have: {marker}"
            continue
        for reference in marker.removeprefix("checked by:").split(","):
            reference = reference.strip()
            if reference == ".ci/run":
                assert (REPO_ROOT / ".ci" / "run").is_file()
                continue
            path, _, test = reference.partition("::")
            assert re.search(rf"^def {test}\(", (REPO_ROOT / path).read_text(), re.M), f"{reference} does not exist"


def test_make_lint_passes():
    """`make lint`, as the README's Development section shows it (ruff check and ruff format --check)."""
    import subprocess
    import sys

    result = subprocess.run(
        ["make", "-s", "lint", f"BIN={Path(sys.executable).parent}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_documented_malaria_split_is_the_one_training_uses(tmp_path):
    """README says 75/10/15 for TFDS malaria: the default settings give those split sizes."""
    import tensorflow_datasets as tfds

    from train.job.stages import load_data, split_counts
    from train.settings import MainSettings

    stated = re.search(r"seeded, stratified (\d+)/(\d+)/(\d+) train/val/test split", README)
    assert stated, "README no longer states the malaria split"
    with tfds.testing.mock_data(num_examples=200, data_dir=str(tmp_path)):
        data = load_data(MainSettings.from_dict({"dataset": "malaria", "data_dir": str(tmp_path), "image_size": "32"}))
    counts = split_counts(data)
    shares = [round(100 * counts[name] / sum(counts.values())) for name in ("train", "val", "test")]
    assert shares == [int(value) for value in stated.groups()]
