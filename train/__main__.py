"""Command line of medimg training: `python -m train <command> [flags]`; reads flags, runs one command.

Commands mirror the MLproject entry points. Flags mirror parameter names
(`--learning-rate` for `learning_rate`) and come from the settings models in
train/settings.py, as does `--help`. A configuration mistake exits with code 2
and one line on stderr before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from train.settings import (
    ConfigError,
    EvaluateSettings,
    MainSettings,
    PipelineSettings,
    PrepareSettings,
    PromoteSettings,
    Settings,
    TuneSettings,
    TuneWorkerSettings,
)

# command -> (one-line help, settings model, "module:function" that runs it; imported only when it runs).
COMMANDS: dict[str, tuple[str, type[Settings], str]] = {
    "main": ("train one model on one dataset and log it to MLflow", MainSettings, "train.trainer:run"),
    "prepare": (
        "turn a raw dataset into resized, sharded TFRecords once, with a progress bar",
        PrepareSettings,
        "train.prepare:main",
    ),
    "evaluate": (
        "score a model URI on a dataset split; log metrics, curves and pictures",
        EvaluateSettings,
        "train.evaluate:run",
    ),
    "promote": (
        "register the best run's model and move the alias champion if it wins",
        PromoteSettings,
        "train.promote:run",
    ),
    "tune": ("hyperparameter search; every trial is a child run", TuneSettings, "train.tuning.lead:run"),
    "pipeline": (
        "challenger against @champion on one frozen test split: paired test, decision, model card, serving Dockerfile",
        PipelineSettings,
        "train.pipeline:run",
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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m train", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=OneLineParser)
    for name, (help_text, settings, _) in COMMANDS.items():
        settings.add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments, unknown = build_parser().parse_known_args(argv)
    _, settings_class, target = COMMANDS[arguments.command]
    try:
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in settings_class.model_fields)
            raise ConfigError(f"unknown flag {unknown[0]!r} for {arguments.command}; valid flags: {flags}")
        settings = settings_class.from_arguments(arguments)
        module_name, function_name = target.split(":")
        return int(getattr(importlib.import_module(module_name), function_name)(settings) or 0)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        record_on_project_run(str(error))
        return 2


def record_on_project_run(message: str) -> None:
    """Under `mlflow run`, MLflow created a run before this command started; the mistake is tagged on it.

    MLflow then marks that run FAILED; the tag `medimg.config_error` says why, in the UI and in searches.
    """
    import os

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().set_tag(run_id, "medimg.config_error", message[:5000])
    except MlflowException:
        # The mistake is printed already; a tracking store that cannot take the tag changes nothing about it.
        return


if __name__ == "__main__":
    sys.exit(main())
