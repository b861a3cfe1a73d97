"""Hyperparameter search: search-space validation, the trial budget, pruning, and real searches on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from stores import sqlite_store

from serve.common import free_port
from train.settings import ConfigError, MainSettings, TuneSettings, TuneWorkerSettings
from train.tuning.processes import visible_gpus, worker_environment
from train.tuning.space import SearchSpace

REPO_ROOT = Path(__file__).resolve().parents[1]
SEARCH_SPACES = REPO_ROOT / "configs" / "search_spaces"
# The tiniest trial that still trains: a few seconds of fitting on two CPU cores.
TINY_FIXED = {
    "dataset": "synthetic",
    "model": "small_cnn",
    "image_size": 32,
    "max_examples": 96,
    "convolutions": 1,
    "augment": False,
    "batch_size": 16,
}


def write_space(tmp_path: Path, text_or_mapping, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    text = text_or_mapping if isinstance(text_or_mapping, str) else yaml.safe_dump(text_or_mapping, sort_keys=False)
    path.write_text(text)
    return path


def run_cli(*arguments: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 120):
    return subprocess.run(
        [sys.executable, "-m", "train", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or {**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=timeout,
    )


def mlflow_env(tracking_uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


# Search spaces.


@pytest.mark.parametrize("name", ["synthetic", "malaria"])
def test_example_search_spaces_are_valid(name):
    space = SearchSpace.load(SEARCH_SPACES / f"{name}.yaml")
    assert space.metric == "val_auroc" and space.direction == "maximize"
    assert space.fixed["dataset"] == name
    assert "learning_rate" in space.parameters and space.parameters["learning_rate"].log


def test_chestxray14_search_space_needs_a_data_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"fixed\.dataset: dataset 'chestxray14' needs data_dir"):
        SearchSpace.load(SEARCH_SPACES / "chestxray14.yaml")
    space = SearchSpace.load(SEARCH_SPACES / "chestxray14.yaml", data_dir=str(tmp_path))
    assert space.fixed["data_dir"] == str(tmp_path)
    assert space.parameters["model"].choices == ("densenet121", "resnet50")


BAD_SPACES = [
    ({"space": {"lerning_rate": {"low": 1e-4, "high": 1e-2}}}, "space.lerning_rate: unknown parameter"),
    (
        {"space": {"dropout": {"type": "beta", "low": 0.1, "high": 0.4}}},
        "space.dropout.type: unknown distribution type 'beta'",
    ),
    ({"space": {"dropout": {"low": 0.4, "high": 0.1}}}, "space.dropout: low (0.4) must be below high (0.1)"),
    (
        {"space": {"learning_rate": {"low": 0.01, "high": 0.01, "log": True}}},
        "space.learning_rate: low (0.01) must be below",
    ),
    ({"space": {"optimizer": {"choices": []}}}, "space.optimizer.choices: needs a non-empty list"),
    (
        {"space": {"optimizer": {"choices": ["adam", "rmsprop"]}}},
        "space.optimizer.choices: unknown optimizer 'rmsprop'",
    ),
    ({"space": {"dropout": {"low": 0.0, "high": 1.5}}}, "space.dropout.high: dropout must be in [0, 1)"),
    (
        {"space": {"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}},
        "space.learning_rate.low: a log-scale range needs low > 0",
    ),
    (
        {"space": {"batch_size": {"low": 8, "high": 64, "type": "float"}}},
        "space.batch_size.type: batch_size is a whole-number setting",
    ),
    ({"space": {"dropout": {"low": 0.1, "hihg": 0.4}}}, "space.dropout.hihg: unknown key"),
    ({"space": {"dataset": {"choices": ["synthetic", "malaria"]}}}, "space.dataset: dataset cannot be tuned"),
    (
        {"fixed": {"epoch": 3}, "space": {"dropout": {"low": 0.1, "high": 0.4}}},
        "fixed.epoch: not a setting of main",
    ),
    (
        {"fixed": {"optimizer": "rmsprop"}, "space": {"dropout": {"low": 0.1, "high": 0.4}}},
        "fixed.optimizer: unknown optimizer 'rmsprop'",
    ),
    (
        {"fixed": {"register_as": "x"}, "space": {"dropout": {"low": 0.1, "high": 0.4}}},
        "fixed.register_as: cannot be fixed",
    ),
    (
        {"fixed": {"dropout": 0.2}, "space": {"dropout": {"low": 0.1, "high": 0.4}}},
        "space.dropout: dropout is also under fixed",
    ),
    (
        {"fixed": {"weights": "imagenet"}, "space": {"model": {"choices": ["vgg16", "small_cnn"]}}},
        "space.model.choices: small_cnn has no ImageNet weights",
    ),
    ({"metric": "auroc", "space": {"dropout": {"low": 0.1, "high": 0.4}}}, "metric: unknown metric 'auroc'"),
    ({"direction": "up", "space": {"dropout": {"low": 0.1, "high": 0.4}}}, "direction: must be maximize or minimize"),
    ({"spaces": {"dropout": {"low": 0.1, "high": 0.4}}}, "unknown key 'spaces'"),
    ({"fixed": {"epochs": 2}}, "space: must map at least one setting"),
    (
        {"space": {"dropout": {"low": 0.1, "high": 0.4}}, "first_trials": [{"dropout": 0.9}]},
        "first_trials[0].dropout: 0.9 is outside the space",
    ),
    (
        {"space": {"dropout": {"low": 0.1, "high": 0.4}}, "pruner_settings": {"median": {"warmup": 1}}},
        "pruner_settings.median.warmup: unknown setting",
    ),
    ("space: {dropout: {low: 0.1, high: [}\n", "not valid YAML at line 1"),
]


@pytest.mark.parametrize(
    ("content", "expected"), BAD_SPACES, ids=[expected.split(":")[0] for _, expected in BAD_SPACES]
)
def test_bad_search_space_is_one_line_that_names_the_key(tmp_path, content, expected):
    path = write_space(tmp_path, content)
    with pytest.raises(ConfigError) as raised:
        SearchSpace.load(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"search space {path}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("content", "arguments", "expected"),
    [
        ({"space": {"lerning_rate": {"low": 1e-4, "high": 1e-2}}}, [], "space.lerning_rate: unknown parameter"),
        ({"space": {"dropout": {"low": 0.4, "high": 0.1}}}, [], "space.dropout: low (0.4) must be below high (0.1)"),
        ({"fixed": {"optimizer": "rmsprop"}, "space": {"dropout": {"low": 0.1, "high": 0.4}}}, [], "fixed.optimizer"),
        (
            {"space": {"dropout": {"low": 0.1, "high": 0.4}}},
            ["--sampler", "grid"],
            "the grid sampler needs finite choices",
        ),
        ({"space": {"dropout": {"low": 0.1, "high": 0.4}}}, ["--pruner", "asha"], "unknown pruner 'asha'"),
        ({"space": {"dropout": {"low": 0.1, "high": 0.4}}}, ["--n-trials", "0"], "n_trials must be at least 1"),
    ],
)
def test_cli_rejects_bad_settings_with_exit_2_and_one_line(tmp_path, repo_root, content, arguments, expected):
    path = write_space(tmp_path, content)
    result = run_cli("tune", "--space", str(path), *arguments, cwd=repo_root)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]


def test_cli_names_a_missing_search_space_file(tmp_path):
    result = run_cli("tune", "--space", "no/such/space.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "search space file" in result.stderr and "does not exist" in result.stderr


def test_validation_imports_neither_tensorflow_nor_optuna_nor_mlflow(repo_root):
    code = (
        "import sys\n"
        "from train.__main__ import main\n"
        "code = main(['tune', '--space', 'configs/search_spaces/synthetic.yaml', '--sampler', 'grid'])\n"
        "print(code, *(name in sys.modules for name in ('tensorflow', 'optuna', 'mlflow')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=60)
    assert result.stdout.split() == ["2", "False", "False", "False"], result.stderr


def test_sampled_values_stay_in_the_space_and_make_a_trial_config(tmp_path):
    import optuna

    space = SearchSpace.load(
        write_space(
            tmp_path,
            {
                "fixed": {key: value for key, value in TINY_FIXED.items() if key != "augment"},
                "space": {
                    "learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
                    "optimizer": {"choices": ["adam", "sgd"]},
                    "trainable_layers": {"low": -1, "high": 7, "step": 4},
                    "augment": {"choices": ["cells", "none"]},
                },
            },
        )
    )
    assert space.parameters["trainable_layers"].kind == "int"
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial)
        assert 1e-5 <= params["learning_rate"] <= 1e-2
        assert params["optimizer"] in ("adam", "sgd")
        assert params["trainable_layers"] in (-1, 3, 7)
        config = space.trial_settings(params, run_name=f"trial-{trial.number}")
        assert isinstance(config, MainSettings)
        assert (
            config.run_name == f"trial-{trial.number}"
            and config.image_size == 32
            and config.augment == params["augment"]
        )
        study.tell(trial, 0.5)
    distributions = study.trials[0].distributions
    assert distributions["learning_rate"].log is True


def test_grid_covers_every_combination_of_choices(tmp_path):
    space = SearchSpace.load(
        write_space(
            tmp_path,
            {
                "fixed": TINY_FIXED,
                "space": {"optimizer": {"choices": ["adam", "sgd", "nadam"]}, "dropout": {"choices": [0.0, 0.3]}},
            },
        )
    )
    assert space.grid() == {"optimizer": ["adam", "sgd", "nadam"], "dropout": [0.0, 0.3]}
    assert space.grid_size() == 6


def test_tune_options_read_mlflow_strings():
    options = TuneSettings.from_dict(
        {"n_trials": "4.0", "n_workers": "2", "timeout": "0", "sampler": "Random", "seed": "7"}
    )
    assert (options.n_trials, options.n_workers, options.timeout, options.sampler, options.seed) == (
        4,
        2,
        0.0,
        "random",
        7,
    )
    with pytest.raises(ConfigError, match="unknown setting 'trials'"):
        TuneSettings.from_dict({"trials": "4"})
    with pytest.raises(ConfigError, match="n_trials must be a whole number"):
        TuneSettings.from_dict({"n_trials": "2.5"})


def test_worker_options_survive_the_command_line():
    options = TuneWorkerSettings(
        space="/abs/space.yaml",
        storage="postgresql+psycopg2://tuner@db:5432/optuna",
        study_name="study",
        n_trials=4,
        parent_run_id="abc",
        experiment_id="3",
        timeout=60.0,
        sampler="random",
        seed=-1,
        worker_index=1,
    )
    from train.__main__ import build_parser

    parsed = build_parser().parse_args(["tune-worker", *options.to_arguments()])
    assert TuneWorkerSettings.from_arguments(parsed) == options


# Workers and GPUs.


def test_visible_gpus_follow_cuda_visible_devices_or_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)'\n"
        "echo 'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert visible_gpus() == []


def test_each_worker_gets_its_own_gpu_round_robin_and_no_parent_run_id(monkeypatch, tracking_uri):
    monkeypatch.setenv("MLFLOW_RUN_ID", "parent-run")
    environments = [worker_environment(index, ["0", "1"]) for index in range(3)]
    assert [environment["CUDA_VISIBLE_DEVICES"] for environment in environments] == ["0", "1", "0"]
    assert all("MLFLOW_RUN_ID" not in environment for environment in environments)
    assert environments[0]["MLFLOW_TRACKING_URI"] == tracking_uri
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_environment(0, [])["CUDA_VISIBLE_DEVICES"] == ""


# The trial budget and the pruning callback (these import Keras).


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_budgeted_storage_never_creates_more_than_n_trials_under_contention(backend, tmp_path, request):
    import optuna

    from train.tuning.budget import BudgetedRDBStorage, TrialBudgetSpent
    from train.tuning.study import open_storage

    url = f"sqlite:///{tmp_path / 'tune.db'}" if backend == "sqlite" else request.getfixturevalue("postgres").url
    study_name = f"budget-{secrets.token_hex(4)}"
    optuna.create_study(study_name=study_name, storage=open_storage(url))
    created: list[int] = []
    errors: list[BaseException] = []

    def ask_until_spent():
        # Each thread has its own storage, engine and connections, as separate workers do.
        study = optuna.load_study(
            study_name=study_name, storage=open_storage(url, storage_class=BudgetedRDBStorage, max_trials=10)
        )
        try:
            while True:
                created.append(study.ask().number)
        except TrialBudgetSpent:
            return
        except BaseException as error:  # Reported by the assertion below instead of dying silently in the thread.
            errors.append(error)

    threads = [threading.Thread(target=ask_until_spent) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(created) == list(range(10))
    assert len(optuna.load_study(study_name=study_name, storage=url).trials) == 10


class FakeTrial:
    """Records reports and says "prune" from a given epoch on, like an Optuna trial whose pruner gave up on it."""

    def __init__(self, prune_from_epoch: int | None):
        self.prune_from_epoch = prune_from_epoch
        self.reports: list[tuple[float, int]] = []
        self.user_attrs: dict[str, str] = {}

    def report(self, value, step):
        self.reports.append((value, step))

    def should_prune(self):
        return self.prune_from_epoch is not None and self.reports[-1][1] >= self.prune_from_epoch

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def fit_with(callback, epochs: int = 5):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    features = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    labels = (features[:, :1] > 0).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    return model.fit(features, labels, validation_split=0.25, epochs=epochs, verbose=0, callbacks=[callback])


def test_pruning_callback_reports_every_epoch_and_stops_training_when_told():
    from train.tuning.worker import TrialPruningCallback

    trial = FakeTrial(prune_from_epoch=1)
    callback = TrialPruningCallback(trial, "val_loss", "minimize")
    history = fit_with(callback, epochs=5)
    assert len(history.history["val_loss"]) == 2
    assert [step for _, step in trial.reports] == [0, 1]
    assert [value for value, _ in trial.reports] == pytest.approx(history.history["val_loss"])
    assert callback.pruned and callback.pruned_epoch == 1
    assert callback.best_value == pytest.approx(min(history.history["val_loss"]))


def test_pruning_callback_lets_a_good_trial_finish_and_names_a_missing_metric():
    from train.tuning.worker import TrialPruningCallback

    trial = FakeTrial(prune_from_epoch=None)
    callback = TrialPruningCallback(trial, "val_loss", "minimize")
    history = fit_with(callback, epochs=3)
    assert len(history.history["val_loss"]) == 3 and not callback.pruned
    with pytest.raises(ValueError, match="metric 'val_auroc' is not in the epoch logs"):
        fit_with(TrialPruningCallback(FakeTrial(None), "val_auroc", "maximize"), epochs=1)


# Real searches.


@dataclass(frozen=True)
class Database:
    """An Optuna storage database: its URL with the password, and the password on its own."""

    url: str
    password: str

    @property
    def url_without_password(self) -> str:
        return self.url.replace(f":{self.password}@", "@")


@pytest.fixture(scope="module")
def postgres(postgres_bin):
    """A throwaway PostgreSQL cluster with an `optuna` database; the URL names the psycopg2 driver."""
    from mlflow_server.postgres import PostgresCluster

    # pytest's tmp folders are 0700, which the postgres user (running PostgreSQL for root) cannot enter.
    folder = Path(tempfile.mkdtemp(prefix="medimg-tune-pg-"))
    folder.chmod(0o755)
    cluster = PostgresCluster.at(folder / "pg")
    try:
        cluster.initialize()
        port = free_port()
        cluster.start(port)
        password = secrets.token_hex(12)
        cluster.ensure_role_and_databases("tuner", password, ["optuna"])
        yield Database(f"postgresql+psycopg2://tuner:{password}@127.0.0.1:{port}/optuna", password)
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def runs_by_role(client, experiment_id: str):
    runs = client.search_runs([experiment_id], max_results=100)
    parents = [run for run in runs if run.data.tags.get("medimg.tune.role") == "parent"]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    return parents, children


@pytest.mark.slow
def test_mlflow_run_with_two_workers_shares_one_postgres_study(repo_root, tmp_path, postgres):
    """`mlflow run -e tune` with two workers: exactly N trials, one child run each, a summarised parent."""
    import optuna
    from mlflow.tracking import MlflowClient

    tracking_uri = sqlite_store(tmp_path / "mlflow.db")
    parameters = {
        "space": "configs/search_spaces/synthetic.yaml",
        "n_trials": "4",
        "n_workers": "2",
        # As docs/TUNING.md advises, the password travels in PGPASSWORD: `mlflow run` logs every -P value.
        "storage": postgres.url_without_password,
        "study_name": "shared",
        "register_best_as": "tuned-synthetic",
    }
    command = ["mlflow", "run", str(repo_root), "--env-manager", "local", "-e", "tune", "--experiment-name", "tuning"]
    for key, value in parameters.items():
        command += ["-P", f"{key}={value}"]
    env = {**mlflow_env(tracking_uri), "PGPASSWORD": postgres.password}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=420)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    study = optuna.load_study(study_name="shared", storage=postgres.url)
    trials = study.get_trials()
    assert sorted(trial.number for trial in trials) == [0, 1, 2, 3]
    assert {trial.state.name for trial in trials} <= {"COMPLETE", "PRUNED"}
    trial_runs = {trial.user_attrs["mlflow_run_id"] for trial in trials}
    assert len(trial_runs) == 4

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tuning")
    (parent,), children = runs_by_role(client, experiment.experiment_id)
    assert {child.info.run_id for child in children} == trial_runs
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert sorted(child.data.tags["medimg.tune.trial"] for child in children) == ["0", "1", "2", "3"]
    # Both workers took trials from the one study.
    assert {child.data.tags["medimg.tune.worker"] for child in children} == {"0", "1"}
    assert all(child.info.status == "FINISHED" for child in children)
    assert all(child.data.params["image_size"] == "32" and "val_auroc" in child.data.metrics for child in children)

    assert parent.info.status == "FINISHED"
    best = study.best_trial
    assert parent.data.metrics["best_val_auroc"] == pytest.approx(best.value)
    assert parent.data.metrics["trials_complete"] + parent.data.metrics["trials_pruned"] == 4
    for name, value in best.params.items():
        assert parent.data.params[f"best.{name}"] == str(value)
    assert parent.data.tags["medimg.tune.best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert postgres.password not in str([parent.data.params, parent.data.tags]), "the password leaked"
    assert parent.data.tags["medimg.tune.storage"] == parameters["storage"]
    artifacts = {
        item.path for folder in ("plots", "tuning") for item in client.list_artifacts(parent.info.run_id, folder)
    }
    assert {"plots/optimization_history.png", "tuning/trials.csv", "tuning/search_space.yaml"} <= artifacts
    if parent.data.metrics["trials_complete"] >= 2 and "medimg.tune.importances" not in parent.data.tags:
        assert "plots/param_importances.png" in artifacts

    (version,) = client.search_model_versions("name='tuned-synthetic'")
    assert version.run_id == best.user_attrs["mlflow_run_id"]
    assert version.tags["medimg.tune.study"] == "shared"


@pytest.mark.slow
def test_hopeless_trial_is_pruned_and_its_run_says_so(tmp_path, repo_root):
    """Median pruner, one startup trial: a sane first trial completes, a diverging second one is pruned after epoch 1."""
    import optuna
    from mlflow.tracking import MlflowClient

    space = write_space(
        tmp_path,
        {
            # val_loss separates the two reliably: about 0.69 untrained, thousands after diverging.
            "metric": "val_loss",
            "fixed": {**TINY_FIXED, "epochs": 2},
            "space": {"learning_rate": {"choices": [1.0e-6, 3.0]}},
            "first_trials": [{"learning_rate": 1.0e-6}, {"learning_rate": 3.0}],
            "pruner_settings": {"median": {"n_startup_trials": 1, "n_warmup_steps": 0}},
        },
    )
    tracking_uri = sqlite_store(tmp_path / "mlflow.db")
    result = run_cli(
        "tune",
        "--space",
        str(space),
        "--n-trials",
        "2",
        "--study-name",
        "pruning",
        "--sampler",
        "random",
        cwd=tmp_path,
        env=mlflow_env(tracking_uri),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    study = optuna.load_study(study_name="pruning", storage=f"sqlite:///{tmp_path / 'tune.db'}")
    good, hopeless = sorted(study.get_trials(), key=lambda trial: trial.number)
    assert good.state.name == "COMPLETE" and good.params == {"learning_rate": 1.0e-6}
    assert hopeless.state.name == "PRUNED" and hopeless.params == {"learning_rate": 3.0}
    assert list(hopeless.intermediate_values) == [0]

    client = MlflowClient(tracking_uri)
    (parent,), children = runs_by_role(client, "0")
    pruned_run = client.get_run(hopeless.user_attrs["mlflow_run_id"])
    assert pruned_run.info.status == "FINISHED"
    assert pruned_run.data.tags["medimg.tune.state"] == "PRUNED"
    assert pruned_run.data.tags["medimg.tune.pruned_epoch"] == "0"
    assert [point.step for point in client.get_metric_history(pruned_run.info.run_id, "val_loss")] == [0]
    assert client.get_run(good.user_attrs["mlflow_run_id"]).data.tags["medimg.tune.state"] == "COMPLETE"
    assert len(children) == 2
    assert parent.data.metrics["trials_pruned"] == 1 and parent.data.metrics["best_val_loss"] == pytest.approx(
        good.value
    )
    # One completed trial has no parameter importances; the parent says why instead of failing.
    assert parent.data.tags["medimg.tune.importances"].startswith("not computed: needs at least 2 completed trials")


@pytest.mark.slow
def test_a_second_command_joins_a_running_study_and_adds_child_runs_to_its_lead(tmp_path):
    """What another machine does: `tune` with the study's name finds its lead still running and only adds workers."""
    import optuna
    from mlflow.tracking import MlflowClient

    from train.tuning.study import EXPERIMENT_ATTR, LEAD_HEARTBEAT_ATTR, PARENT_RUN_ATTR

    tracking_uri = sqlite_store(tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("tuning", artifact_location=str(tmp_path / "artifacts"))
    # The lead's parent run stays RUNNING while its own workers train.
    lead = client.create_run(experiment_id, tags={"medimg.tune.role": "parent"})
    storage_url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(study_name="joined", storage=storage_url, direction="maximize")
    study.set_user_attr(PARENT_RUN_ATTR, lead.info.run_id)
    study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
    study.set_user_attr(LEAD_HEARTBEAT_ATTR, time.time())
    space = write_space(
        tmp_path, {"fixed": {**TINY_FIXED, "epochs": 1}, "space": {"dropout": {"low": 0.0, "high": 0.5}}}
    )
    arguments = ["tune", "--space", str(space), "--storage", storage_url, "--study-name", "joined", "--n-trials", "1"]

    result = run_cli(*arguments, cwd=tmp_path, env=mlflow_env(tracking_uri), timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "joining study 'joined'" in result.stdout

    (trial,) = optuna.load_study(study_name="joined", storage=storage_url).trials
    assert trial.state.name == "COMPLETE"
    child = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == lead.info.run_id
    assert child.info.experiment_id == experiment_id
    # Summing up is the lead's job: its run is still open and no second parent appeared.
    assert client.get_run(lead.info.run_id).info.status == "RUNNING"
    assert len(client.search_runs([experiment_id])) == 2

    again = run_cli(*arguments, cwd=tmp_path, env=mlflow_env(tracking_uri), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "nothing to join" in again.stdout and "[worker" not in again.stdout

    # A lead that died (no heartbeat for minutes) is replaced: a new parent sums up the study, the old one is KILLED.
    study.set_user_attr(LEAD_HEARTBEAT_ATTR, time.time() - 3600)
    takeover = run_cli(*arguments, cwd=tmp_path, env=mlflow_env(tracking_uri), timeout=120)
    assert takeover.returncode == 0, takeover.stdout[-3000:] + takeover.stderr[-3000:]
    assert "takes over" in takeover.stdout and "[worker" not in takeover.stdout
    assert client.get_run(lead.info.run_id).info.status == "KILLED"
    runs = client.search_runs([experiment_id])
    (new_parent,) = [run for run in runs if run.info.run_id not in (lead.info.run_id, child.info.run_id)]
    assert new_parent.info.status == "FINISHED"
    assert new_parent.data.metrics["best_val_auroc"] == pytest.approx(trial.value)
    assert new_parent.data.params["best.dropout"] == str(trial.params["dropout"])
