"""The root MLproject and docker/MLproject, read with MLflow's own loader: same entry points, every parameter used."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from mlflow.projects import env_type
from mlflow.projects._project_spec import load_project

REPO_ROOT = Path(__file__).resolve().parents[1]

ROOT_PROJECT = load_project(str(REPO_ROOT))
DOCKER_PROJECT = load_project(str(REPO_ROOT / "docker"))
PROJECTS = {"root": ROOT_PROJECT, "docker": DOCKER_PROJECT}


def entry_points(project) -> dict:
    # MLflow keeps the parsed entry points in a private dict; there is no public listing.
    return project._entry_points


def describe(entry_point) -> dict:
    """Everything a user can observe about an entry point, with the command's line breaks normalised."""
    return {
        "parameters": {name: (parameter.type, parameter.default) for name, parameter in entry_point.parameters.items()},
        "command": " ".join(entry_point.command.split()),
    }


def all_entry_points():
    return [
        pytest.param(label, name, entry_point, id=f"{label}:{name}")
        for label, project in PROJECTS.items()
        for name, entry_point in entry_points(project).items()
    ]


def test_projects_have_the_expected_environments():
    assert ROOT_PROJECT.env_type == env_type.CONDA
    assert DOCKER_PROJECT.env_type == env_type.DOCKER
    assert ROOT_PROJECT.name == DOCKER_PROJECT.name == "medimg"


def test_docker_project_declares_the_same_entry_points_as_the_root_project():
    assert set(entry_points(DOCKER_PROJECT)) == set(entry_points(ROOT_PROJECT))
    assert "main" in entry_points(ROOT_PROJECT)


@pytest.mark.parametrize("name", sorted(entry_points(ROOT_PROJECT)))
def test_docker_entry_point_matches_root_parameters_defaults_and_command(name):
    root = describe(entry_points(ROOT_PROJECT)[name])
    docker = describe(entry_points(DOCKER_PROJECT).get(name))
    assert docker["parameters"] == root["parameters"], f"docker/MLproject entry point {name!r} drifted from MLproject"
    assert docker["command"] == root["command"], f"docker/MLproject command of {name!r} drifted from MLproject"


@pytest.mark.parametrize("label", sorted(PROJECTS))
def test_entry_points_declare_exactly_the_settings_fields_with_their_types_and_defaults(label):
    """train/settings/__init__.py is the one place a parameter is declared; the MLproject files must agree with it."""
    from train.settings import ENTRY_POINT_SETTINGS, coerce
    from train.settings.mlproject import mlproject_snippet

    declared = entry_points(PROJECTS[label])
    for name, settings in ENTRY_POINT_SETTINGS.items():
        assert name in declared, f"{label} MLproject lacks entry point {name}; add:\n{mlproject_snippet(settings)}"
        parameters = declared[name].parameters
        expected = settings.mlproject_parameters()
        hint = f"{label} MLproject entry point {name} drifted from {settings.__name__}; use:\n{mlproject_snippet(settings)}"
        assert list(parameters) == list(expected), hint
        for parameter_name, (kind, default) in expected.items():
            parameter = parameters[parameter_name]
            assert parameter.type == kind, hint
            assert coerce(settings, parameter_name, parameter.default) == coerce(settings, parameter_name, default), (
                hint
            )


@pytest.mark.parametrize(("label", "name", "entry_point"), all_entry_points())
def test_every_parameter_is_typed_defaulted_and_used_in_the_command(label, name, entry_point):
    placeholders = set(re.findall(r"{(\w+)}", entry_point.command))
    declared = set(entry_point.parameters)
    assert declared - placeholders == set(), f"{label} {name}: parameters never passed to the command"
    assert placeholders - declared == set(), f"{label} {name}: command placeholders without a parameter"
    for parameter in entry_point.parameters.values():
        assert parameter.type in {"string", "float", "path", "uri"}, f"{parameter.name}: unknown type {parameter.type}"
        assert parameter.default is not None, f"{label} {name}: parameter {parameter.name} has no default"


@pytest.mark.parametrize("label", sorted(PROJECTS))
def test_main_passes_every_parameter_as_a_flag_mirroring_its_name(label):
    main = entry_points(PROJECTS[label])["main"]
    command = " ".join(main.command.split())
    assert command.startswith("python -m train main ")
    for name in main.parameters:
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"(^|\s){re.escape(flag)} {{{name}}}(\s|$)", command), f"{flag} {{{name}}} missing"


def test_main_command_with_defaults_is_what_mlflow_runs():
    """MLflow substitutes and shell-quotes the defaults; empty strings must stay one (empty) argument."""
    main = entry_points(DOCKER_PROJECT)["main"]
    command = main.compute_command(user_parameters={}, storage_dir=None)
    arguments = shlex.split(command)
    assert arguments[:4] == ["python", "-m", "train", "main"]
    flags = dict(zip(arguments[4::2], arguments[5::2], strict=True))
    assert flags == {
        "--" + name.replace("_", "-"): str(parameter.default) for name, parameter in main.parameters.items()
    }


@pytest.mark.parametrize("name", sorted(entry_points(ROOT_PROJECT)))
def test_python_m_train_parses_every_parameter_mlflow_passes(name):
    """The real `python -m train` parser receives each parameter under its own name, with MLflow's value."""
    from train.__main__ import build_parser

    entry_point = entry_points(ROOT_PROJECT)[name]
    arguments = shlex.split(entry_point.compute_command(user_parameters={}, storage_dir=None))
    if arguments[:3] != ["python", "-m", "train"]:
        pytest.skip(f"{name} does not run python -m train")
    parsed = vars(build_parser().parse_args(arguments[3:]))
    assert parsed["command"] == arguments[3]
    for parameter in entry_point.parameters.values():
        assert parsed.get(parameter.name) == str(parameter.default), parameter.name


def test_the_committed_mlproject_files_are_what_the_settings_models_write(repo_root):
    """`python -m train mlproject --check`, as `make test` runs it: exit 0 while both files are current."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "train", "mlproject", "--check"], cwd=repo_root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_a_parameter_added_to_a_settings_model_but_not_written_makes_the_check_fail(tmp_path):
    """A new field of MainSettings that the committed files lack is stale in both; writing them fixes it."""
    from pydantic import Field, create_model

    from train.settings import ENTRY_POINT_SETTINGS, MainSettings, Number
    from train.settings.mlproject import FILES, render, stale_files

    for relative, header in FILES.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(render(header))
    assert stale_files(tmp_path) == []
    extended = create_model(
        "ExtendedMain",
        __base__=MainSettings,
        label_smoothing=(Number, Field(0.0, ge=0.0, lt=1.0, description="label smoothing of the loss")),
    )
    entry_points = {**ENTRY_POINT_SETTINGS, "main": extended}
    assert stale_files(tmp_path, entry_points) == ["MLproject", "docker/MLproject"]
    assert "label_smoothing: {type: float, default: 0.0}" in render(FILES["MLproject"], entry_points)
    assert "--label-smoothing {label_smoothing}" in " ".join(render(FILES["MLproject"], entry_points).split())
