"""`python -m train batch`: scores an archive with a registered model into an output folder of part files; writes one MLflow run with counts, speed and (with labels) evaluate's metrics.

Order of work, so that every mistake fails before the expensive part: settings (train.settings.BatchSettings:
input, output, engine), the model URI resolved (serve.model_uri), the output folder locked and its
ledger read (resume; a different model or other columns there is a mistake), then the run opens, the
model loads, labelled input is checked for its back-test, and the engine scores what is not in the
output yet. The run is named after the version it scored and carries counts and failure reasons only:
paths stay in the output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from serve.common import ConfigError
from serve.contract import batch_columns
from serve.model_uri import ResolvedModel
from train.batch.output import (
    Ledger,
    PartWriter,
    locked,
    output_format,
    part_files,
    read_ledger,
    remove_parts,
    remove_temporary_files,
)
from train.settings import BatchSettings
from train.tracking import names

logger = logging.getLogger("medimg.batch")

# The output is logged as an artifact of the run only while its parts total at most this much.
ARTIFACT_LIMIT_BYTES = 10 * 2**20


@dataclass
class BatchResult:
    """What a batch job did: its run, the counts, its speed and, with labels, the back-test metrics."""

    run_id: str
    scored: int
    resumed: int
    failed: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return (self.scored + sum(self.failed.values())) / self.seconds if self.seconds > 0 else 0.0


def resolve(model_uri: str) -> ResolvedModel:
    from serve.model_uri import ModelUriError, resolve_model_uri

    try:
        return resolve_model_uri(model_uri)
    except ModelUriError as error:
        raise ConfigError(str(error)) from None


def identity_of(model: ResolvedModel) -> tuple[str, str, str]:
    return (model.name, model.version, model.model_id)


def check_ledger(ledger: Ledger, model: ResolvedModel, output: str) -> None:
    """A resumed output must hold rows of this model version only, or the archive would mix two models' scores."""
    others = ledger.models - {identity_of(model)}
    if others:
        name, version, model_id = sorted(others)[0]
        label = f"{name} version {version}" if name else model_id or "another model"
        raise ConfigError(
            f"output {output} holds rows scored by {label}, not {model.label}; choose another output, "
            "or resume=false to replace them"
        )


def open_output(settings: BatchSettings, folder: Path) -> Ledger:
    """Clear what a killed job left half-written (and with resume=false the earlier parts); the ledger of the rest."""
    removed = remove_temporary_files(folder)
    if removed:
        print(f"removed {removed} part file(s) that a stopped job left unfinished", flush=True)
    if not settings.resume:
        deleted = remove_parts(folder)
        if deleted:
            print(f"resume=false: deleted the {deleted} part file(s) of the earlier job", flush=True)
    return read_ledger(folder)


def score_archive(settings: BatchSettings) -> BatchResult:
    """Score settings.input into settings.output in one MLflow run; see the module docstring for the order of work."""
    model = resolve(settings.model_uri)
    folder = Path(settings.output)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(folder))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        ledger = open_output(settings, folder)
        check_ledger(ledger, model, settings.output)
        return _score_in_run(settings, model, folder, ledger)


def _score_in_run(settings: BatchSettings, model: ResolvedModel, folder: Path, ledger: Ledger) -> BatchResult:
    import mlflow
    from mlflow.tracking import MlflowClient

    from train.batch.backtest import plan_back_test
    from train.release.evaluate import load_model
    from train.tracking.experiments import medimg_run

    with medimg_run(f"batch {model.label}", name=settings.run_name) as run:
        record_run(run.info.run_id, settings, model)
        classifier = load_model(model).classifier
        config = classifier.config
        columns = batch_columns(config.task, config.class_names, explain=settings.explain)
        if ledger.columns and ledger.columns != columns:
            raise ConfigError(
                f"output {settings.output} holds parts with other columns ({', '.join(ledger.columns[:6])}, ...); "
                "choose another output, or resume=false to replace them"
            )
        back_test = plan_back_test(settings, model, classifier, MlflowClient())
        started, cpu_started = time.perf_counter(), time.process_time()
        already = set(ledger.paths)
        if settings.engine == "spark":
            from train.batch.spark import score_with_spark

            counts = score_with_spark(settings, model, config, columns, ledger.paths)
            log_monitoring(output_monitor(config, folder, already))
        else:
            counts = score_locally(settings, model, classifier, columns, folder, ledger)
            # Every thread of this process: with images_per_s, what an image cost against the CPU bound (bench/batch.py).
            mlflow.log_metric(names.BATCH_CPU_SECONDS_METRIC, time.process_time() - cpu_started)
        result = BatchResult(run.info.run_id, counts.scored, counts.resumed, counts.failed)
        result.seconds = time.perf_counter() - started
        log_counts(result)
        log_output_if_small(folder)
        if back_test is not None:
            result.metrics = back_test.score_and_log()
        mlflow.log_metrics({names.IMAGES_PER_S_METRIC: result.images_per_s})
    return result


def record_run(run_id: str, settings: BatchSettings, model: ResolvedModel) -> None:
    """Tags that name the scored model version and the engine; the settings (input and output locations) as params."""
    import mlflow

    from train.tracking.resilience import log_new_params

    mlflow.set_tags(
        {
            names.KIND_TAG: names.KIND_BATCH,
            names.EVALUATED_MODEL_URI_TAG: settings.model_uri,
            names.EVALUATED_MODEL_ID_TAG: model.model_id,
            names.REGISTERED_MODEL_VERSION_TAG: model.registered,
            names.SOURCE_RUN_ID_TAG: model.run_id,
            names.BATCH_ENGINE_TAG: settings.engine,
        }
    )
    log_new_params(run_id, settings.to_dict())


def score_locally(settings: BatchSettings, model: ResolvedModel, classifier, columns, folder: Path, ledger: Ledger):
    """Run the local engine over the input with a progress bar; rows go to complete part files."""
    from tqdm.auto import tqdm

    from train.batch.local import LocalEngine, limit_heap_arenas, model_identity
    from train.data.archive import open_source, pending_count
    from train.job.hardware import enable_memory_growth

    enable_memory_growth()
    limit_heap_arenas()
    source = open_source(settings.input)
    heatmaps = None
    if settings.explain:
        heatmaps = heatmap_folder(settings.output)
        heatmaps.mkdir(parents=True, exist_ok=True)
    total = pending_count(source, ledger.paths)
    monitor = job_monitor(classifier.config, total)
    engine = LocalEngine(
        classifier,
        model_identity(model.name, model.version, model.model_id),
        batch_size=settings.batch_size,
        workers=settings.workers or decode_workers(),
        frame=settings.frame,
        heatmaps=heatmaps,
        on_answers=lambda answers, encoded, inputs: observe_answers(monitor, answers, encoded, inputs),
    )
    writer = PartWriter(folder, columns, settings.part_size, output_format(settings.output))
    # disable=None turns the bar off when stderr is not a terminal (CI logs, MLflow runs).
    with tqdm(total=total, desc="scoring", unit="img", disable=None, smoothing=0.1) as progress:
        counts = engine.run(source.items(), ledger.paths, writer.add, progress)
        writer.close()
    log_monitoring(monitor)
    if counts.duplicates:
        print(f"{counts.duplicates} path(s) listed more than once were scored once", flush=True)
    return counts


def job_monitor(config, answers: int):
    """The drift monitor of the job: the app's and the PACS worker's, its window the whole job."""
    from serve.monitoring import DEFAULT_WINDOW, DriftMonitor

    return DriftMonitor.for_config(config, window=max(DEFAULT_WINDOW, answers))


def observe_answers(monitor, answers, encoded: list[bytes], inputs: list) -> None:
    """Each answer with its image's statistics; the model inputs the engine decoded give the mean intensity."""
    for row, data, pixels in zip(answers.to_dict("records"), encoded, inputs, strict=True):
        monitor.observe(row, monitor.image_statistics(data, pixels=pixels))


def output_monitor(config, folder: Path, resumed: set[str]):
    """The drift monitor fed from the rows a Spark job added to the output (answers only: Spark's workers keep
    no image statistics), part by part."""
    from serve.contract import ERROR_COLUMN, PATH_COLUMN
    from train.batch.output import part_files, read_part

    parts = part_files(folder)
    monitor = job_monitor(config, sum(len(read_part(path, [PATH_COLUMN])) for path in parts))
    for path in parts:
        rows = read_part(path)
        rows = rows[(rows[ERROR_COLUMN] == "") & ~rows[PATH_COLUMN].isin(resumed)]
        for row in rows.to_dict("records"):
            monitor.observe(row)
    return monitor


def log_monitoring(monitor) -> None:
    """The drift figures against the model's validation reference (docs/MONITORING.md) as run metrics."""
    import mlflow

    mlflow.log_metrics({names.monitoring_metric(key): value for key, value in monitor.figures().items()})


def decode_workers() -> int:
    from serve.pyfunc import decode_threads

    return decode_threads()


def heatmap_folder(output: str) -> Path:
    """The folder beside the output that receives the heatmap PNGs: scores.parquet -> scores_heatmaps."""
    path = Path(output.rstrip("/"))
    return path.with_name(f"{path.stem}_heatmaps")


def log_counts(result: BatchResult) -> None:
    """images_scored, images_resumed, images_failed and one images_failed_<reason> per reason; counts only."""
    import mlflow

    metrics = {
        names.IMAGES_SCORED_METRIC: result.scored,
        names.IMAGES_RESUMED_METRIC: result.resumed,
        names.IMAGES_FAILED_METRIC: sum(result.failed.values()),
        names.BATCH_SECONDS_METRIC: result.seconds,
    }
    metrics.update({names.failed_metric(reason): count for reason, count in result.failed.items()})
    mlflow.log_metrics(metrics)
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(result.failed.items())) or "none"
    print(
        f"scored {result.scored} image(s), {result.resumed} already in the output, "
        f"{sum(result.failed.values())} failed ({reasons}), {result.images_per_s:.1f} images/s",
        flush=True,
    )


def log_output_if_small(folder: Path) -> None:
    """Copy the output's parts into the run when they total at most ARTIFACT_LIMIT_BYTES; the location is a param."""
    import mlflow

    parts = part_files(folder)
    size = sum(path.stat().st_size for path in parts)
    if not parts or size > ARTIFACT_LIMIT_BYTES:
        return
    for path in parts:
        mlflow.log_artifact(str(path), names.BATCH_OUTPUT_ARTIFACT)


def run(settings: BatchSettings) -> int:
    """`python -m train batch`: prints one JSON line with the run, the counts and the output."""
    result = score_archive(settings)
    line = {
        "run_id": result.run_id,
        "output": settings.output,
        "format": output_format(settings.output),
        names.IMAGES_SCORED_METRIC: result.scored,
        names.IMAGES_RESUMED_METRIC: result.resumed,
        names.IMAGES_FAILED_METRIC: sum(result.failed.values()),
        **{key: round(value, 4) for key, value in result.metrics.items() if key.endswith(("auroc", "accuracy"))},
    }
    print(json.dumps(line), flush=True)
    return 0
