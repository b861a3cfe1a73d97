"""What a run needs to be reproduced: reads the git checkout and installed package versions; writes nothing."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from train.tracking import names

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_state() -> dict[str, str]:
    """Commit and dirtiness of the repository the code runs from, when it is a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        # Inside the Docker image there is no .git; the build records the commit instead.
        commit = os.environ.get("MEDIMG_GIT_COMMIT", "")
        return {names.GIT_COMMIT_TAG: commit} if commit and commit != "unknown" else {}
    return {names.GIT_COMMIT_TAG: commit, names.GIT_DIRTY_TAG: str(bool(dirty)).lower()}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "mlflow", "numpy", "tensorflow-datasets", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions
