"""Command line of medimg training: `python -m train <command> [flags]`; reads flags, runs one command.

Commands mirror the MLproject entry points. Flags mirror parameter names
(`--learning-rate` for `learning_rate`). A configuration mistake exits with
code 2 and one line on stderr before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import sys

from train.config import ConfigError, TrainConfig, unquote


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_main_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig().to_dict()
    helps = {
        "model": "model family: small_cnn, vgg16, resnet50, densenet121",
        "dataset": "synthetic, malaria, chestxray14 or imagefolder",
        "data_dir": "dataset folder (required for chestxray14 and imagefolder)",
        "weights": "imagenet, none, or a path to a weights file",
        "trainable_layers": "-1 all, 0 frozen backbone, N = last N backbone layers",
        "augment": "true or false",
        "max_examples": "cap on the number of examples, 0 = all",
        "precision": "auto, float32 or mixed_float16 (auto: mixed only on GPUs with compute capability >= 7.0)",
        "jit_compile": "compile the model with XLA (true or false)",
        "synthetic_task": "binary or multilabel (synthetic dataset only)",
        "register_as": "registered model name; empty = do not register",
        "convolutions": "number of conv blocks of small_cnn",
        "batch_size": "global batch size (split across GPUs under MirroredStrategy)",
        "validation_fraction": "share held out for validation (chestxray14: of train_val, by patient)",
        "view": "chestxray14 view filter: all, PA or AP",
    }
    for name, default in defaults.items():
        parser.add_argument(
            _flag(name),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{helps.get(name, name.replace('_', ' '))} (default: {default!r})",
        )


def run_main(arguments: argparse.Namespace) -> int:
    values = {key: unquote(value) for key, value in vars(arguments).items() if key != "command" and value is not None}
    config = TrainConfig.from_dict(values)
    from train.trainer import train

    train(config)
    return 0


def add_settings_arguments(parser: argparse.ArgumentParser, defaults: dict, helps: dict[str, str]) -> None:
    """One --flag per setting, read as a string (the config converts and validates it)."""
    for name, default in defaults.items():
        parser.add_argument(
            _flag(name),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{helps.get(name, name.replace('_', ' '))} (default: {default!r})",
        )


def settings_from(arguments: argparse.Namespace) -> dict:
    return {key: unquote(value) for key, value in vars(arguments).items() if key != "command" and value is not None}


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from train.evaluate import EvaluateConfig

    helps = {
        "model_uri": "models:/<name>@<alias>, models:/<name>/<version>, models:/<model_id> or runs:/<run_id>/model",
        "dataset": "dataset to score on; empty = the one the model was trained on",
        "data_dir": "dataset folder; empty = the training run's",
        "split": "train, val or test",
        "threshold": "decision threshold for accuracy, precision, recall and F1",
        "specificity": "the fixed specificity at which sensitivity is reported",
        "max_examples": "cap on the dataset size as in training; -1 = the training run's, 0 = all",
        "seed": "split seed; -1 = the training run's",
        "batch_size": "images per prediction batch",
        "run_name": "name of the evaluation run; empty = generated",
    }
    add_settings_arguments(parser, EvaluateConfig().to_dict(), helps)


def run_evaluate(arguments: argparse.Namespace) -> int:
    from train.evaluate import EvaluateConfig, evaluate

    evaluate(EvaluateConfig.from_dict(settings_from(arguments)))
    return 0


def add_promote_arguments(parser: argparse.ArgumentParser) -> None:
    from train.promote import PromoteConfig

    helps = {
        "experiment": "experiment name(s), comma-separated; empty = the active experiment",
        "metric": "run metric that picks the best run, e.g. best_val_auroc, test_auroc, test_mean_auroc",
        "mode": "max (higher is better) or min",
        "registered_model": "registered model name to register the best run's model into",
    }
    add_settings_arguments(parser, PromoteConfig().to_dict(), helps)


def run_promote(arguments: argparse.Namespace) -> int:
    from train.promote import PromoteConfig, promote

    promote(PromoteConfig.from_dict(settings_from(arguments)))
    return 0


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    from train.prepare import PrepareConfig

    helps = {
        "dataset": "chestxray14, malaria, imagefolder or synthetic",
        "data_dir": "raw dataset folder (malaria: TFDS data dir or cell_images/ folder; empty = TFDS default)",
        "output_dir": "folder that receives the TFRecord shards and manifest.json (required)",
        "image_size": "side in pixels of the stored images; train at this size or smaller",
        "shard_size": "images per TFRecord shard",
        "workers": "worker processes, 0 = all cores",
        "validation_fraction": "share of train_val (chestxray14, by patient) or of all images held out for validation",
        "view": "chestxray14 view filter: all, PA or AP",
        "max_missing_fraction": "chestxray14: stop when more than this share of listed images is missing (and > 5)",
    }
    add_settings_arguments(parser, PrepareConfig().to_dict(), helps)


def run_prepare(arguments: argparse.Namespace) -> int:
    from train.prepare import main as prepare_main

    return prepare_main(settings_from(arguments))


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    from train.tune import TUNE_HELP, TuneOptions

    add_settings_arguments(parser, TuneOptions().to_dict(), TUNE_HELP)


def run_tune(arguments: argparse.Namespace) -> int:
    from train.tune import run_tune_command

    return run_tune_command(settings_from(arguments))


def add_tune_worker_arguments(parser: argparse.ArgumentParser) -> None:
    from train.tune import WORKER_HELP

    for name, help_text in WORKER_HELP.items():
        parser.add_argument(_flag(name), dest=name, default=None, metavar=name.upper(), help=help_text)


def run_tune_worker(arguments: argparse.Namespace) -> int:
    from train.tune import run_worker_command

    return run_worker_command(settings_from(arguments))


COMMANDS = {
    "main": ("train one model on one dataset and log it to MLflow", add_main_arguments, run_main),
    "prepare": (
        "turn a raw dataset into resized, sharded TFRecords once, with a progress bar",
        add_prepare_arguments,
        run_prepare,
    ),
    "evaluate": (
        "score a model URI on a dataset split; log metrics, curves and pictures",
        add_evaluate_arguments,
        run_evaluate,
    ),
    "promote": (
        "register the best run's model and move the alias champion if it wins",
        add_promote_arguments,
        run_promote,
    ),
    "tune": ("hyperparameter search; every trial is a child run", add_tune_arguments, run_tune),
    "tune-worker": (
        "one worker process of tune (tune starts these; run trials of an existing study)",
        add_tune_worker_arguments,
        run_tune_worker,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    _, _, run = COMMANDS[arguments.command]
    try:
        return run(arguments)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
