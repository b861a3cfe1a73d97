"""Configuration and command-line errors: one line, exit code 2, before any heavy work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from stores import sqlite_store

from train.settings import ConfigError, MainSettings, coerce, parse_bool


def run_cli(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", *arguments], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--model", "nope"], "unknown model 'nope'; valid models: densenet121, resnet50, small_cnn, vgg16"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'; valid datasets:"),
        (["--optimizer", "rmsprop"], "valid optimizers: adam, adamw, sgd, nadam"),
        (["--precision", "bfloat8"], "valid precisions: auto, float32, mixed_float16"),
        (["--dataset", "imagefolder"], "imagefolder"),
        (["--augment", "maybe"], "unknown augment 'maybe'; valid augments: auto, cells, radiograph, none"),
        (["--epochs", "2.5"], "epochs must be a whole number"),
        (["--weights", "/no/such/weights.h5", "--model", "vgg16"], "does not exist"),
        (["--image-size", "8"], "image_size must be at least 32"),
        (["--nope", "1"], "unknown flag '--nope' for main; valid flags: --model, --dataset"),
        (["--dropout", "1.5"], "dropout must be in [0, 1), got 1.5"),
        # -P name=value, as `mlflow run` takes parameters, goes through the same checks.
        (["-P", "model=nope"], "unknown model 'nope'; valid models: densenet121, resnet50, small_cnn, vgg16"),
        (["-P", "epochs=abc"], "epochs must be a whole number, got 'abc'"),
        (["-P", "dataset=mnist"], "unknown dataset 'mnist'; valid datasets:"),
        (["-P", "nope=1"], "unknown setting 'nope'; valid settings: model, dataset"),
        (["-P", "epochs"], "-P takes NAME=VALUE, got 'epochs'"),
        (["--epochs", "3", "-P", "epochs=4"], "epochs is given twice, as '3' and '4'; keep one"),
    ],
)
def test_bad_settings_exit_2_with_one_line(repo_root, arguments, expected):
    result = run_cli("main", *arguments, cwd=repo_root)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]


def test_validation_does_not_import_tensorflow(repo_root):
    code = (
        "import sys\n"
        "from train.settings import MainSettings, ConfigError\n"
        "try:\n    MainSettings.from_dict({'model': 'nope'})\nexcept ConfigError:\n    pass\n"
        "MainSettings.from_dict({'model': 'vgg16', 'epochs': '3.0'})\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_help_lists_every_setting(repo_root):
    result = run_cli("main", "--help", cwd=repo_root)
    assert result.returncode == 0
    for name in MainSettings.defaults():
        assert "--" + name.replace("_", "-") in result.stdout


def test_p_pairs_and_flags_make_the_same_settings():
    import argparse

    parser = argparse.ArgumentParser()
    MainSettings.add_arguments(parser)
    from_pairs = MainSettings.from_arguments(parser.parse_args(["-P", "epochs=3.0", "-P", "data_dir=''", "-P", "l2=0"]))
    from_flags = MainSettings.from_arguments(parser.parse_args(["--epochs", "3", "--data-dir", "", "--l2", "0.0"]))
    assert from_pairs == from_flags and from_pairs.epochs == 3 and from_pairs.data_dir == ""


def test_unknown_config_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown setting 'colour'; valid settings: model, dataset"):
        MainSettings.from_dict({"colour": "blue"})


def test_values_are_parsed_from_mlflow_strings():
    config = MainSettings.from_dict({"epochs": "3.0", "augment": "False", "learning_rate": "0.01", "seed": "7"})
    # Earlier versions took augment=true/false: they still work, as the dataset's policy and none.
    assert (config.epochs, config.augment, config.learning_rate, config.seed) == (3, "none", 0.01, 7)
    assert MainSettings.from_dict({"augment": "true"}).augment == "auto"
    assert parse_bool("YES") is True and parse_bool("0") is False
    assert coerce(MainSettings, "epochs", "12") == 12
    with pytest.raises(ValueError):
        parse_bool("")


def test_weights_choice():
    assert MainSettings.from_dict({"weights": "none"}).weights_choice is None
    assert MainSettings.from_dict({"weights": "imagenet", "model": "vgg16"}).weights_choice == "imagenet"
    with pytest.raises(ConfigError, match="small_cnn has no ImageNet weights"):
        MainSettings.from_dict({"weights": "imagenet"})


@pytest.mark.slow
def test_mlflow_run_with_unknown_model_fails_with_one_line(repo_root, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_store(tmp_path / "mlflow.db")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    result = subprocess.run(
        ["mlflow", "run", str(repo_root), "--env-manager", "local", "-P", "model=nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    # What docs/TRAINING.md says happens: the command's one line, MLflow's failure (exit 1), a FAILED run tagged with why.
    assert result.returncode == 1
    output = result.stdout + result.stderr
    message = "unknown model 'nope'; valid models: densenet121, resnet50, small_cnn, vgg16"
    assert f"error: {message}" in output
    from mlflow.tracking import MlflowClient

    (run,) = MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(["0"])
    assert run.info.status == "FAILED" and run.data.tags["medimg.config_error"] == message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("''", ""), ("'a b'", "a b"), ('"x"', "x"), ("plain", "plain"), ("'", "'"), ("/data/set", "/data/set")],
)
def test_kubernetes_quoting_is_undone(raw, expected):
    from train.settings import unquote

    assert unquote(raw) == expected


def test_samples_help_prints_usage_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """`python -m train.samples --help` once wrote the samples into a folder named `--help`."""
    from train.samples import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as finished:
        main(["--help"])
    assert finished.value.code == 0 and "usage: python -m train.samples" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    assert main([str(tmp_path / "out")]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["cell.dcm", "cell.jpg", "cell.png"]
