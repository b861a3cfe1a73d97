"""Lists the images of a batch input (a folder, a CSV/Parquet list with a `path` column, a `prepare` folder) one at a time; reads files, writes nothing.

Each image is an `Item`: the `path` written to the output and a function that reads its bytes.
- A folder is searched recursively with training's file filter (`train.data.files.is_image_file`:
  PNG, JPEG, BMP, GIF, DICOM with or without extension; hidden files and DICOMDIR left out), in sorted
  order; `path` is the file's path relative to the folder, with `/` separators.
- A `.csv` or `.parquet` file lists the images in its `path` column; relative paths are read from the
  list's own folder and `path` is the text as listed.
- A folder written by `python -m train prepare` is scored on the images it stores (the PNG of each
  TFRecord, already resized to the prepared size), split by split; `path` is `<shard file>#<record id>`.
Items are produced lazily, so listing a 100,000-file archive holds one name at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from serve.contract import PATH_COLUMN
from train.data.files import is_image_file
from train.data.prepared import is_prepared, is_unfinished

LIST_SUFFIXES = (".csv", ".parquet")
# Rows of a path list read at a time.
LIST_CHUNK_ROWS = 10_000
PREPARED_SEPARATOR = "#"


@dataclass(frozen=True)
class Item:
    """One image to score: its `path` in the output and how to read its bytes (OSError when it cannot be read)."""

    path: str
    read: Callable[[], bytes]


def _read_file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


class FolderSource:
    """Every image file under a folder, recursively, in sorted order."""

    kind = "folder"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def files(self) -> Iterator[tuple[str, Path]]:
        """(relative path, file) of every image file, walking one sorted folder at a time."""
        for directory, subdirectories, names in os.walk(self.root):
            # Hidden folders (.git, .ipynb_checkpoints) and files (macOS ._x.png) hold no images, as in training.
            subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
            for name in sorted(names):
                file = Path(directory) / name
                if not name.startswith(".") and is_image_file(file):
                    yield file.relative_to(self.root).as_posix(), file

    def items(self) -> Iterator[Item]:
        for relative, file in self.files():
            yield Item(relative, _read_file(file))

    def paths(self) -> Iterator[str]:
        for relative, _ in self.files():
            yield relative

    def first(self) -> str | None:
        return next(self.paths(), None)


class ListSource:
    """The images named in the `path` column of a CSV or Parquet file, in the list's order."""

    kind = "list"

    def __init__(self, list_file: str | Path):
        self.list_file = Path(list_file)

    def paths(self) -> Iterator[str]:
        """The listed paths as written, read LIST_CHUNK_ROWS at a time; empty cells are left out."""
        if self.list_file.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(self.list_file).iter_batches(LIST_CHUNK_ROWS, columns=[PATH_COLUMN]):
                yield from (str(value) for value in batch.column(0).to_pylist() if value not in (None, ""))
            return
        import pandas as pd

        for chunk in pd.read_csv(
            self.list_file, usecols=[PATH_COLUMN], dtype=str, chunksize=LIST_CHUNK_ROWS, keep_default_na=False
        ):
            yield from (value for value in chunk[PATH_COLUMN].tolist() if value)

    def items(self) -> Iterator[Item]:
        base = self.list_file.parent
        for listed in self.paths():
            yield Item(listed, _read_file(base / listed))

    def first(self) -> str | None:
        return next(self.paths(), None)

    def columns(self) -> list[str]:
        """The list's column names (its header only)."""
        if self.list_file.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(self.list_file).names)
        import pandas as pd

        return list(pd.read_csv(self.list_file, nrows=0).columns)


class PreparedFolderSource:
    """The stored images of a `prepare` folder, split by split and shard by shard in manifest order."""

    kind = "prepared"

    def __init__(self, folder: str | Path):
        from train.data.prepared import read_manifest

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)

    def count(self) -> int:
        return sum(int(split["count"]) for split in self.manifest["splits"].values())

    def items(self) -> Iterator[Item]:
        import tensorflow as tf

        from train.data.prepared import ID_FEATURE, IMAGE_FEATURE
        from train.data.spec import SPLIT_NAMES

        features = {
            IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string),
            ID_FEATURE: tf.io.FixedLenFeature([], tf.string, default_value=""),
        }
        for split in SPLIT_NAMES:
            for shard in self.manifest["splits"][split]["shards"]:
                records = tf.data.TFRecordDataset(str(self.folder / shard["file"]))
                for position, serialized in enumerate(records.as_numpy_iterator()):
                    example = tf.io.parse_single_example(serialized, features)
                    record_id = example[ID_FEATURE].numpy().decode() or str(position)
                    data = example[IMAGE_FEATURE].numpy()
                    yield Item(f"{shard['file']}{PREPARED_SEPARATOR}{record_id}", lambda data=data: data)

    def first(self) -> str | None:
        return "" if self.count() else None


Source = FolderSource | ListSource | PreparedFolderSource


def open_source(input_path: str) -> Source:
    """The source of a batch input; ValueError with one line that says what is wrong and what is accepted."""
    path = Path(input_path)
    accepted = "a folder of images, a .csv or .parquet file with a `path` column, or a folder written by prepare"
    if not path.exists():
        raise ValueError(f"input {input_path} does not exist; give {accepted}")
    if path.is_dir():
        if is_unfinished(path):
            raise ValueError(
                f"input {input_path} holds an unfinished preparation; finish it with `python -m train prepare` first"
            )
        source: Source = PreparedFolderSource(path) if is_prepared(path) else FolderSource(path)
    elif path.suffix.lower() in LIST_SUFFIXES:
        source = ListSource(path)
        try:
            columns = source.columns()
        except Exception as error:  # pandas and pyarrow raise many types for unreadable lists.
            raise ValueError(f"input {input_path} cannot be read as a {path.suffix} list: {error}") from None
        if PATH_COLUMN not in columns:
            raise ValueError(f"input {input_path} has no `{PATH_COLUMN}` column (columns: {', '.join(columns[:10])})")
    else:
        raise ValueError(f"input {input_path} is neither a folder nor a .csv or .parquet list; give {accepted}")
    if source.first() is None:
        what = "lists no paths" if source.kind == "list" else "holds no images"
        raise ValueError(
            f"input {input_path} {what} (PNG, JPEG, BMP, GIF or DICOM files, searched recursively); check the path"
        )
    return source


def pending_count(source: Source, done: set[str]) -> int:
    """How many images of the source are not in `done` yet (for the progress bar; lists only names, reads no pixels)."""
    if isinstance(source, PreparedFolderSource):
        return max(0, source.count() - len(done))
    return sum(1 for path in source.paths() if path not in done)
