"""Errors and small helpers every package needs (train, serve, aws, mlflow_server, tests, bench): imports nothing of ours.

The bottom of the import graph. It lives in `serve/` because the logged model carries `serve/` (and
`models/`) as its code and the serving image copies those two packages: a helper the served model
uses must ship with it, and a package of its own would have to be added to both. Standard library only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

# Messages that must stay on one line are cut to this many characters.
FIRST_LINE_LIMIT = 200
LOCAL_HOST = "127.0.0.1"


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message says how to fix it, in one line (exit code 2)."""


class CommandFailed(RuntimeError):
    """A step that failed while the command ran, not a settings mistake; one line that says what failed (exit code 1)."""


def first_line(message: object, limit: int | None = FIRST_LINE_LIMIT) -> str:
    """The first line of a message or exception, cut to `limit` characters (None: uncut); an exception without text gives its type."""
    text = str(message).strip() or (type(message).__name__ if isinstance(message, BaseException) else "")
    line = text.splitlines()[0] if text else ""
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port on `host` that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def stop_process_group(process: subprocess.Popen, grace: float = 20) -> int | None:
    """SIGTERM a process started in its own session and everything it started; SIGKILL after `grace` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.returncode
