"""The Spark batch engine: reads a folder's images with Spark's `binaryFile` source and scores them with `mlflow.pyfunc.spark_udf`; writes Parquet (or CSV) parts into the output folder.

The route MLflow itself documents for scoring at scale: the registered model becomes a pandas UDF
(`env_manager="local"`: workers use their installed packages) that runs the model's own pyfunc on Arrow
batches, so a file gets the numbers `mlflow models serve` and the local engine give it. Around it:
- listing: on the driver, with the local engine's own listing (train.data.archive.FolderSource: training's
  file filter, extension-less DICOM included); the files the output holds already are left out before
  any content is read (resume), and empty files, which Spark's file scans skip, get their rows here;
- checking: a pandas UDF runs the local engine's own `prepare` (read, SHA-256, header checks, decode)
  on every file; a file the model refuses gets its `error` row there, and reaches the model UDF as a
  1-pixel placeholder whose answer is dropped, so one bad file never fails a Spark task of thousands;
- output: appended with Spark's committer (each task's file appears whole at commit; a killed job leaves
  only `_temporary`, which readers skip), with the same columns and types as the local engine's parts.
Each image is decoded twice (once to check it, once in the model's UDF), the price of keeping the
model's UDF MLflow's own. The code of medimg reaches the workers as a zip (SparkContext.addPyFile).
"""

from __future__ import annotations

import base64
import io
import os
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from serve.contract import (
    ERROR_COLUMN,
    FRAME_COLUMN,
    FRAME_PARAM,
    IMAGE_COLUMN,
    MODEL_ID_COLUMN,
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    PATH_COLUMN,
    SHA256_COLUMN,
)
from train.batch.local import Counts
from train.batch.output import column_types, output_format, part_files, read_part
from train.settings import BatchSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
# The packages the workers import (the check UDF runs train.batch.local on the model's serve code).
SHIPPED_PACKAGES = ("serve", "train", "models")
# Rows per Arrow batch handed to a UDF: a few model batches, so a worker holds little image data at once.
BATCHES_PER_ARROW_BATCH = 4
# What Spark should count for opening one image file when it sizes its tasks.
IMAGE_OPEN_COST_BYTES = 64 * 1024
CHECK = "_check"
ANSWER = "_answer"
# Columns of Spark's binaryFile source (its own names, not medimg's).
BINARY_PATH, BINARY_CONTENT = "path", "content"


def spark_session(master: str, arrow_rows: int):
    """The active SparkSession, or a new one on `master`; True when this call created it."""
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        # Local workers run this interpreter (its packages); a cluster's come from PYSPARK_PYTHON (docs/BATCH.md).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:
        active.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_rows))
        return active, False
    session = (
        SparkSession.builder.master(master)
        .appName("medimg batch")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_rows))
        .getOrCreate()
    )
    return session, True


def ship_code(spark, folder: Path) -> None:
    """Zip medimg's packages and add them to every worker's Python path."""
    archive = folder / "medimg_code.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for package in SHIPPED_PACKAGES:
            for path in (REPO_ROOT / package).rglob("*.py"):
                handle.write(path, path.relative_to(REPO_ROOT).as_posix())
    spark.sparkContext.addPyFile(str(archive))


def input_uri(input_path: str) -> str:
    return input_path if "://" in input_path else Path(input_path).resolve().as_uri()


def relative_to_root(uri: str, root_uri: str) -> str:
    """A file's path relative to the input folder, from the URIs Spark and the settings give (Spark escapes %20)."""
    path = unquote(urlparse(uri).path)
    root = unquote(urlparse(root_uri).path).rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else path


def placeholder_image() -> str:
    """A 1x1 black PNG, base64: what the model's UDF gets in place of a file that failed its check."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def answer_type(columns: list[str]):
    """The Spark struct of the model UDF's answer: the batch columns that the served answer fills."""
    from pyspark.sql import types

    kinds = {"string": types.StringType(), "int64": types.LongType(), "double": types.DoubleType()}
    own = {PATH_COLUMN, SHA256_COLUMN, ERROR_COLUMN, MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN, MODEL_ID_COLUMN}
    fields = [types.StructField(name, kinds[kind]) for name, kind in column_types(columns).items() if name not in own]
    return types.StructType(fields)


@dataclass
class Listing:
    """The input's image files: the URIs to score, the empty ones (relative paths) and how many the output has."""

    uris: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    resumed: int = 0


def list_input(input_path: str, done: set[str]) -> Listing:
    """List the input on the driver with the local engine's own listing (training's file filter, sorted).

    Spark's file scans skip files of length 0, so those are set aside for the local engine's prepare(); files
    the output holds already are left out before Spark reads any content.
    """
    from train.data.archive import FolderSource

    listing = Listing()
    for relative, file in FolderSource(input_path).files():
        if relative in done:
            listing.resumed += 1
        elif file.stat().st_size == 0:
            listing.empty.append(relative)
        else:
            listing.uris.append(file.resolve().as_uri())
    return listing


def empty_file_rows(paths: list[str], identity: dict[str, str], config: dict, frame: int) -> list[dict]:
    """The rows of empty files, with the error the local engine gives them."""
    from serve.pyfunc import ClassifierConfig, ImageClassifier
    from train.batch.local import LocalEngine
    from train.data.archive import Item

    classifier = ImageClassifier()
    classifier.config = ClassifierConfig(**config)
    engine = LocalEngine(classifier, identity, batch_size=1, workers=1, frame=frame)
    rows = []
    for path in paths:
        prepared = engine.prepare(Item(path, lambda: b""))
        row = {PATH_COLUMN: path, SHA256_COLUMN: prepared.sha256, FRAME_COLUMN: None, ERROR_COLUMN: prepared.error}
        rows.append(row | identity)
    return rows


def checked(files, root_uri: str, config: dict, frame: int, workers: int):
    """The files with a `_check` struct (relative path, sha256, frame, error) from the local engine's own prepare()."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(f"{PATH_COLUMN} string, {SHA256_COLUMN} string, {FRAME_COLUMN} long, {ERROR_COLUMN} string")
    def check(uris, contents):
        from concurrent.futures import ThreadPoolExecutor

        import pandas as pd

        from serve.pyfunc import ClassifierConfig, ImageClassifier
        from train.batch.local import LocalEngine
        from train.data.archive import Item

        classifier = ImageClassifier()
        classifier.config = ClassifierConfig(**config)
        engine = LocalEngine(classifier, {}, batch_size=1, workers=1, frame=frame)
        items = [
            Item(relative_to_root(uri, root_uri), lambda data=bytes(data): data)
            for uri, data in zip(uris, contents, strict=True)
        ]
        with ThreadPoolExecutor(workers) as pool:
            prepared = list(pool.map(engine.prepare, items))
        return pd.DataFrame(
            {
                PATH_COLUMN: [entry.path for entry in prepared],
                SHA256_COLUMN: [entry.sha256 for entry in prepared],
                FRAME_COLUMN: pd.array([entry.frame for entry in prepared], dtype="Int64"),
                ERROR_COLUMN: [entry.error or None for entry in prepared],
            }
        )

    return files.withColumn(CHECK, check(BINARY_PATH, BINARY_CONTENT))


def scored_rows(
    spark, root_uri: str, uris: list[str], settings: BatchSettings, model, config: dict, columns: list[str]
):
    """The output rows: the model UDF's answer for files that passed their check, the check's error for the others."""
    import mlflow
    from pyspark.sql import functions

    from serve.pyfunc import decode_threads

    failed = functions.col(f"{CHECK}.{ERROR_COLUMN}").isNotNull()
    image = functions.when(failed, functions.lit(placeholder_image())).otherwise(functions.base64(BINARY_CONTENT))
    predict = mlflow.pyfunc.spark_udf(
        spark,
        model.load_uri,
        env_manager="local",
        result_type=answer_type(columns),
        params={FRAME_PARAM: settings.frame},
    )
    # Spark counts 4 MB per file when it packs files into tasks, which puts 32 images in a task; an image
    # costs about its own bytes, so tasks get thousands and the per-task start-up stops dominating.
    spark.conf.set("spark.sql.files.openCostInBytes", str(IMAGE_OPEN_COST_BYTES))
    files = spark.read.format("binaryFile").load(uris)
    answered = checked(files, root_uri, config, settings.frame, settings.workers or decode_threads()).withColumn(
        ANSWER, predict(functions.struct(image.alias(IMAGE_COLUMN)))
    )
    identity = {MODEL_NAME_COLUMN: model.name, MODEL_VERSION_COLUMN: model.version, MODEL_ID_COLUMN: model.model_id}
    selected = []
    for name in columns:
        if name in (PATH_COLUMN, SHA256_COLUMN, FRAME_COLUMN):
            selected.append(functions.col(f"{CHECK}.{name}").alias(name))
        elif name == ERROR_COLUMN:
            selected.append(functions.coalesce(functions.col(f"{CHECK}.{name}"), functions.lit("")).alias(name))
        elif name in identity:
            selected.append(functions.lit(identity[name]).alias(name))
        else:
            selected.append(functions.when(failed, None).otherwise(functions.col(f"{ANSWER}.{name}")).alias(name))
    return answered.select(*selected)


def count_new_rows(output: Path, before: set[Path]) -> Counts:
    """Scored and failed-by-reason counts of the parts this job added (read back from the output)."""
    counts = Counts()
    for path in part_files(output):
        if path in before:
            continue
        errors = read_part(path, [ERROR_COLUMN])[ERROR_COLUMN].fillna("").astype(str)
        counts.scored += int((errors == "").sum())
        counts.failed.update(Counter(error.split(":", 1)[0] for error in errors if error))
    return counts


def score_with_spark(settings: BatchSettings, model, config, columns: list[str], done: set[str]) -> Counts:
    """Score settings.input with Spark on settings.spark_master into settings.output; return the counts."""
    from dataclasses import asdict

    from train.batch.local import model_identity
    from train.batch.output import PartWriter

    output = Path(settings.output)
    spark, created = spark_session(settings.spark_master, settings.batch_size * BATCHES_PER_ARROW_BATCH)
    try:
        with tempfile.TemporaryDirectory(prefix="medimg-spark-") as temporary:
            ship_code(spark, Path(temporary))
            root = input_uri(settings.input)
            listing = list_input(settings.input, done)
            before = set(part_files(output))
            if listing.uris:
                rows = scored_rows(spark, root, listing.uris, settings, model, asdict(config), columns)
                writer = rows.write.mode("append")
                if output_format(settings.output) == "csv":
                    writer.option("header", "true").csv(str(output.resolve()))
                else:
                    writer.parquet(str(output.resolve()))
            if listing.empty:
                identity = model_identity(model.name, model.version, model.model_id)
                part = PartWriter(output, columns, len(listing.empty), output_format(settings.output))
                part.add(empty_file_rows(listing.empty, identity, asdict(config), settings.frame))
                part.close()
            counts = count_new_rows(output, before)
            counts.resumed = listing.resumed
            print(f"spark ({settings.spark_master}) wrote {counts.scored + counts.failed_total} row(s)", flush=True)
            return counts
    finally:
        if created:
            spark.stop()
