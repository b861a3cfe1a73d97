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
import math

import keras
import mlflow
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from train.settings import TuneWorkerSettings
from train.tracking import names
from train.tuning.budget import BudgetedRDBStorage, TrialBudgetSpent
from train.tuning.processes import interrupt_on_sigterm, stop_when_orphaned
from train.tuning.space import SearchSpace
from train.tuning.study import TRIAL_RUN_ATTR, make_pruner, make_sampler, open_storage

STARTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


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


# The settings that decide which images a trial sees: trials that agree on them share one loaded dataset.
DATA_SETTINGS = (
    "dataset",
    "data_dir",
    "image_size",
    "seed",
    "max_examples",
    "synthetic_task",
    "validation_fraction",
    "view",
)


class TrialObjective:
    """Optuna objective: sample main settings, train them as a child run of the parent, return the best metric.

    The worker reuses the training stages: the dataset is loaded once and kept while the
    trials' data settings stay the same (they usually do: only model settings are tuned).
    """

    def __init__(self, space: SearchSpace, options: TuneWorkerSettings):
        self.space = space
        self.options = options
        self.trials_run = 0
        self.data_key: tuple | None = None
        self.data = None

    def dataset_for(self, settings):
        """The loaded dataset of `settings`, loading it only when the data settings changed."""
        from train.job.stages import load_data

        key = tuple(getattr(settings, name) for name in DATA_SETTINGS)
        if key != self.data_key:
            # Dropped first, so two datasets are never in memory together.
            self.data, self.data_key = None, None
            self.data, self.data_key = load_data(settings), key
        return self.data

    def __call__(self, trial) -> float:
        # Each trial builds a new model; clearing Keras' global state keeps layer names and memory from piling up.
        keras.backend.clear_session()
        self.trials_run += 1
        params = self.space.suggest(trial)
        settings = self.space.trial_settings(params, run_name=f"trial-{trial.number}")
        tags = {
            names.TUNE_STUDY_NAME_TAG: self.options.study_name,
            names.TUNE_TRIAL_TAG: str(trial.number),
            names.TUNE_WORKER_TAG: str(self.options.worker_index),
        }
        callback = TrialPruningCallback(trial, self.space.metric, self.space.direction, run_tags=tags)
        client = mlflow.MlflowClient()

        from train.job.trainer import train

        try:
            run_id = train(
                settings,
                callbacks=[callback],
                data=self.dataset_for(settings),
                parent_run_id=self.options.parent_run_id or None,
                experiment_id=self.options.experiment_id or None,
            ).run_id
        except (Exception, KeyboardInterrupt):
            # The trainer ended the run FAILED; the tag makes failed trials easy to filter next to pruned ones.
            if callback.run_id:
                client.set_tag(callback.run_id, names.TUNE_STATE_TAG, "FAIL")
            raise
        if callback.pruned:
            client.set_tag(run_id, names.TUNE_STATE_TAG, "PRUNED")
            client.set_tag(run_id, names.TUNE_PRUNED_EPOCH_TAG, str(callback.pruned_epoch))
            raise optuna.TrialPruned(
                f"{self.space.metric}={callback.values[-1]:.4f} after epoch {callback.pruned_epoch + 1} "
                f"(child run {run_id})"
            )
        value = callback.best_value
        client.set_tag(run_id, names.TUNE_STATE_TAG, "COMPLETE" if math.isfinite(value) else "FAIL")
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


def run_worker(options: TuneWorkerSettings) -> int:
    """Run trials of the shared study until it holds n_trials trials (or the timeout passes); return 0."""
    interrupt_on_sigterm()
    stop_when_orphaned()
    space = SearchSpace.load(options.space, data_dir=options.data_dir)
    storage = open_storage(options.storage, storage_class=BudgetedRDBStorage, max_trials=options.n_trials)
    study = optuna.load_study(
        study_name=options.study_name,
        storage=storage,
        sampler=make_sampler(options.sampler, space, options.seed if options.seed >= 0 else None),
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


def run(options: TuneWorkerSettings) -> int:
    """`python -m train tune-worker`: one worker process."""
    SearchSpace.load(options.space, data_dir=options.data_dir)
    try:
        return run_worker(options)
    except KeyboardInterrupt:
        # Optuna has marked the trial FAIL and the trainer ended its run FAILED; the lead reports the stop.
        return 130
