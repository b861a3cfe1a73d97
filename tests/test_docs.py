"""The docs say what the code does: reads README.md, docs/*.md and CONTRIBUTING.md and checks their tables, commands, links and markers against the settings models, Makefile, modules and the tests the markers name; writes nothing."""

from __future__ import annotations

import ast
import copy
import functools
import re
import shlex
import subprocess
from itertools import pairwise
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from train.settings import MainSettings, coerce

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
TRAINING = (REPO_ROOT / "docs" / "TRAINING.md").read_text()
DATASETS = (REPO_ROOT / "docs" / "DATASETS.md").read_text()
README_MAX_LINES = 150


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


def test_main_parameter_table_lists_every_setting_with_its_default():
    rows = markdown_table_after(TRAINING, "Parameters of the `main` entry point")
    documented = {name: default for name, default, *_ in rows}
    assert list(documented) == list(MainSettings.model_fields), "docs/TRAINING.md's parameter table drifted"
    for name, default in documented.items():
        shown = "" if default == "empty" else default
        assert coerce(MainSettings, name, shown) == MainSettings.defaults()[name], name


@pytest.mark.parametrize("name", list(MainSettings.model_fields))
def test_every_main_setting_has_help_text(name):
    assert len(MainSettings.model_fields[name].description or "") > 10, name
    assert re.search(rf"\| `{name}` \|", TRAINING), f"{name} is missing from docs/TRAINING.md's parameter table"


# Every command the docs show names things that exist.

DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
DOCUMENTS = [REPO_ROOT / "README.md", *DOCS, REPO_ROOT / "CONTRIBUTING.md"]


def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, marker comment on the line before the fence, text) of every ```bash block."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() != "```bash":
            index += 1
            continue
        before = lines[index - 1].strip() if index else ""
        marker = before[4:-3].strip() if before.startswith("<!--") and before.endswith("-->") else ""
        end = next(end for end in range(index + 1, len(lines)) if lines[end].strip() == "```")
        blocks.append((index + 1, marker, "\n".join(line.strip() for line in lines[index + 1 : end]) + "\n"))
        index = end + 1
    return blocks


def block_commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped, `&&`/`;`/`|` chains split,
    a here-document kept with the command that reads it (after a newline)."""
    lines = block.replace("\\\n", " ").splitlines()
    found, index = [], 0
    while index < len(lines):
        line = re.sub(r"(^|\s)#.*$", "", lines[index]).strip()
        index += 1
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            end = next(end for end in range(index, len(lines)) if lines[end].strip() == heredoc.group(1))
            body, index = "\n".join(lines[index:end]), end + 1
            line = line[: heredoc.start()] + "\n" + body
        found += [part.strip() for part in re.split(r"\s(?:&&|\|\||;|\|)\s", line) if part.strip()]
    return [re.sub(r"\s&$", "", command) for command in found]


def commands(text: str) -> list[str]:
    """Every command of the bash blocks of a document."""
    return [command for _, _, block in code_blocks(text) for command in block_commands(block)]


def entry_point_settings():
    from train.settings import ENTRY_POINT_SETTINGS

    return ENTRY_POINT_SETTINGS


@functools.cache
def makefile_rules() -> dict[str, tuple[list[str], str]]:
    """target -> (prerequisites, recipe text with continuation lines joined) for every rule of the Makefile."""
    rules: dict[str, tuple[list[str], str]] = {}
    target = None
    for line in (REPO_ROOT / "Makefile").read_text().replace("\\\n", " ").splitlines():
        rule = re.match(r"^([A-Za-z][\w-]*)\s*:(?!=)(.*)$", line)
        if rule:
            target = rule.group(1)
            rules[target] = (rule.group(2).split(), "")
        elif line.startswith("\t") and target:
            prerequisites, recipe = rules[target]
            rules[target] = (prerequisites, recipe + line.strip() + "\n")
        elif line.strip() and not line.startswith("#"):
            target = None
    return rules


def bench_flags(script: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text()))


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
def test_every_make_target_python_module_and_benchmark_flag_exists(document):
    import importlib.util

    targets = set(makefile_rules())
    for command in commands(document.read_text()):
        for words in re.findall(r"(?:^|[;&|(]\s*|\$\(|=\S*\s+)make\s+([^#;&|)\"]*)", command):
            for target in [word for word in words.split() if not word.startswith("-") and "=" not in word]:
                assert target in targets, f"{document.name}: make has no target {target!r}: {command}"
        for module in re.findall(r"python\S*\s+-m\s+([\w.]+)", command):
            if module in ("pip", "venv", "pytest", "mlflow"):
                continue
            assert importlib.util.find_spec(module) is not None, f"{document.name}: no module {module!r}: {command}"
        for script, arguments in re.findall(r"python\S*\s+(bench/\w+\.py)([^\n]*)", command):
            assert (REPO_ROOT / script).is_file(), f"{document.name}: no script {script}"
            unknown = set(re.findall(r"(--[\w-]+)", arguments)) - bench_flags(REPO_ROOT / script)
            assert not unknown, f"{document.name}: {script} has no flag {sorted(unknown)}"


# Every bash block is run by the tests its `checked by:` marker names, or `needs:` what a test machine lacks.

HARDWARE = ("GPU", "Docker engine", "AWS account", "network", "download")
# Modules whose command line takes a subcommand first (`python -m train tune ...`).
SUBCOMMAND_MODULES = ("train", "mlflow_server", "aws")
SETUP_COMMANDS = ("export", "source", "cd")
# Programs that only filter what the command before them printed (after a pipe).
FILTER_COMMANDS = ("grep", "head", "tail", "sed", "sort", "wc", "jq")
# Debian tools that the tests run themselves.
TOOL_COMMANDS = ("storescu", "dciodvfy", "dcmdump")


def quoted(word: str) -> str:
    return rf"[\"']{re.escape(word)}[\"']"


def make_runs(target: str, source: str) -> bool:
    """Whether `source` runs `make <target>`: in a shell line, or as an argument list such as ["make", "demo"]."""
    shell = re.search(rf"(?<![\w-])make\s+(?:-\S+\s+|\S+=\S*\s+)*{re.escape(target)}(?![\w-])", source)
    return bool(shell) or bool(re.search(quoted("make"), source) and re.search(quoted(target), source))


def parameter_part(name: str) -> tuple[str, str]:
    """`name=value` (a -P argument or a keyword) or a "name": key, not a Python assignment `name = ...`."""
    return f"parameter {name}", rf"\b{name}(?:=|[\"']\s*:)"


def python_parts(words: list[str]) -> list[tuple[str, str]] | None:
    """What a test must contain to run `python -m module [subcommand] [--flags] [-P name=value]`."""
    if "-m" not in words:
        script = next((word for word in words[1:] if word.endswith(".py")), None)
        return [(script, re.escape(script))] if script and "-c" not in words else None
    module = words[words.index("-m") + 1]
    if module in ("pip", "venv"):
        return None
    rest = words[words.index("-m") + 2 :]
    parts = [
        (
            f"python -m {module}",
            rf"-m\s+{re.escape(module)}\b|{quoted('-m')},\s*{quoted(module)}"
            rf"|from\s+{re.escape(module)}(?:\.__main__)?\s+import\s+[^\n]*\bmain\b",
        )
    ]
    if module in SUBCOMMAND_MODULES and rest and not rest[0].startswith("-"):
        parts.append((f"subcommand {rest[0]}", rf"{quoted(rest[0])}|-m\s+{re.escape(module)}\s+{rest[0]}\b"))
    parts += [(flag, rf"(?<![\w-]){re.escape(flag)}\b") for flag in rest if re.fullmatch(r"--[a-z][\w-]*", flag)]
    parts += [parameter_part(value.split("=")[0]) for flag, value in pairwise(rest) if flag == "-P"]
    return parts


def mlflow_parts(words: list[str]) -> list[tuple[str, str]] | None:
    if words[1:2] == ["run"]:
        parts = [("mlflow run", r"mlflow[\"',\s]+run\b")]
        entry = next((value for flag, value in pairwise(words) if flag in ("-e", "--entry-point")), None)
        if entry:
            parts.append((f"-e {entry}", rf"(?:-e|--entry-point)[\"',\s=]+{re.escape(entry)}\b"))
        return parts + [parameter_part(value.split("=")[0]) for flag, value in pairwise(words) if flag == "-P"]
    if words[1:2] == ["ui"] or words[1:3] in (["models", "serve"], ["models", "generate-dockerfile"]):
        return [(" ".join(words[:3]), r"[\"',\s]+".join(words[1:3]) + r"\b")]
    return None


def curl_parts(command: str) -> list[tuple[str, str]]:
    """The URL path, its query parameters, form fields and the keys of a JSON body's "params"."""
    words = shlex.split(command.split("\n")[0])
    url = urlsplit(next(word for word in words if word.startswith("http")))
    parts = [(url.path, re.escape(url.path) + r"\b")]
    names = list(parse_qs(url.query))
    names += [value.split("=")[0] for flag, value in pairwise(words) if flag in ("-F", "--form")]
    params = re.search(r"\"params\":\s*\{([^}]*)\}", command)
    names += re.findall(r"\"(\w+)\":", params.group(1)) if params else []
    return parts + [(f"field {name}", quoted(name)) for name in names]


def command_parts(command: str) -> list[tuple[str, str]] | None:
    """(what, regex) pairs that the source of a test running `command` contains; [] for shell set-up lines,
    None for a command no rule knows (a block of such commands needs a `needs:` marker)."""
    inner = re.fullmatch(r"eval\s+\"\$\((.*)\)\"", command)
    command = inner.group(1) if inner else command
    command = re.sub(r"^(?:\w+=(?:\"[^\"]*\"|'[^']*'|\S*)\s+)+", "", command)
    words = shlex.split(command.split("\n")[0])
    program = Path(words[0]).name
    if program in SETUP_COMMANDS or program in FILTER_COMMANDS:
        return []
    if program == "make":
        targets = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
        return [(f"make {target}", target) for target in targets]
    if re.fullmatch(r"python3?(\.\d+)?", program):
        return python_parts(words)
    if program == "mlflow":
        return mlflow_parts(words)
    if program == "curl":
        return curl_parts(command)
    if program == "promtool":
        # `promtool test rules FILE`: the test passes the subcommand words and the file to promtool.
        return [("promtool", r"\bpromtool\b"), *((word, quoted(word)) for word in words[1:3])]
    if program in TOOL_COMMANDS:
        # A Debian tool the tests run as an argument list (["storescu", ...]).
        return [(program, quoted(program))]
    return None


def found_in(part: tuple[str, str], source: str) -> bool:
    what, pattern = part
    return make_runs(pattern, source) if what.startswith("make ") else bool(re.search(pattern, source))


@functools.cache
def module_definitions(path: Path) -> tuple[dict[str, ast.AST], list[str]]:
    """A test module's top-level functions, classes, assignments and imports by name, and the tests/ helper
    modules it imports."""
    tree = ast.parse(path.read_text())
    definitions: dict[str, ast.AST] = {}
    helpers = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            definitions.update({target.id: node for target in targets if isinstance(target, ast.Name)})
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            local = [name for name in names if name and (path.parent / f"{name}.py").is_file()]
            helpers += local
            if not local:  # A name imported from a tests/ helper resolves to its definition there.
                definitions.update({(alias.asname or alias.name).split(".")[0]: node for alias in node.names})
    return definitions, helpers


def code_of(node: ast.AST) -> str:
    """A definition's code (decorators included) without comments and docstrings: what it runs, not what it says."""
    node = copy.deepcopy(node)
    for child in ast.walk(node):
        body = getattr(child, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            child.body = body[1:] or [ast.Pass()]
    return ast.unparse(node)


def names_used(node: ast.AST) -> set[str]:
    """Names a definition refers to, and the fixtures it takes."""
    used = {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}
    return used | {child.arg for child in ast.walk(node) if isinstance(child, ast.arg)}


@functools.cache
def source_run_by(reference: str) -> str:
    """The source a marker's reference runs: a test function with every helper, constant and fixture it reaches
    (in its module, the tests/ helper modules it imports and conftest.py), or a whole file such as .ci/run;
    then what that source runs in turn (Makefile recipes, MLproject commands)."""
    path_text, _, name = reference.partition("::")
    path = REPO_ROOT / path_text
    if not path.is_file():
        raise LookupError(f"{reference}: no such file")
    if not name:
        source = path.read_text()
    else:
        definitions, helpers = module_definitions(path)
        if name not in definitions:
            raise LookupError(f"{reference}: no such test")
        # Names resolve in the test's module first, then in the helper modules it imports, then in conftest.py.
        scopes = [definitions] + [module_definitions(path.parent / f"{helper}.py")[0] for helper in helpers]
        scopes.append(module_definitions(REPO_ROOT / "tests" / "conftest.py")[0])
        chunks, seen, todo = [], set(), [name]
        while todo:
            wanted = todo.pop()
            scope = next((scope for scope in scopes if wanted in scope), None)
            if wanted in seen or scope is None:
                continue
            seen.add(wanted)
            node = scope[wanted]
            chunks.append(code_of(node))
            todo += sorted(names_used(node))
        source = "\n".join(chunks)
    return with_what_it_runs(source)


@functools.cache
def mlproject_commands() -> dict[str, str]:
    import yaml

    entry_points = yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]
    return {name: entry_point["command"] for name, entry_point in entry_points.items()}


def entry_points_run(source: str) -> set[str]:
    """The MLproject entry points `source` runs with `mlflow run` (no -e: main)."""
    if not re.search(r"mlflow[\"',\s]+run\b", source):
        return set()
    named = set(re.findall(r"(?:-e|--entry-point)[\"',\s=]+(\w+)", source)) & set(mlproject_commands())
    return named or {"main"}


def with_what_it_runs(source: str) -> str:
    """`source` followed by what it runs in turn: the recipe (and prerequisites) of each Makefile target, and
    the MLproject command of each entry point run with `mlflow run`."""
    expanded: set[str] = set()
    while True:
        targets = [target for target in makefile_rules() if target not in expanded and make_runs(target, source)]
        entries = sorted(entry for entry in entry_points_run(source) if f"-e {entry}" not in expanded)
        if not targets and not entries:
            return source
        for target in targets:
            expanded.add(target)
            prerequisites, recipe = makefile_rules()[target]
            source += "".join(f"\nmake {prerequisite}" for prerequisite in prerequisites) + "\n" + recipe
        for entry in entries:
            expanded.add(f"-e {entry}")
            source += "\n" + mlproject_commands()[entry]


def marker_problems(document: Path) -> list[str]:
    """What is wrong with the checked-by/needs markers of a document's bash blocks, one line each."""
    problems = []
    for line, marker, block in code_blocks(document.read_text()):
        where = f"{document.name}:{line}"
        runs = block_commands(block)
        if marker.startswith("needs:"):
            benchmark = runs and all(re.match(r"\S*python\S*\s+bench/\w+\.py", command) for command in runs)
            if not benchmark and not any(word in marker for word in HARDWARE):
                problems.append(f"{where}: needs something a test machine can have: {marker}")
            continue
        if not marker.startswith("checked by:"):
            problems.append(f"{where}: no checked-by/needs marker before the block starting {runs[:1]}")
            continue
        references = [reference.strip() for reference in marker.removeprefix("checked by:").split(",")]
        try:
            sources = {reference: source_run_by(reference) for reference in references}
        except LookupError as missing:
            problems.append(f"{where}: {missing}")
            continue
        used = set()
        for command in runs:
            parts = command_parts(command)
            if parts is None:
                problems.append(f"{where}: no test can be said to run {command.splitlines()[0]!r}: use needs:")
                continue
            for part in parts:
                running = {reference for reference, source in sources.items() if found_in(part, source)}
                used |= running
                if not running:
                    problems.append(f"{where}: none of {references} runs {part[0]!r} of {command.splitlines()[0]!r}")
        problems += [f"{where}: {reference} runs none of the block's commands" for reference in set(references) - used]
    return problems


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_command_block_is_run_by_the_tests_it_names_or_says_what_it_needs(document):
    """`checked by:` names tests whose source (with the helpers, fixtures and make recipes they reach) holds each
    command's distinctive part: the entry point and -P names of `mlflow run`, the make target, the module,
    subcommand and flags of `python -m`, `mlflow models serve`, the path and parameters of a curl request."""
    problems = marker_problems(document)
    assert not problems, "\n".join(problems)


def test_the_marker_check_catches_a_test_that_does_not_run_the_block(tmp_path):
    """A test that exists but runs something else does not check a block."""
    page = tmp_path / "PAGE.md"
    page.write_text(
        "<!-- checked by: tests/test_docs.py::test_make_lint_passes -->\n```bash\nmake lint\nmake demo\n```\n"
        "<!-- checked by: tests/test_cli.py::test_bad_settings_exit_2_with_one_line -->\n```bash\n"
        "python -m train main --model nope\nmlflow run . -e evaluate -P model_uri=models:/x\n```\n"
        "<!-- needs: a quiet afternoon -->\n```bash\nmake demo\n```\n"
        "```bash\nmake lint\n```\n"
    )
    problems = marker_problems(page)
    assert any("runs 'make demo'" in problem for problem in problems), problems
    assert any("runs 'mlflow run'" in problem for problem in problems), problems
    assert any("runs '-e evaluate'" in problem for problem in problems), problems
    assert any("needs something a test machine can have" in problem for problem in problems), problems
    assert any("no checked-by/needs marker" in problem for problem in problems), problems
    assert not any("python -m train" in problem for problem in problems), problems


# The README is a front page.


def test_readme_is_a_front_page_that_links_every_document():
    assert len(README.splitlines()) <= README_MAX_LINES
    for document in [*DOCS, REPO_ROOT / "CONTRIBUTING.md"]:
        relative = document.relative_to(REPO_ROOT).as_posix()
        assert f"]({relative})" in README, f"README.md does not link {relative}"


def test_readme_layout_table_names_every_folder_and_train_subpackage():
    rows = {row[0]: row[1] for row in markdown_table_after(README, "## Layout")}
    folders = {path.name for path in REPO_ROOT.iterdir() if path.is_dir() and not path.name.startswith(".")}
    tracked = {line.split("/")[0] for line in tracked_files() if "/" in line}
    named = " ".join(rows)
    missing = sorted(f"{folder}/" for folder in folders & tracked if not re.search(rf"(?<![\w/]){folder}/", named))
    assert not missing, f"README.md's layout table lacks {missing}"
    train_row = next(text for cell, text in rows.items() if cell.startswith("train/"))
    for package in sorted(path.parent.name for path in (REPO_ROOT / "train").glob("*/__init__.py")):
        assert f"`{package}/`" in train_row, f"README.md's train/ row does not name train/{package}/"


def test_readme_names_every_debian_package_that_ci_installs():
    packages = re.findall(r"missing\+=\(([\w.+-]+)\)", (REPO_ROOT / ".ci" / "run").read_text())
    assert packages, ".ci/run no longer lists its Debian packages as missing+=(name)"
    for package in packages:
        assert f"`{package}`" in README, f"README.md does not name the Debian package {package}"


@functools.cache
def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return listing.stdout.splitlines()


def test_no_tracked_file_names_a_path_outside_the_repository():
    outside = ("../" + "shared", "../" + ".library")
    offenders = []
    for name in tracked_files():
        path = REPO_ROOT / name
        if path.is_file() and path.suffix not in (".png", ".jpg", ".dcm"):
            text = path.read_text(errors="replace")
            offenders += [f"{name}: {word}" for word in outside if word in text]
    assert not offenders, offenders


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors of a document's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_and_anchor_resolves(document):
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path_text, _, anchor = target.partition("#")
        path = (document.parent / path_text).resolve() if path_text else document
        assert path.exists(), f"{document.name}: link to a missing {target}"
        if anchor and path.suffix == ".md":
            assert anchor in markdown_anchors(path.read_text()), f"{document.name}: no heading for {target}"


def test_make_lint_passes():
    """`make lint`, as CONTRIBUTING.md shows it (ruff check and ruff format --check)."""
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
    """docs/DATASETS.md says 75/10/15 for TFDS malaria: the default settings give those split sizes."""
    import tensorflow_datasets as tfds

    from train.job.stages import load_data, split_counts

    stated = re.search(r"seeded, stratified (\d+)/(\d+)/(\d+) train/val/test split", DATASETS)
    assert stated, "docs/DATASETS.md no longer states the malaria split"
    with tfds.testing.mock_data(num_examples=200, data_dir=str(tmp_path)):
        data = load_data(MainSettings.from_dict({"dataset": "malaria", "data_dir": str(tmp_path), "image_size": "32"}))
    counts = split_counts(data)
    shares = [round(100 * counts[name] / sum(counts.values())) for name in ("train", "val", "test")]
    assert shares == [int(value) for value in stated.groups()]
