"""The PACS worker's memory: reads and writes one sqlite file in the state folder (hashed instance UIDs and what became of them, feed positions, the hashing key), nothing else.

An instance is `reported` once its SR and Secondary Capture were stored (STOW-RS answered success), with the version
of the SR template that wrote its report (SRs already stored are never rewritten: a ledger of an older worker keeps
`LEGACY_SR_TEMPLATE` for the images it reported), `failed`
when it cannot be scored (its reason is kept: it is never retried), `skipped` when it was not eligible
(looked at again when eligibility changes, counted once). UIDs are kept and logged only as keyed hashes
(HMAC-SHA256 under a random key created with the ledger), so neither the ledger nor the log holds a UID.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import secrets
import sqlite3
import time
from pathlib import Path

LEDGER_FILE = "ledger.sqlite"
REPORTED, FAILED, SKIPPED = "reported", "failed", "skipped"
# Hex characters of a hashed UID: 80 bits, no collisions in a hospital's lifetime of instances.
HASH_LENGTH = 20
# The SR template of the worker before the template column existed: a TID 1500 Comprehensive SR, private finding codes.
LEGACY_SR_TEMPLATE = "comprehensive-sr-1"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS instances (uid TEXT PRIMARY KEY, outcome TEXT NOT NULL, reason TEXT NOT NULL, "
    "model TEXT NOT NULL, at REAL NOT NULL, template TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS studies (uid TEXT PRIMARY KEY, instances INTEGER NOT NULL, at REAL NOT NULL)",
)


class LedgerBusy(RuntimeError):
    """Another worker holds the state folder."""


class Ledger:
    """The sqlite ledger of one state folder, held by one worker at a time (an exclusive lock on the file)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LEDGER_FILE
        # isolation_level=None: every statement commits at once; FULL: a commit is on disk before it returns.
        self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.connection.execute("PRAGMA synchronous=FULL")
        self._lock = open(self.path, "rb")  # noqa: SIM115 - held (and the lock with it) until close().
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise LedgerBusy(f"another worker uses the state folder {folder}; give each worker its own") from None
        for statement in SCHEMA:
            self.connection.execute(statement)
        self._add_template_column()
        key = self.meta("hash_key")
        if key is None:
            key = secrets.token_hex(32)
            self.set_meta("hash_key", key)
        self._key = bytes.fromhex(key)

    def _add_template_column(self) -> None:
        """A ledger written before SR template versions were recorded gets the column; its reported images are the
        legacy template's (they keep their Comprehensive SRs)."""
        columns = {row[1] for row in self.connection.execute("PRAGMA table_info(instances)")}
        if "template" in columns:
            return
        self.connection.execute("ALTER TABLE instances ADD COLUMN template TEXT NOT NULL DEFAULT ''")
        self.connection.execute("UPDATE instances SET template = ? WHERE outcome = ?", (LEGACY_SR_TEMPLATE, REPORTED))

    def close(self) -> None:
        self.connection.close()
        self._lock.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def hash(self, uid: str) -> str:
        """The keyed hash that stands for a UID in the ledger and the log."""
        return hmac.new(self._key, str(uid).strip().encode(), hashlib.sha256).hexdigest()[:HASH_LENGTH]

    def meta(self, key: str) -> str | None:
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def outcome(self, sop_uid: str) -> tuple[str, str] | None:
        """(outcome, reason) of an instance, or None when the worker has not decided about it."""
        row = self.connection.execute(
            "SELECT outcome, reason FROM instances WHERE uid = ?", (self.hash(sop_uid),)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def record(self, sop_uid: str, outcome: str, reason: str = "", model: str = "", template: str = "") -> None:
        """What became of an instance; `template`: the SR template version that wrote its report (reported only)."""
        self.connection.execute(
            "INSERT OR REPLACE INTO instances (uid, outcome, reason, model, at, template) VALUES (?, ?, ?, ?, ?, ?)",
            (self.hash(sop_uid), outcome, reason, model, time.time(), template),
        )

    def template(self, sop_uid: str) -> str | None:
        """The SR template version that reported an instance ('' when it was not reported), or None when unknown."""
        row = self.connection.execute("SELECT template FROM instances WHERE uid = ?", (self.hash(sop_uid),)).fetchone()
        return None if row is None else str(row[0])

    def templates(self) -> dict[str, int]:
        """Reported instances by the SR template version that wrote their report."""
        return dict(
            self.connection.execute(
                "SELECT template, COUNT(*) FROM instances WHERE outcome = ? GROUP BY template", (REPORTED,)
            ).fetchall()
        )

    def study_instances(self, study_uid: str) -> int | None:
        """How many instances the study had when the worker last finished it (the QIDO feed), or None."""
        row = self.connection.execute("SELECT instances FROM studies WHERE uid = ?", (self.hash(study_uid),)).fetchone()
        return None if row is None else int(row[0])

    def set_study_instances(self, study_uid: str, count: int) -> None:
        self.connection.execute(
            "INSERT OR REPLACE INTO studies (uid, instances, at) VALUES (?, ?, ?)",
            (self.hash(study_uid), int(count), time.time()),
        )

    def counts(self) -> dict[str, int]:
        """Instances by outcome."""
        return dict(self.connection.execute("SELECT outcome, COUNT(*) FROM instances GROUP BY outcome").fetchall())
