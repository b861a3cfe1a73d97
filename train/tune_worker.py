"""One tuning worker process (`python -m train tune-worker`): reads the shared Optuna study, writes its trials and one child MLflow run per trial.

The worker imports TensorFlow once and runs trials until the study holds
`n_trials` trials in total, counted over every worker on every machine:

- `MaxTrialsCallback(n_trials, states=STARTED_STATES)` stops this worker after a
  trial once the study's running and finished trials reach `n_trials`;
- `BudgetedRDBStorage` refuses to create trial number `n_trials` at all, which
  closes the race where two workers finish together and both start one more.

Pruning: `TrialPruningCallback` reports the search space's metric to Optuna
after every epoch. When the pruner says stop, it sets `model.stop_training`, so
training ends cleanly after that epoch: the trainer still logs the curves and
the model, the child run ends FINISHED and is tagged `medimg.tune.state=PRUNED`
(with `medimg.tune.pruned_epoch`), and the Optuna trial is marked PRUNED.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import keras
import mlflow
import optuna
from optuna.storages._rdb import models as optuna_models
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from train.search_space import SearchSpace
from train.tune import TRIAL_RUN_ATTR, WorkerOptions, interrupt_on_sigterm, make_pruner, make_sampler, open_storage

STARTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
ORPHAN_POLL_S = 5.0


class TrialBudgetSpent(RuntimeError):
    """The study already holds its n_trials trials, so this worker starts no more."""


class BudgetedRDBStorage(optuna.storages.RDBStorage):
    """An RDBStorage that refuses to create a trial once the study holds `max_trials` trials (any state).

    Optuna numbers a new trial inside one transaction that first locks the study
    row (SELECT ... FOR UPDATE on PostgreSQL and MySQL); counting the study's
    trials in that same transaction makes the limit exact across processes and
    machines. SQLite ignores row locks, so for SQLite a lock file (keyed by the
    database path) serialises trial creation among the workers of one machine.
    This relies on Optuna 5.0's trial-creation step, pinned in requirements.txt.
    """

    def __init__(self, url: str, *, max_trials: int | None = None, **storage_arguments):
        super().__init__(url, **storage_arguments)
        self.max_trials = max_trials

    def _get_prepared_new_trial(self, study_id, template_trial, session):
        if self.max_trials is not None:
            count = (
                session.query(optuna_models.TrialModel).filter(optuna_models.TrialModel.study_id == study_id).count()
            )
            if count >= self.max_trials:
                raise TrialBudgetSpent(f"the study already holds its {self.max_trials} trials")
        return super()._get_prepared_new_trial(study_id, template_trial, session)

    def _create_new_trial(self, study_id, template_trial=None):
        with self._sqlite_creation_lock():
            return super()._create_new_trial(study_id, template_trial)

    @contextlib.contextmanager
    def _sqlite_creation_lock(self):
        database = self.engine.url.database if self.engine.name == "sqlite" else None
        if not database or database == ":memory:":
            yield
            return
        # The lock lives in the temporary folder, keyed by the database path, so it leaves no file next to the database.
        digest = hashlib.sha256(str(Path(database).absolute()).encode()).hexdigest()[:16]
        with open(Path(tempfile.gettempdir()) / f"medimg-tune-{digest}.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


class TrialPruningCallback(keras.callbacks.Callback):
    """Reports `metric` to the Optuna trial after each epoch and stops training when the pruner says so.

    It runs after the trainer's own callbacks, so `val_auroc` is in the logs. The
    trial's objective value is the best epoch value of `metric`.
    """

    def __init__(self, trial, metric: str, direction: str, *, run_tags: dict[str, str] | None = None):
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.maximize = direction == "maximize"
        self.run_tags = dict(run_tags or {})
        self.values: list[float] = []
        self.pruned_epoch: int | None = None
        self.run_id: str | None = None

    def on_train_begin(self, logs=None):
        run = mlflow.active_run()
        if run is not None:
            self.run_id = run.info.run_id
            self.trial.set_user_attr(TRIAL_RUN_ATTR, self.run_id)
            if self.run_tags:
                mlflow.set_tags(self.run_tags)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.metric not in logs:
            available = ", ".join(sorted(key for key in logs if key.startswith("val_")))
            raise ValueError(
                f"metric {self.metric!r} is not in the epoch logs (available: {available}); "
                "choose one of them as metric in the search space"
            )
        value = float(logs[self.metric])
        self.values.append(value)
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            self.model.stop_training = True

    @property
    def pruned(self) -> bool:
        return self.pruned_epoch is not None

    @property
    def best_value(self) -> float:
        finite = [value for value in self.values if math.isfinite(value)]
        if not finite:
            return math.nan
        return max(finite) if self.maximize else min(finite)


class TrialObjective:
    """Optuna objective: sample a TrainConfig, train it as a child run of the parent, return the best metric."""

    def __init__(self, space: SearchSpace, options: WorkerOptions):
        self.space = space
        self.options = options
        self.trials_run = 0

    def __call__(self, trial) -> float:
        # Each trial builds a new model; clearing Keras' global state keeps layer names and memory from piling up.
        keras.backend.clear_session()
        self.trials_run += 1
        params = self.space.suggest(trial)
        config = self.space.trial_config(params, run_name=f"trial-{trial.number}")
        tags = {
            "medimg.tune.study_name": self.options.study_name,
            "medimg.tune.trial": str(trial.number),
            "medimg.tune.worker": str(self.options.worker_index),
        }
        callback = TrialPruningCallback(trial, self.space.metric, self.space.direction, run_tags=tags)
        client = mlflow.MlflowClient()

        from train.trainer import train

        try:
            run_id = train(
                config,
                extra_callbacks=[callback],
                parent_run_id=self.options.parent_run_id or None,
                experiment_id=self.options.experiment_id or None,
            )
        except (Exception, KeyboardInterrupt):
            # The trainer ended the run FAILED; the tag makes failed trials easy to filter next to pruned ones.
            if callback.run_id:
                client.set_tag(callback.run_id, "medimg.tune.state", "FAIL")
            raise
        if callback.pruned:
            client.set_tag(run_id, "medimg.tune.state", "PRUNED")
            client.set_tag(run_id, "medimg.tune.pruned_epoch", str(callback.pruned_epoch))
            raise optuna.TrialPruned(
                f"{self.space.metric}={callback.values[-1]:.4f} after epoch {callback.pruned_epoch + 1} "
                f"(child run {run_id})"
            )
        value = callback.best_value
        client.set_tag(run_id, "medimg.tune.state", "COMPLETE" if math.isfinite(value) else "FAIL")
        return value


class ProgressReport:
    """Optuna callback: one line per finished trial with the study's progress and best value so far."""

    def __init__(self, n_trials: int):
        self.n_trials = n_trials

    def __call__(self, study, trial) -> None:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        completed = [item for item in finished if item.state == TrialState.COMPLETE]
        best = (
            f"best {study.best_value:.4f} (trial {study.best_trial.number})" if completed else "no completed trial yet"
        )
        value = "" if trial.value is None else f" {trial.value:.4f}"
        print(
            f"progress: trial {trial.number} {trial.state.name.lower()}{value}; "
            f"{len(finished)}/{self.n_trials} trials finished; {best}",
            flush=True,
        )


def stop_when_orphaned(poll_s: float = ORPHAN_POLL_S) -> None:
    """Stop this worker (as SIGTERM would) when the process that started it is gone, so no worker trains for nobody."""
    starter = os.getppid()

    def watch() -> None:
        while os.getppid() == starter:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def run_worker(options: WorkerOptions) -> int:
    """Run trials of the shared study until it holds n_trials trials (or the timeout passes); return 0."""
    interrupt_on_sigterm()
    stop_when_orphaned()
    space = SearchSpace.load(options.space, data_dir=options.data_dir)
    storage = open_storage(options.storage, storage_class=BudgetedRDBStorage, max_trials=options.n_trials)
    study = optuna.load_study(
        study_name=options.study_name,
        storage=storage,
        sampler=make_sampler(options.sampler, space, options.seed),
        pruner=make_pruner(options.pruner, space),
    )
    objective = TrialObjective(space, options)
    # The storage raises TrialBudgetSpent when another worker took the last trial first.
    with contextlib.suppress(TrialBudgetSpent):
        study.optimize(
            objective,
            timeout=options.timeout or None,
            # One trial's failure (say, out of memory at the largest batch size) must not end the search;
            # Optuna records it as FAIL with the error, and the child run ends FAILED.
            catch=(Exception,),
            callbacks=[MaxTrialsCallback(options.n_trials, states=STARTED_STATES), ProgressReport(options.n_trials)],
            gc_after_trial=True,
        )
    print(f"worker {options.worker_index}: ran {objective.trials_run} trial(s); stopping", flush=True)
    return 0
