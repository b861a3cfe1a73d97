"""Hyperparameter search (`python -m train tune`): reads a search-space YAML and an Optuna storage; writes a parent MLflow run whose children are the trials.

The lead process creates (or joins) the Optuna study, opens the parent run and
starts `n_workers` worker processes (`python -m train tune-worker`, see
train/tune_worker.py). Each worker loads the study by name from the shared
storage and runs trials until the study holds `n_trials` trials, so workers on
other machines can join the same study through a PostgreSQL storage. When the
workers are done, the lead logs the best value and parameters, the optimisation
history, the parameter importances and, if asked, registers the best model.

This module imports neither TensorFlow nor Optuna at module level, so the
command line and its validation stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from train.config import ConfigError, parse_float, parse_int
from train.search_space import SearchSpace, resolve_space_path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_STORAGE_FILE = "tune.db"
# SQLite serialises writers; several workers wait this long for the lock instead of failing at once.
SQLITE_LOCK_TIMEOUT_S = 60
# Workers write a heartbeat while a trial runs; a trial whose worker died is failed after the grace period.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120
WAIT_POLL_S = 5.0
WORKER_STOP_TIMEOUT_S = 60
# Keys of the Optuna study's user attributes that tie it to its MLflow parent run.
PARENT_RUN_ATTR = "mlflow_parent_run_id"
# The lead stamps the study while it runs; a stamp older than LEAD_STALE_S means it died without summing up.
LEAD_HEARTBEAT_ATTR = "lead_heartbeat"
LEAD_HEARTBEAT_INTERVAL_S = 30
LEAD_STALE_S = 180
EXPERIMENT_ATTR = "mlflow_experiment_id"
SPACE_ATTR = "search_space"
# The Optuna trial's user attribute that names its MLflow child run.
TRIAL_RUN_ATTR = "mlflow_run_id"

TUNE_HELP = {
    "space": "search-space YAML (relative to the working directory; examples in configs/search_spaces/)",
    "n_trials": "total number of trials in the study, over all workers and machines",
    "timeout": "seconds after which workers start no new trial; 0 = no limit",
    "study_name": "Optuna study name; empty = <space>-<date>-<time>. An existing study is joined",
    "storage": f"Optuna storage URL, e.g. postgresql+psycopg2://user:password@host/db; empty = sqlite {DEFAULT_STORAGE_FILE}",
    "n_workers": "worker processes on this machine (one GPU each, round-robin, when GPUs are present)",
    "sampler": "tpe, random or grid (grid needs choices for every parameter)",
    "pruner": "median, hyperband or none: stops hopeless trials early on the per-epoch metric",
    "seed": "sampler seed (worker i uses seed + i); the training seed is fixed.seed of the search space",
    "register_best_as": "registered model name for the best trial's model; empty = do not register",
    "data_dir": "dataset folder; overrides fixed.data_dir of the search space",
}
WORKER_HELP = {
    "space": "search-space YAML the study was created with",
    "storage": "Optuna storage URL of the study",
    "study_name": "name of the existing study to run trials of",
    "n_trials": "stop when the study holds this many trials",
    "parent_run_id": "MLflow run whose children the trial runs become",
    "experiment_id": "MLflow experiment of the trial runs",
    "timeout": "seconds after which no new trial starts; 0 = no limit",
    "sampler": "tpe, random or grid",
    "pruner": "median, hyperband or none",
    "seed": "sampler seed; empty = unseeded",
    "data_dir": "dataset folder; overrides fixed.data_dir",
    "worker_index": "number of this worker, for logs and tags",
}


class TuningFailed(RuntimeError):
    """The search ran but produced nothing usable (no completed trial, a model that cannot be registered)."""


def _check_choice(value: str, valid: tuple[str, ...], name: str) -> str:
    word = value.strip().lower()
    if word not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid {name}s: {', '.join(valid)}")
    return word


@dataclass(frozen=True)
class TuneOptions:
    """Settings of `python -m train tune`; field names equal the MLproject `tune` parameter names."""

    space: str = "configs/search_spaces/synthetic.yaml"
    n_trials: int = 20
    timeout: float = 0.0
    study_name: str = ""
    storage: str = ""
    n_workers: int = 1
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 42
    register_best_as: str = ""
    data_dir: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TuneOptions:
        """Build options from raw strings (as MLflow passes them), rejecting unknown keys, then validate."""
        known = {item.name: item for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown tune setting(s) {', '.join(unknown)}; valid settings: {', '.join(known)}")
        converted: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            kind = known[name].type
            if kind == "int":
                converted[name] = parse_int(value, name)
            elif kind == "float":
                converted[name] = parse_float(value, name)
            else:
                converted[name] = str(value).strip()
        options = cls(**converted)
        return options.validated()

    def validated(self) -> TuneOptions:
        if self.n_trials < 1:
            raise ConfigError(f"n_trials must be at least 1, got {self.n_trials}")
        if self.n_workers < 1:
            raise ConfigError(f"n_workers must be at least 1, got {self.n_workers}")
        if self.timeout < 0:
            raise ConfigError(f"timeout must be 0 (no limit) or a number of seconds, got {self.timeout}")
        return dataclasses.replace(
            self,
            sampler=_check_choice(self.sampler, SAMPLERS, "sampler"),
            pruner=_check_choice(self.pruner, PRUNERS, "pruner"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class WorkerOptions:
    """Settings of one `python -m train tune-worker` process; the lead fills them in."""

    space: str
    storage: str
    study_name: str
    n_trials: int
    parent_run_id: str
    experiment_id: str
    timeout: float = 0.0
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    data_dir: str = ""
    worker_index: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorkerOptions:
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown tune-worker setting(s) {', '.join(unknown)}")
        missing = sorted(name for name in ("space", "storage", "study_name", "n_trials") if not values.get(name))
        if missing:
            raise ConfigError(f"tune-worker needs {', '.join('--' + name.replace('_', '-') for name in missing)}")
        seed = values.get("seed")
        return cls(
            space=str(values["space"]),
            storage=str(values["storage"]),
            study_name=str(values["study_name"]),
            n_trials=parse_int(values["n_trials"], "n_trials"),
            parent_run_id=str(values.get("parent_run_id") or ""),
            experiment_id=str(values.get("experiment_id") or ""),
            timeout=parse_float(values.get("timeout") or 0, "timeout"),
            sampler=_check_choice(str(values.get("sampler") or "tpe"), SAMPLERS, "sampler"),
            pruner=_check_choice(str(values.get("pruner") or "median"), PRUNERS, "pruner"),
            seed=parse_int(seed, "seed") if seed not in (None, "") else None,
            data_dir=str(values.get("data_dir") or ""),
            worker_index=parse_int(values.get("worker_index") or 0, "worker_index"),
        )

    def to_arguments(self) -> list[str]:
        """Command-line flags that `python -m train tune-worker` parses back into these options."""
        arguments = []
        for name, value in dataclasses.asdict(self).items():
            if value is None or value == "":
                continue
            arguments += ["--" + name.replace("_", "-"), str(value)]
        return arguments


# Storage.


def resolve_storage_url(storage: str) -> str:
    """The storage URL workers share: the given one, or an absolute sqlite URL of tune.db in the working directory."""
    if storage:
        return storage
    return f"sqlite:///{Path.cwd().absolute() / DEFAULT_STORAGE_FILE}"


def redact_url(url: str) -> str:
    """The URL without its password, for logs and run tags."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # A URL SQLAlchemy cannot parse may still hold a password, so only its scheme is shown.
        return url.split("://", 1)[0] + "://..."


def open_storage(url: str, *, storage_class=None, **storage_arguments):
    """An Optuna RDBStorage for `url` with SQLite lock waiting and trial heartbeats; ConfigError when unusable."""
    import optuna
    import sqlalchemy.exc

    storage_class = storage_class or optuna.storages.RDBStorage
    if url.startswith("sqlite"):
        engine_arguments = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    else:
        engine_arguments = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        # Heartbeats are marked experimental in Optuna; they are what fails trials of dead workers.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return storage_class(
                url,
                engine_kwargs=engine_arguments,
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=HEARTBEAT_GRACE_S,
                **storage_arguments,
            )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"cannot open the tuning storage {redact_url(url)}: {detail}; "
                "use sqlite:///path/tune.db or postgresql+psycopg2://user:password@host:port/database"
            ) from None


def make_sampler(name: str, space: SearchSpace, seed: int | None):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    # The constant liar makes parallel workers avoid points that running trials already cover.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(name: str, space: SearchSpace):
    """The pruner, with the search space's pruner_settings on top of defaults that suit per-epoch reports."""
    import optuna

    settings = dict(space.pruner_settings.get(name, {}))
    if name == "median":
        # The first epoch is noisy, so a trial is first judged after its second epoch (step 1).
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **settings})
    if name == "hyperband":
        epochs = space.fixed.get("epochs")
        max_resource = int(epochs) if epochs is not None else "auto"
        return optuna.pruners.HyperbandPruner(
            **{"min_resource": 1, "max_resource": max_resource, "reduction_factor": 3, **settings}
        )
    return optuna.pruners.NopPruner()


def _comparable_space(space: SearchSpace) -> dict[str, Any]:
    """The search space as stored with the study; data_dir differs between machines and is left out."""
    resolved = space.to_dict()
    resolved["fixed"] = {key: value for key, value in resolved["fixed"].items() if key != "data_dir"}
    return json.loads(json.dumps(resolved))


def open_study(storage, study_name: str, space: SearchSpace):
    """Create the study, or load it when it exists and was made for the same search space."""
    import optuna

    study = optuna.create_study(study_name=study_name, storage=storage, direction=space.direction, load_if_exists=True)
    if len(study.directions) != 1 or study.direction.name.lower() != space.direction:
        raise ConfigError(
            f"study {study_name!r} exists and optimises in another direction than {space.direction}; "
            "use another --study-name"
        )
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is not None and stored != _comparable_space(space):
        raise ConfigError(
            f"study {study_name!r} exists with another search space than {space.source}; "
            "use the search space it was created with or another --study-name"
        )
    return study


# Workers.


def visible_gpus() -> list[str]:
    """GPU ids to hand out to workers: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, without importing TensorFlow."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [device.strip() for device in declared.split(",") if device.strip() and device.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in listing.splitlines():
        # Lines look like "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)"; MIG lines are indented and skipped.
        if line.startswith("GPU ") and ":" in line:
            gpus.append(line[4 : line.index(":")].strip())
    return gpus


def worker_environment(index: int, gpus: list[str]) -> dict[str, str]:
    """The environment of worker `index`: this one, minus the parent's MLflow run id, plus its own GPU."""
    import mlflow

    environment = dict(os.environ)
    # With MLFLOW_RUN_ID set, the worker's start_run would resume the parent run instead of opening a child.
    environment.pop("MLFLOW_RUN_ID", None)
    environment["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    if gpus:
        environment["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return environment


def _relay(stream, prefix: str) -> None:
    for line in stream:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def run_workers(options: list[WorkerOptions]) -> list[int]:
    """Start one `python -m train tune-worker` per options, relay their output line by line, wait; return exit codes."""
    gpus = visible_gpus()
    if gpus:
        print(f"GPUs {', '.join(gpus)}: worker i uses GPU i mod {len(gpus)}", flush=True)
    processes = []
    relays = []
    for worker in options:
        command = [sys.executable, "-m", "train", "tune-worker", *worker.to_arguments()]
        process = subprocess.Popen(
            command,
            env=worker_environment(worker.worker_index, gpus),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        relay = threading.Thread(target=_relay, args=(process.stdout, f"[worker {worker.worker_index}] "), daemon=True)
        relay.start()
        processes.append(process)
        relays.append(relay)
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too; SIGTERM covers a lead stopped alone. They get time to fail
        # their trials and end their runs cleanly.
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    for relay in relays:
        relay.join(timeout=10)
    return codes


def started_trial_count(study) -> int:
    """Trials that used up part of the budget; WAITING ones (first_trials) still need a worker."""
    from optuna.trial import TrialState

    started = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=started))


def wait_for_running_trials(study) -> None:
    """Wait for trials that workers on other machines still run; trials of dead workers fail after the grace period."""
    import optuna
    from optuna.trial import TrialState

    announced: set[int] = set()
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        numbers = {trial.number for trial in running}
        if numbers - announced:
            print(f"waiting for trial(s) {sorted(numbers)} still running on other workers", flush=True)
            announced |= numbers
        time.sleep(WAIT_POLL_S)


# Summary.


def log_plots(study, metric: str) -> None:
    """Optimisation history, intermediate values and parameter importances as PNGs on the active (parent) run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        # Optuna marks its matplotlib plots experimental; the warning would repeat on every run.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if completed:
            axes = optuna_plots.plot_optimization_history(study, target_name=metric)
            mlflow.log_figure(axes.figure, "plots/optimization_history.png")
            plt.close(axes.figure)
        if any(trial.intermediate_values for trial in study.get_trials(deepcopy=False)):
            axes = optuna_plots.plot_intermediate_values(study)
            axes.set_xlabel("epoch (step 0 = first epoch)")
            axes.set_ylabel(metric)
            mlflow.log_figure(axes.figure, "plots/intermediate_values.png")
            plt.close(axes.figure)
        reason = ""
        if len(completed) < 2:
            reason = f"needs at least 2 completed trials, the study has {len(completed)}"
        else:
            try:
                importances = optuna.importance.get_param_importances(study)
                axes = optuna_plots.plot_param_importances(study, target_name=metric)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                # Too little variation (one distinct value per parameter, equal objective values) has no importances.
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            else:
                mlflow.log_figure(axes.figure, "plots/param_importances.png")
                plt.close(axes.figure)
                mlflow.log_dict(
                    {name: float(value) for name, value in importances.items()}, "tuning/param_importances.json"
                )
        if reason:
            print(f"parameter importances not computed: {reason}", flush=True)
            mlflow.set_tag("medimg.tune.importances", f"not computed: {reason}")


def trials_table(study) -> str:
    """One CSV row per trial: number, state, value, parameters and its MLflow run id."""
    import csv
    import io

    trials = study.get_trials(deepcopy=False)
    names = sorted({name for trial in trials for name in trial.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", "epochs_reported", *names, "run_id"])
    for trial in trials:
        writer.writerow(
            [
                trial.number,
                trial.state.name,
                "" if trial.value is None else trial.value,
                len(trial.intermediate_values),
                *[trial.params.get(name, "") for name in names],
                trial.user_attrs.get(TRIAL_RUN_ATTR, ""),
            ]
        )
    return buffer.getvalue()


def summarize(study, space: SearchSpace, run_id: str) -> dict[str, Any] | None:
    """Log trial counts, plots and the best trial on the parent run; return the best trial's summary (None if none)."""
    import mlflow
    from optuna.trial import TrialState

    from train.tracking import log_new_params

    trials = study.get_trials(deepcopy=False)
    states = Counter(trial.state for trial in trials)
    mlflow.log_metrics(
        {
            "trials_complete": states[TrialState.COMPLETE],
            "trials_pruned": states[TrialState.PRUNED],
            "trials_failed": states[TrialState.FAIL],
        }
    )
    mlflow.log_text(trials_table(study), "tuning/trials.csv")
    log_plots(study, space.metric)
    if not states[TrialState.COMPLETE]:
        return None
    best = study.best_trial
    best_run_id = best.user_attrs.get(TRIAL_RUN_ATTR, "")
    model_uri = ""
    if best_run_id:
        model_uri = mlflow.get_run(best_run_id).data.tags.get("medimg.model_uri", "")
    summary = {
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "run_id": best_run_id,
        "model_uri": model_uri,
    }
    mlflow.log_metric(f"best_{space.metric}", best.value)
    log_new_params(run_id, {f"best.{name}": value for name, value in best.params.items()})
    mlflow.set_tags(
        {
            "medimg.tune.best_trial": str(best.number),
            "medimg.tune.best_run_id": best_run_id,
            "medimg.tune.best_model_uri": model_uri,
        }
    )
    mlflow.log_dict(summary, "tuning/best_trial.json")
    return summary


def register_best(summary: dict[str, Any], name: str, study_name: str) -> str:
    """Register the best trial's logged model under `name`; return the new version."""
    import mlflow

    if not summary["model_uri"]:
        raise TuningFailed(f"the best trial's run {summary['run_id']} has no medimg.model_uri tag; nothing registered")
    version = mlflow.register_model(summary["model_uri"], name)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version.version, "medimg.tune.study", study_name)
    client.set_model_version_tag(name, version.version, "medimg.tune.trial", str(summary["trial"]))
    mlflow.set_tag("medimg.tune.registered", f"{name}/{version.version}")
    return str(version.version)


# The command.


def lead_is_alive(study) -> bool:
    stamp = study.user_attrs.get(LEAD_HEARTBEAT_ATTR)
    return isinstance(stamp, int | float) and time.time() - stamp < LEAD_STALE_S


@contextlib.contextmanager
def lead_heartbeat(study):
    """Stamp the study every LEAD_HEARTBEAT_INTERVAL_S while the lead works, so joining machines can tell it is alive."""
    import optuna
    import sqlalchemy.exc

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(LEAD_HEARTBEAT_INTERVAL_S):
            try:
                study.set_user_attr(LEAD_HEARTBEAT_ATTR, time.time())
            except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as error:
                # A database hiccup skips one beat; the grace period (LEAD_STALE_S) covers several.
                print(f"lead heartbeat skipped: {error}", flush=True)

    study.set_user_attr(LEAD_HEARTBEAT_ATTR, time.time())
    thread = threading.Thread(target=beat, name="lead-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        # A finished lead is not alive: a later command on this study makes a new lead instead of joining.
        study.set_user_attr(LEAD_HEARTBEAT_ATTR, 0)


def _parent_status(parent_run_id: str, study_name: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_run(parent_run_id).info.status
    except MlflowException:
        raise ConfigError(
            f"study {study_name!r} belongs to MLflow run {parent_run_id}, which the tracking store "
            f"{mlflow.get_tracking_uri()} does not know; set MLFLOW_TRACKING_URI to the server the study started with"
        ) from None


def _workers(
    options: TuneOptions,
    *,
    storage_url: str,
    study_name: str,
    n_trials: int,
    parent_run_id: str,
    experiment_id: str,
    seeded: bool,
    started: float,
    count: int,
) -> list[WorkerOptions]:
    timeout = max(1.0, options.timeout - (time.monotonic() - started)) if options.timeout else 0.0
    return [
        WorkerOptions(
            space=str(resolve_space_path(options.space)),
            storage=storage_url,
            study_name=study_name,
            n_trials=n_trials,
            parent_run_id=parent_run_id,
            experiment_id=experiment_id,
            timeout=timeout,
            sampler=options.sampler,
            pruner=options.pruner,
            seed=options.seed + index if seeded else None,
            data_dir=options.data_dir,
            worker_index=index,
        )
        for index in range(count)
    ]


def tune(options: TuneOptions) -> dict[str, Any]:
    """Run the search: create or join the study, run the workers, summarise on the parent run; return the outcome."""
    started = time.monotonic()
    space = SearchSpace.load(options.space, data_dir=options.data_dir)
    n_trials = options.n_trials
    if options.sampler == "grid":
        grid_size = space.grid_size()
        if n_trials > grid_size:
            print(f"the grid has {grid_size} points; running {grid_size} trials instead of {n_trials}", flush=True)
            n_trials = grid_size
    storage_url = resolve_storage_url(options.storage)
    if storage_url.startswith("sqlite") and options.n_workers > 1:
        print(
            "note: SQLite lets one worker write at a time; for many workers or machines use a PostgreSQL "
            "storage (postgresql+psycopg2://...), see docs/TUNING.md",
            flush=True,
        )

    import mlflow

    from train.tracking import log_new_params

    storage = open_storage(storage_url)
    study_name = options.study_name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    study = open_study(storage, study_name, space)
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent_run_id and _parent_status(parent_run_id, study_name) == "RUNNING":
        if lead_is_alive(study):
            return _join(options, study, storage_url, n_trials, parent_run_id, started)
        print(
            f"the lead of study {study_name!r} stopped without summing up; this command takes over with a new "
            f"parent run and marks run {parent_run_id} KILLED",
            flush=True,
        )
        mlflow.MlflowClient().set_terminated(parent_run_id, status="KILLED")

    print(f"study {study_name!r} in {redact_url(storage_url)}: {n_trials} trials", flush=True)
    run_name = None if os.environ.get("MLFLOW_RUN_ID") else f"tune-{study_name}"
    # A continued study stays in its experiment unless the environment (or `mlflow run`) chooses one.
    chosen = any(os.environ.get(name) for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"))
    experiment_id = None if chosen else study.user_attrs.get(EXPERIMENT_ATTR)
    with mlflow.start_run(run_name=run_name, experiment_id=experiment_id) as run, lead_heartbeat(study):
        run_id = run.info.run_id
        experiment_id = run.info.experiment_id
        mlflow.set_tags(
            {
                "medimg.tune.role": "parent",
                "medimg.tune.study_name": study_name,
                "medimg.tune.storage": redact_url(storage_url),
                "medimg.dataset": str(space.fixed.get("dataset", "synthetic")),
            }
        )
        log_new_params(
            run_id,
            {
                **options.to_dict(),
                # The password stays out of the run; MLflow shows params to everyone who can see the run.
                "storage": redact_url(storage_url),
                "n_trials": n_trials,
                "study_name": study_name,
                "metric": space.metric,
                "direction": space.direction,
                **{f"fixed.{key}": value for key, value in space.fixed.items()},
            },
        )
        mlflow.log_text(yaml.safe_dump(space.to_dict(), sort_keys=False), "tuning/search_space.yaml")
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
        study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
        study.set_user_attr(SPACE_ATTR, _comparable_space(space))
        if not study.get_trials(deepcopy=False):
            for params in space.first_trials[:n_trials]:
                study.enqueue_trial(params)

        started_trials = started_trial_count(study)
        if started_trials >= n_trials:
            print(f"study {study_name!r} already has {started_trials} trials; summarising only", flush=True)
        else:
            workers = _workers(
                options,
                storage_url=storage_url,
                study_name=study_name,
                n_trials=n_trials,
                parent_run_id=run_id,
                experiment_id=experiment_id,
                seeded=True,
                started=started,
                # More workers than trials left would only import TensorFlow to find nothing to do.
                count=min(options.n_workers, n_trials - started_trials),
            )
            codes = run_workers(workers)
            for worker, code in zip(workers, codes, strict=True):
                if code != 0:
                    print(f"worker {worker.worker_index} exited with code {code}; see its output above", flush=True)
        wait_for_running_trials(study)
        best = summarize(study, space, run_id)
        if best is None:
            raise TuningFailed(
                f"study {study_name!r} has no completed trial; see the worker output and the failed child runs"
            )
        registered = register_best(best, options.register_best_as, study_name) if options.register_best_as else None
    outcome = {
        "parent_run_id": run_id,
        "study_name": study_name,
        f"best_{space.metric}": round(best["value"], 4),
        "best_params": best["params"],
        "best_trial": best["trial"],
        "best_run_id": best["run_id"],
        "registered_as": f"{options.register_best_as}/{registered}" if registered else None,
    }
    print(json.dumps(outcome), flush=True)
    return outcome


def _join(options: TuneOptions, study, storage_url: str, n_trials: int, parent_run_id: str, started: float):
    """Add this machine's workers to a study whose lead is still running; their trials become its children."""
    import mlflow

    left = n_trials - started_trial_count(study)
    if left <= 0:
        print(f"study {study.study_name!r} already has its {n_trials} trials; nothing to join", flush=True)
        return {"parent_run_id": parent_run_id, "study_name": study.study_name, "joined": False}
    count = min(options.n_workers, left)
    print(
        f"joining study {study.study_name!r}: its lead run {parent_run_id} is still running and sums up; "
        f"{count} worker(s) here add child runs to it",
        flush=True,
    )
    # `mlflow run` opened a run for this command; it records that it only added workers.
    own_run = mlflow.start_run() if os.environ.get("MLFLOW_RUN_ID") else contextlib.nullcontext()
    with own_run:
        if os.environ.get("MLFLOW_RUN_ID"):
            mlflow.set_tags({"medimg.tune.role": "joined", "medimg.tune.parent_run_id": parent_run_id})
        workers = _workers(
            options,
            storage_url=storage_url,
            study_name=study.study_name,
            n_trials=n_trials,
            parent_run_id=parent_run_id,
            experiment_id=str(study.user_attrs.get(EXPERIMENT_ATTR, "")),
            # Unseeded: a joining machine would otherwise replay the lead's first samples.
            seeded=False,
            started=started,
            count=count,
        )
        codes = run_workers(workers)
    outcome = {"parent_run_id": parent_run_id, "study_name": study.study_name, "joined": True, "exit_codes": codes}
    print(json.dumps(outcome), flush=True)
    return outcome


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a stopped process fails its trial and ends its runs instead of vanishing."""

    def interrupt(signal_number, frame):
        raise KeyboardInterrupt(f"signal {signal_number}")

    signal.signal(signal.SIGTERM, interrupt)


def run_tune_command(values: dict[str, Any]) -> int:
    """`python -m train tune`: ConfigError propagates (exit 2); a search without a usable result exits 1."""
    options = TuneOptions.from_dict(values)
    # Validate the search space before anything heavy is imported.
    space = SearchSpace.load(options.space, data_dir=options.data_dir)
    if options.sampler == "grid":
        space.grid()
    # A lead stopped with SIGTERM (a scheduler, `kill`) stops its workers too instead of orphaning them.
    interrupt_on_sigterm()
    try:
        tune(options)
    except TuningFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; running trials are marked FAIL and their runs FAILED", file=sys.stderr)
        return 130
    return 0


def run_worker_command(values: dict[str, Any]) -> int:
    """`python -m train tune-worker`: one worker process; see train/tune_worker.py."""
    options = WorkerOptions.from_dict(values)
    SearchSpace.load(options.space, data_dir=options.data_dir)
    from train.tune_worker import run_worker

    try:
        return run_worker(options)
    except KeyboardInterrupt:
        # Optuna has marked the trial FAIL and the trainer ended its run FAILED; the lead reports the stop.
        return 130
