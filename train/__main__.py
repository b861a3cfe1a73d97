"""Command line of medimg training: `python -m train <command> [flags]`; reads flags, runs one command.

Commands mirror the MLproject entry points. Flags mirror parameter names
(`--learning-rate` for `learning_rate`). A configuration mistake exits with
code 2 and one line on stderr before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from train.config import ConfigError, TrainConfig


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
    }
    for name, default in defaults.items():
        parser.add_argument(
            _flag(name),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{helps.get(name, name.replace('_', ' '))} (default: {default!r})",
        )


def unquote(value):
    """Undo one level of shell quoting that MLflow's Kubernetes backend leaves on values (it runs without a shell)."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            parts = shlex.split(value)
        except ValueError:
            return value
        if len(parts) <= 1:
            return parts[0] if parts else ""
    return value


def run_main(arguments: argparse.Namespace) -> int:
    values = {key: unquote(value) for key, value in vars(arguments).items() if key != "command" and value is not None}
    config = TrainConfig.from_dict(values)
    from train.trainer import train

    train(config)
    return 0


COMMANDS = {
    "main": ("train one model on one dataset and log it to MLflow", add_main_arguments, run_main),
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
