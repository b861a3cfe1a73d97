"""Command line of medimg training: `python -m train <command> [flags]`; reads flags, runs one command.

Commands mirror the MLproject entry points. Flags mirror parameter names
(`--learning-rate` for `learning_rate`) and come from the settings models in
train/settings/__init__.py, as does `--help`. A configuration mistake exits with code 2
and one line on stderr before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from serve.common import CommandFailed, ConfigError
from train.settings import (
    BatchSettings,
    EvaluateSettings,
    MainSettings,
    PipelineSettings,
    PrepareSettings,
    PromoteSettings,
    Settings,
    TuneSettings,
    TuneWorkerSettings,
)
from train.tracking.names import CONFIG_ERROR_TAG, FAILURE_TAG

# command -> (one-line help, settings model, "module:function" that runs it; imported only when it runs).
COMMANDS: dict[str, tuple[str, type[Settings], str]] = {
    "main": ("train one model on one dataset and log it to MLflow", MainSettings, "train.job.trainer:run"),
    "prepare": (
        "turn a raw dataset into resized, sharded TFRecords once, with a progress bar",
        PrepareSettings,
        "train.prepare:main",
    ),
    "evaluate": (
        "score a model URI on a dataset split; log metrics, curves and pictures",
        EvaluateSettings,
        "train.release.evaluate:run",
    ),
    "promote": (
        "register the best run's model and move the alias champion if it wins",
        PromoteSettings,
        "train.release.promote:run",
    ),
    "tune": ("hyperparameter search; every trial is a child run", TuneSettings, "train.tuning.lead:run"),
    "pipeline": (
        "challenger against @champion on one frozen test split: paired test, decision, model card, serving Dockerfile",
        PipelineSettings,
        "train.release.pipeline:run",
    ),
    "batch": (
        "score an archive (folder, path list, prepared folder) into Parquet parts, resumable; local or Spark",
        BatchSettings,
        "train.batch.run:run",
    ),
    "tune-worker": (
        "one worker process of tune (tune starts these; run trials of an existing study)",
        TuneWorkerSettings,
        "train.tuning.worker:run",
    ),
}


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes are one `error:` line and exit code 2, like every other medimg error."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


MLPROJECT_HELP = "write MLproject and docker/MLproject from the settings models (--check: exit 1 when stale)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m train", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=OneLineParser)
    for name, (help_text, settings, _) in COMMANDS.items():
        settings.add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    mlproject = subparsers.add_parser("mlproject", help=MLPROJECT_HELP, description=MLPROJECT_HELP)
    mlproject.add_argument("--check", action="store_true", help="compare only; exit 1 when a file is stale")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments, unknown = parser.parse_known_args(argv)
    if arguments.command == "mlproject":
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        from train.settings.mlproject import main as write_mlproject

        return write_mlproject(arguments.check)
    _, settings_class, target = COMMANDS[arguments.command]
    # mlflow.start_run takes MLFLOW_RUN_ID out of the environment when it resumes that run; keep it for the tags.
    project_run = os.environ.get("MLFLOW_RUN_ID", "")
    try:
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in settings_class.model_fields)
            raise ConfigError(f"unknown flag {unknown[0]!r} for {arguments.command}; valid flags: {flags}")
        settings = settings_class.from_arguments(arguments)
        module_name, function_name = target.split(":")
        return int(getattr(importlib.import_module(module_name), function_name)(settings) or 0)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        record_on_project_run(project_run, CONFIG_ERROR_TAG, str(error))
        return 2
    except CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        record_on_project_run(project_run, FAILURE_TAG, str(error))
        return 1


def record_on_project_run(run_id: str, tag: str, message: str) -> None:
    """Under `mlflow run`, MLflow created a run before this command started; the mistake or failure is tagged on it.

    MLflow then marks that run FAILED; the tag (`medimg.config_error` for a settings mistake, `medimg.failure`
    for a step that failed) says why, in the UI and in searches.
    """
    if not run_id:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().set_tag(run_id, tag, message[:5000])
    except MlflowException:
        # The mistake is printed already; a tracking store that cannot take the tag changes nothing about it.
        return


if __name__ == "__main__":
    sys.exit(main())
