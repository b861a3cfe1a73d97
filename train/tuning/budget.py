"""An Optuna RDB storage that never holds more trials than the search's budget: reads and writes the study's trials table."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
from pathlib import Path

import optuna
from optuna.storages._rdb import models as optuna_models


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
