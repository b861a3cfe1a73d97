"""Prepares the docker compose server's local files: writes mlflow_server/.env from .env.example and secrets/ with generated passwords."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

COMPOSE_DIR = Path(__file__).resolve().parent
SECRET_NAMES = ("postgres_password", "mlflow_admin_password", "mlflow_flask_secret_key")


def init_compose_files(compose_dir: str | os.PathLike = COMPOSE_DIR) -> list[Path]:
    """Create what `docker compose up` needs and is not committed; existing files are kept. Returns the files created.

    Secrets go in secrets/ (0700). The files themselves are 0444 because docker compose bind-mounts
    them as they are and the containers read them as their own non-root users (postgres, mlflow).
    """
    folder = Path(compose_dir)
    created = []
    env_file = folder / ".env"
    if not env_file.exists():
        shutil.copyfile(folder / ".env.example", env_file)
        env_file.chmod(0o600)
        created.append(env_file)
    secrets_dir = folder / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    secrets_dir.chmod(0o700)
    for name in SECRET_NAMES:
        path = secrets_dir / name
        if path.exists() and path.read_text().strip():
            continue
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        path.chmod(0o444)
        created.append(path)
    return created
