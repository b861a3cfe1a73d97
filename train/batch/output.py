"""Writes a batch job's rows as complete part files in the output folder and reads back what earlier jobs wrote there (the resume ledger).

The output is a folder, as Spark writes one: `part-00000.parquet`, `part-00001.parquet`, ... (or
`.csv` parts when the output's name ends in `.csv`). A part is written under a hidden temporary
name in the same folder, flushed to disk and renamed into place, so a job killed at any moment
leaves only complete parts (and a hidden temporary file that the next job removes). Readers such as
`pandas.read_parquet(output)` and `spark.read.parquet(output)` read every part and skip hidden files.
The ledger is the set of paths in those parts: a resumed job skips them, so every file ends with
exactly one row. Columns and types are fixed (serve.contract.batch_columns), whichever engine wrote a part.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from serve.contract import (
    ERROR_COLUMN,
    EXPLAINED_CLASS_COLUMN,
    FRAME_COLUMN,
    HEATMAP_COLUMN,
    MODEL_ID_COLUMN,
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    PATH_COLUMN,
    PREDICTED_COLUMN,
    SHA256_COLUMN,
)

PARQUET, CSV = "parquet", "csv"
PART_PATTERN = re.compile(r"part-(\d{5,})\.(parquet|csv)")
# Parts that Spark writes: part-00000-<uuid>-c000.snappy.parquet, part-00000-<uuid>-c000.csv.
SPARK_PART_PATTERN = re.compile(r"part-\d{5,}-.*\.(parquet|csv)")
TEMPORARY_PREFIX = ".writing-"
LOCK_NAME = ".medimg-batch.lock"
TEXT_COLUMNS = frozenset(
    {
        PATH_COLUMN,
        SHA256_COLUMN,
        ERROR_COLUMN,
        PREDICTED_COLUMN,
        MODEL_NAME_COLUMN,
        MODEL_VERSION_COLUMN,
        MODEL_ID_COLUMN,
        EXPLAINED_CLASS_COLUMN,
        HEATMAP_COLUMN,
    }
)


def output_format(output: str | Path) -> str:
    """csv when the output's name ends in .csv, else parquet."""
    return CSV if str(output).lower().rstrip("/").endswith(".csv") else PARQUET


def column_types(columns: Sequence[str]) -> dict[str, str]:
    """The type of each batch column: text, `frame` a 64-bit whole number, every probability and threshold a double."""
    return {
        name: "string" if name in TEXT_COLUMNS else "int64" if name == FRAME_COLUMN else "double" for name in columns
    }


def arrow_schema(columns: Sequence[str]):
    import pyarrow as pa

    kinds = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64()}
    return pa.schema([(name, kinds[kind]) for name, kind in column_types(columns).items()])


def part_files(folder: Path) -> list[Path]:
    """The complete part files in an output folder (this module's and Spark's), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and (PART_PATTERN.fullmatch(entry.name) or SPARK_PART_PATTERN.fullmatch(entry.name))
    )


def read_part(path: Path, columns: Sequence[str] | None = None):
    """One part as a pandas DataFrame (all columns, or `columns`)."""
    import pandas as pd

    if path.suffix == ".csv":
        frame = pd.read_csv(path, usecols=list(columns) if columns else None, dtype={PATH_COLUMN: str})
        frame = frame.fillna({name: "" for name in (ERROR_COLUMN,) if name in frame})
    else:
        frame = pd.read_parquet(path, columns=list(columns) if columns else None)
    if FRAME_COLUMN in frame:
        # Failed rows have no frame: a nullable whole number, not pandas' float.
        frame[FRAME_COLUMN] = frame[FRAME_COLUMN].astype("Int64")
    return frame


def read_output(output: str | Path):
    """Every row of a batch output folder, as one pandas DataFrame (parts in name order)."""
    import pandas as pd

    parts = [read_part(path) for path in part_files(Path(output))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


@dataclass
class Ledger:
    """What the parts already in an output folder hold: scored paths, the models that scored them, their columns."""

    paths: set[str] = field(default_factory=set)
    models: set[tuple[str, str, str]] = field(default_factory=set)
    columns: list[str] = field(default_factory=list)
    rows: int = 0
    parts: int = 0


def _part_columns(path: Path) -> list[str]:
    if path.suffix == ".csv":
        import pandas as pd

        return list(pd.read_csv(path, nrows=0).columns)
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def read_ledger(folder: Path) -> Ledger:
    """The ledger of an output folder: reads only the path and model columns of each part."""
    ledger = Ledger()
    identity = [MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN, MODEL_ID_COLUMN]
    for path in part_files(folder):
        columns = _part_columns(path)
        if not ledger.columns:
            ledger.columns = columns
        frame = read_part(path, [PATH_COLUMN, *identity]).fillna("")
        ledger.paths.update(frame[PATH_COLUMN].astype(str).tolist())
        ledger.models.update(tuple(str(value) for value in row) for row in frame[identity].drop_duplicates().values)
        ledger.rows += len(frame)
        ledger.parts += 1
    return ledger


def remove_temporary_files(folder: Path) -> int:
    """Delete the hidden parts that a killed job left half-written; return how many there were."""
    removed = 0
    for entry in folder.glob(f"{TEMPORARY_PREFIX}*"):
        entry.unlink(missing_ok=True)
        removed += 1
    return removed


def remove_parts(folder: Path) -> int:
    """Delete the complete parts of an earlier job (resume=false); return how many."""
    parts = part_files(folder)
    for path in parts:
        path.unlink()
    for marker in ("_SUCCESS",):
        (folder / marker).unlink(missing_ok=True)
    return len(parts)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the output folder's lock while a job writes to it; a second job on the same folder fails at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"output {folder} is being written by another batch job; wait for it or choose another output"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class PartWriter:
    """Buffers rows and writes every `part_size` of them as one complete part file (temporary name, then rename)."""

    def __init__(self, folder: Path, columns: Sequence[str], part_size: int, fmt: str = PARQUET):
        self.folder, self.columns, self.part_size, self.format = folder, list(columns), part_size, fmt
        self.buffer: list[dict] = []
        self.written_rows = 0
        self.written_parts: list[Path] = []
        numbers = [int(match[1]) for entry in part_files(folder) if (match := PART_PATTERN.fullmatch(entry.name))]
        self.next_index = max(numbers, default=-1) + 1

    def add(self, rows: Sequence[dict]) -> None:
        self.buffer.extend(rows)
        while len(self.buffer) >= self.part_size:
            self._write(self.buffer[: self.part_size])
            del self.buffer[: self.part_size]

    def close(self) -> None:
        """Write the rows still buffered as the last part."""
        if self.buffer:
            self._write(self.buffer)
            self.buffer = []

    def _write(self, rows: Sequence[dict]) -> None:
        import pandas as pd

        final = self.folder / f"part-{self.next_index:05d}.{self.format}"
        temporary = self.folder / f"{TEMPORARY_PREFIX}{final.name}"
        frame = pd.DataFrame(list(rows), columns=self.columns)
        if self.format == CSV:
            frame.to_csv(temporary, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = arrow_schema(self.columns)
            pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), temporary)
        with open(temporary, "rb+") as handle:
            # On disk before the rename makes it visible: a crash never leaves a renamed but empty part.
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        self.next_index += 1
        self.written_rows += len(rows)
        self.written_parts.append(final)
