"""The shared Optuna study of a search: reads and writes its storage (SQLite or PostgreSQL), samplers, pruners and the attributes that tie it to MLflow.

Nothing here imports Optuna or SQLAlchemy at module level, so `python -m train tune`
validates its settings without them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from serve.common import ConfigError, first_line
from train.settings import DEFAULT_TUNE_STORAGE_FILE
from train.tuning.space import SearchSpace

# SQLite serialises writers; several workers wait this long for the lock instead of failing at once.
SQLITE_LOCK_TIMEOUT_S = 60
# Workers write a heartbeat while a trial runs; a trial whose worker died is failed after the grace period.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120
WAIT_POLL_S = 5.0
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


def resolve_storage_url(storage: str) -> str:
    """The storage URL workers share: the given one, or an absolute sqlite URL of tune.db in the working directory."""
    if storage:
        return storage
    return f"sqlite:///{Path.cwd().absolute() / DEFAULT_TUNE_STORAGE_FILE}"


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
            detail = first_line(error, limit=None)
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
