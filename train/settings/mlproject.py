"""Writes both MLproject files from the settings models (`python -m train mlproject [--check]`); reads the committed ones to compare.

The root `MLproject` (conda_env) and `docker/MLproject` (docker_env) declare the same entry points,
parameters, defaults and commands; only their header and environment differ. Every parameter's
type and default come from the settings model of its entry point, so a parameter added to a model
is a parameter of both files after one command, and `--check` (run by the tests) fails until it is.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from train.settings import ENTRY_POINT_SETTINGS, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND_WIDTH = 110

ROOT_HEADER = """\
# medimg: train, prepare, evaluate, promote, tune, pipeline (eval-and-deploy) and batch-score medical image
# classifiers. The twin docker/MLproject declares the same entry points and parameters with a docker_env.
# Written by `python -m train mlproject` from the settings models (train/settings/); do not edit by hand.
name: medimg

conda_env: conda.yaml
"""

DOCKER_HEADER = """\
# medimg on NVIDIA GPUs: the docker_env twin of the root MLproject. Same entry points,
# parameters, defaults and commands, written by `python -m train mlproject`; the code is
# baked into the image built by `make image` from docker/Dockerfile. Run from the repository
# root, against a tracking server:
#   MLFLOW_TRACKING_URI=http://tracking-host:5000 make gpu-train ARGS="-P model=resnet50"
# which is `mlflow run docker -A gpus=all -A network=host -A shm-size=8g ...` (docs/GPU.md).
name: medimg

docker_env:
  # Bump together with the image version the Makefile builds (it reads this line).
  image: medimg-train:0.1.0
  # A named volume (created on first use) for datasets, TFDS downloads and Keras weights;
  # pass -P data_dir=/data/<dataset>. docs/GPU.md shows how to back it with a host folder.
  volumes: ["medimg-data:/data"]
  # Copied from the host; MLflow refuses to start when one is unset (export it empty if you
  # do not use it: the image unsets empty ones). MLFLOW_TRACKING_URI is not listed because
  # MLflow already passes it, rewritten to the mounted path for a local store.
  environment:
    - MLFLOW_TRACKING_USERNAME
    - MLFLOW_TRACKING_PASSWORD
    - MLFLOW_S3_ENDPOINT_URL
    - AWS_ACCESS_KEY_ID
    - AWS_SECRET_ACCESS_KEY
    - AWS_SESSION_TOKEN
    - AWS_DEFAULT_REGION
    - MEDIMG_INSTANCE_TYPE
    - MEDIMG_HOURLY_PRICE_USD
"""

FILES = {"MLproject": ROOT_HEADER, "docker/MLproject": DOCKER_HEADER}


def yaml_default(kind: str, default) -> str:
    """A default as the MLproject files write it: numbers bare, strings bare unless YAML would read them otherwise."""
    if kind == "float":
        return repr(default) if isinstance(default, float) else str(default)
    text = str(default)
    plain = text and text.replace("_", "").replace("/", "").replace(".", "").replace("-", "").replace(":", "").isalnum()
    if not plain or text.lower() in ("true", "false", "yes", "no", "on", "off", "null", "~") or text[0].isdigit():
        return f'"{text}"'
    return text


def entry_point_block(settings: type[Settings]) -> str:
    """The YAML of one entry point: its parameters and the command that passes each as its --flag."""
    lines = [f"  {settings.command}:", "    parameters:"]
    for name, (kind, default) in settings.mlproject_parameters().items():
        lines.append(f"      {name}: {{type: {kind}, default: {yaml_default(kind, default)}}}")
    # A flag and its placeholder stay on one line (joined by NUL while wrapping).
    flags = " ".join(f"--{name.replace('_', '-')}\0{{{name}}}" for name in settings.model_fields)
    wrapped = textwrap.wrap(flags, COMMAND_WIDTH, break_on_hyphens=False, break_long_words=False)
    lines += ["    command: >-", f"      python -m train {settings.command}"]
    lines += [f"      {line.replace(chr(0), ' ')}" for line in wrapped]
    return "\n".join(lines)


def render(header: str, entry_points: dict[str, type[Settings]] | None = None) -> str:
    blocks = [entry_point_block(settings) for settings in (entry_points or ENTRY_POINT_SETTINGS).values()]
    return f"{header}\nentry_points:\n" + "\n".join(blocks) + "\n"


def mlproject_snippet(settings: type[Settings]) -> str:
    """One entry point's YAML, for reading; `python -m train mlproject` writes the files."""
    return entry_point_block(settings)


def stale_files(root: Path = REPO_ROOT, entry_points: dict[str, type[Settings]] | None = None) -> list[str]:
    """The MLproject files whose text differs from what the settings models would write."""
    return [
        relative
        for relative, header in FILES.items()
        if not (root / relative).is_file() or (root / relative).read_text() != render(header, entry_points)
    ]


def write(root: Path = REPO_ROOT) -> list[str]:
    """Write both files; return the ones that changed."""
    changed = stale_files(root)
    for relative, header in FILES.items():
        (root / relative).write_text(render(header))
    return changed


def main(check: bool) -> int:
    """`python -m train mlproject`: write both files, or with check only say which ones are stale (exit 1)."""
    if check:
        stale = stale_files()
        for relative in stale:
            print(f"{relative} differs from the settings models; run `python -m train mlproject`", file=sys.stderr)
        return 1 if stale else 0
    changed = write()
    print(f"wrote MLproject and docker/MLproject ({', '.join(changed) or 'no'} changed)")
    return 0
