"""One contract, one resolver, one place per name: answer names and tag names are spelled once, imports go one way, models:/NAME means one version everywhere."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("train", "serve", "models", "aws", "mlflow_server", "bench")


def tracked_sources() -> dict[str, ast.Module]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {
        name: ast.parse((REPO_ROOT / name).read_text(), filename=name)
        for name in listed
        if name.split("/")[0] in PRODUCT and (REPO_ROOT / name).is_file()
    }


def string_literals(tree: ast.Module) -> list[tuple[int, str]]:
    """Every plain string constant of a module, docstrings and f-string fragments left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    fragments = {id(value) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for value in node.values}
    # Spark's binaryFile source names its columns `path` and `content`: its names, assigned to BINARY_* constants.
    foreign = {
        id(constant)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(
            name.id.startswith("BINARY_")
            for target in node.targets
            for name in ast.walk(target)
            if isinstance(name, ast.Name)
        )
        for constant in ast.walk(node.value)
    }
    # Logger names and the attribute names of getattr/hasattr are Python names, not data.
    python_names = {
        id(node.args[-1] if getattr(node.func, "id", "") in ("getattr", "hasattr") else node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and node.args
        and (
            getattr(node.func, "attr", "") == "getLogger"
            or (getattr(node.func, "id", "") in ("getattr", "hasattr") and len(node.args) >= 2)
        )
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") in ("getattr", "hasattr")
            and len(node.args) >= 2
        ):
            python_names.add(id(node.args[1]))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings | fragments | python_names | foreign
    ]


def contract_names() -> dict[str, str]:
    """The answer's column and parameter names, by constant, as serve/contract.py defines them."""
    import serve.contract as contract

    constants = [
        "IMAGE_COLUMN",
        "PREDICTED_COLUMN",
        "THRESHOLD_PREFIX",
        "FRAME_COLUMN",
        "EXPLAINED_CLASS_COLUMN",
        "OVERLAY_COLUMN",
        "EXPLAINED_INPUT_COLUMN",
        "THRESHOLD_PARAM",
        "EXPLAIN_PARAM",
        "EXPLAIN_CLASS_PARAM",
        "PATH_COLUMN",
        "SHA256_COLUMN",
        "ERROR_COLUMN",
        "MODEL_NAME_COLUMN",
        "MODEL_VERSION_COLUMN",
        "MODEL_ID_COLUMN",
    ]
    return {name: getattr(contract, name) for name in constants}


# Modules that produce or read answers: none of them may spell an answer name itself. (The app's JSON
# rejection field and log levels are called `error` too; that one common word is checked by definition only.)
ANSWER_MODULES = ("serve/", "train/batch/", "train/release/evaluate.py", "bench/")


def test_every_answer_name_is_defined_once_in_serve_contract():
    values = set(contract_names().values())
    defined = [
        f"{path}:{node.lineno} {node.targets[0].id}"
        for path, tree in tracked_sources().items()
        if path != "serve/contract.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.isupper()
        and isinstance(node.value, ast.Constant)
        and node.value.value in values
        # The feature name inside prepared TFRecords is a stored format; renaming it would orphan prepared folders.
        and f"{path}:{node.targets[0].id}" != "train/data/prepared.py:IMAGE_FEATURE"
    ]
    assert defined == [], "defined again outside serve/contract.py: " + ", ".join(defined)
    spelled = [
        f"{path}:{line} {value!r}"
        for path, tree in tracked_sources().items()
        if path.startswith(ANSWER_MODULES) and path != "serve/contract.py"
        for line, value in string_literals(tree)
        if value in values - {"error"}
    ]
    assert spelled == [], "import these names from serve.contract: " + ", ".join(spelled)


def test_every_tag_name_is_defined_once_in_train_tracking_names():
    found = [
        f"{path}:{line} {value!r}"
        for path, tree in tracked_sources().items()
        if path != "train/tracking/names.py"
        for line, value in string_literals(tree)
        if value.startswith(("medimg.", "mlflow.runName", "mlflow.note", "mlflow.experimentKind"))
        and path != "train/tracking/experiments.py"
    ]
    assert found == [], "use the constants of train/tracking/names.py: " + ", ".join(found)
    from train.tracking import names

    values = [value for key, value in vars(names).items() if key.isupper() and isinstance(value, str)]
    tags = [value for value in values if value.startswith("medimg.")]
    assert len(tags) == len(set(tags)), "two constants name the same tag"


# Import direction (DESIGN.md): the bottom module (serve.common) imports nothing of ours; models imports nothing
# of ours; serve imports models only; inside train, settings is the top of what it reads (data, scoring,
# tracking never import it), scoring and data never import release or job, and nothing imports release but the
# command line.
FORBIDDEN = {
    "serve.common": ("train", "serve.", "models", "aws", "mlflow_server"),
    "models": ("train", "serve", "aws", "mlflow_server"),
    "serve": ("train", "aws", "mlflow_server"),
    "train.data": ("train.job", "train.release", "train.scoring", "train.tuning", "train.batch", "train.settings"),
    "train.scoring": ("train.job", "train.release", "train.tuning", "train.batch", "train.settings"),
    "train.tracking": (
        "train.job",
        "train.release",
        "train.scoring",
        "train.data",
        "train.tuning",
        "train.settings",
    ),
    "train.job": ("train.release", "train.tuning", "train.batch"),
}


def imports_of(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_imports_go_one_way():
    wrong = []
    for path, tree in tracked_sources().items():
        module = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for owner, forbidden in FORBIDDEN.items():
            if module == owner or module.startswith(owner + "."):
                wrong += [f"{module} imports {name}" for name in imports_of(tree) if name.startswith(forbidden)]
    assert wrong == []


def test_train_has_at_most_six_modules_at_its_top_level():
    top = sorted(path.name for path in (REPO_ROOT / "train").glob("*.py"))
    assert len(top) <= 6, top


def test_no_dataset_name_is_spelled_outside_train_data():
    """Per-dataset facts live on the DatasetSpec; code elsewhere asks the spec, never the name (literals included)."""
    from train.data import available_datasets

    datasets = set(available_datasets())
    found = [
        f"{path}:{line} {value!r}"
        for path, tree in tracked_sources().items()
        if not path.startswith("train/data/")
        for line, value in string_literals(tree)
        if value in datasets
    ]
    assert found == [], "ask the dataset spec (train/data/) instead: " + ", ".join(found)


def test_no_dataset_name_is_compared_outside_train_data():
    """Per-dataset facts live on the DatasetSpec; code elsewhere asks the spec, never the name."""
    from train.data import available_datasets

    datasets = set(available_datasets())
    found = []
    for path, tree in tracked_sources().items():
        if path.startswith("train/data/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops
            ):
                sides = [node.left, *node.comparators]
                values = {side.value for side in sides if isinstance(side, ast.Constant)}
                values |= {
                    item.value
                    for side in sides
                    if isinstance(side, ast.Tuple | ast.List | ast.Set)
                    for item in side.elts
                    if isinstance(item, ast.Constant)
                }
                if values & datasets:
                    found.append(f"{path}:{node.lineno}")
    assert found == []


# models:/NAME means one version, whichever command reads it.


@pytest.fixture(scope="module")
def two_versions(registered_model, tmp_path_factory):
    """A copy of the served model's store with a second version of the same model; @champion stays on version 1."""
    from mlflow.tracking import MlflowClient
    from serving_helpers import MODEL_NAME

    source = Path(registered_model["tracking_uri"].removeprefix("sqlite:///"))
    copy = tmp_path_factory.mktemp("two_versions") / "mlflow.db"
    shutil.copy(source, copy)
    uri = f"sqlite:///{copy}"
    client = MlflowClient(uri)
    (first,) = client.search_model_versions(f"name='{MODEL_NAME}'")
    # The registry looks the logged model up in the tracking store in effect.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        client.create_model_version(MODEL_NAME, first.source, first.run_id, model_id=first.model_id)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {"tracking_uri": uri, "name": MODEL_NAME, "client": client}


def test_models_name_is_the_champion_when_set_else_the_newest_version(two_versions, monkeypatch):
    from serve.model_uri import resolve_model_uri

    client, name = two_versions["client"], two_versions["name"]
    assert resolve_model_uri(f"models:/{name}", client).version == "1"
    assert resolve_model_uri(f"models:/{name}", client).load_uri == f"models:/{name}/1"
    assert resolve_model_uri(f"models:/{name}/latest", client).version == "2"
    assert resolve_model_uri(f"models:/{name}/2", client).aliases == ()
    champion = resolve_model_uri(f"models:/{name}@champion", client)
    assert champion.aliases == ("champion",) and champion.model_id.startswith("m-") and champion.run_id
    assert resolve_model_uri(f"models:/{champion.model_id}", client).run_id == champion.run_id


def test_evaluate_pipeline_promote_app_and_client_read_models_name_as_one_version(two_versions, monkeypatch):
    """Each command's own resolution of models:/NAME, against a store where @champion is version 1 of 2."""
    import mlflow

    import serve.client
    from serve.app import load_served_model
    from train.release.evaluate import score_model
    from train.release.pipeline import source_of
    from train.release.promote import current_champion
    from train.settings import EvaluateSettings

    uri, name, client = two_versions["tracking_uri"], two_versions["name"], two_versions["client"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        evaluation = score_model(EvaluateSettings.from_dict({"model_uri": f"models:/{name}"}))
        assert (evaluation.source.name, evaluation.source.version) == (name, "1")
        assert source_of(f"models:/{name}", client)[0] == f"models:/{name}/1"
        assert str(current_champion(client, name).version) == "1"
        assert load_served_model(f"models:/{name}").info.version == "1"
        served = []
        monkeypatch.setattr(serve.client, "running_process", lambda command, **_: served.append(command) or _NoServer())
        with serve.client.temporary_server(f"models:/{name}"):
            pass
        assert f"models:/{name}/1" in served[0]
    finally:
        mlflow.set_tracking_uri(None)


class _NoServer:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_the_smallest_image_size_is_one_number_for_settings_and_loaders():
    from train.data import MINIMUM_IMAGE_SIZE, load_dataset
    from train.settings import ConfigError, MainSettings, PrepareSettings

    for settings in (MainSettings, PrepareSettings):
        bounds = [getattr(item, "ge", None) for item in settings.model_fields["image_size"].metadata]
        assert MINIMUM_IMAGE_SIZE in bounds
    with pytest.raises(ConfigError, match=f"at least {MINIMUM_IMAGE_SIZE}"):
        MainSettings.from_dict({"image_size": str(MINIMUM_IMAGE_SIZE - 1)})
    with pytest.raises(ValueError, match=f"at least {MINIMUM_IMAGE_SIZE}"):
        load_dataset("synthetic", image_size=MINIMUM_IMAGE_SIZE - 1)


def test_a_classifier_json_written_by_an_older_or_newer_version_still_loads(tmp_path):
    """Keys this version does not know (the old `extra`, a newer field) are ignored, not a TypeError."""
    import json

    from serve.pyfunc import ClassifierConfig

    path = tmp_path / "classifier.json"
    stored = {"class_names": ["a", "b"], "task": "binary", "image_size": 64, "extra": {}, "from_the_future": 1}
    path.write_text(json.dumps(stored))
    config = ClassifierConfig.load(str(path))
    assert (config.output_columns, config.output_thresholds()) == (["b"], [0.5])


def test_deprecations_reached_from_our_modules_fail_and_those_inside_libraries_do_not():
    """pyproject.toml's filterwarnings: a warning attributed to one of our modules is an error in the suite."""
    code = "import warnings\nwarnings.warn('old API', {category})"
    for category in ("DeprecationWarning", "FutureWarning"):
        with pytest.raises(Warning, match="old API"):
            exec(code.format(category=category), {"__name__": "train.release.example"})
        exec(code.format(category=category), {"__name__": "somelibrary.internals"})


def test_a_soft_label_of_exactly_one_half_is_positive_by_the_one_label_rule():
    """Scoring, calibration, figures, prepare and the ChestX-ray14 loader all ask train.data.labels.is_positive."""
    import numpy as np

    from train.data.labels import POSITIVE_LABEL_AT, is_positive
    from train.scoring.metrics import label_text

    assert POSITIVE_LABEL_AT == 0.5
    assert is_positive(0.5) and not is_positive(np.nextafter(0.5, 0.0))
    assert is_positive([0.0, 0.5, 1.0]).tolist() == [False, True, True]
    assert label_text(np.array([0.5]), "binary", ["normal", "finding"]) == "finding"
    assert label_text(np.array([0.5, 0.49]), "multilabel", ["effusion", "mass"]) == "effusion"
