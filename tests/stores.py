"""Sqlite tracking stores for tests: a new store starts as a copy of one empty, already migrated database.

MLflow creates a new sqlite store by running every one of its schema migrations, about 4 s of CPU each time; the
suite opens dozens of new stores, in the test processes and in the `mlflow run`, `python -m train` and server
subprocesses they start. A copy of a migrated database holds the same tables at the same schema revision, and MLflow
then adds the Default experiment itself, with the artifact location it would have given it, since the template has
none. Reads and writes tmp files only.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path


@functools.cache
def empty_store_template() -> Path:
    """One migrated sqlite tracking database without experiments, made once per process in a folder of its own
    that goes when the process ends."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="medimg-store-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    database = folder / "template.db"
    with _quiet_migrations():
        store = SqlAlchemyStore(f"sqlite:///{database}", str(folder / "mlruns"))
    store.engine.dispose()
    with contextlib.closing(sqlite3.connect(database)) as connection:
        # The store made the Default experiment with the template's artifact location; a copy's store makes its own.
        connection.execute("DELETE FROM experiments")
        connection.commit()
    return database


@contextlib.contextmanager
def _quiet_migrations():
    """MLflow logs "Creating initial MLflow database tables..." to stderr; a test's captured stderr stays its own."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def seed_database(database: Path) -> None:
    """A database file that does not exist yet becomes a copy of the empty template (existing ones are left alone)."""
    if not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store_template(), database)


def sqlite_store(database: Path) -> str:
    """The tracking URI `sqlite:///<database>` of a store ready to use: a new one is a copy of the migrated template."""
    database = Path(database).absolute()
    seed_database(database)
    return f"sqlite:///{database}"
