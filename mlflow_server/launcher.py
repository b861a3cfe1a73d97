"""Runs PostgreSQL and `mlflow server` without Docker: reads and writes DIR (state.json, pgpass, pg/, artifacts/, auth/, logs)."""

from __future__ import annotations

import base64
import configparser
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow_server.postgres import PostgresCluster, process_is_running
from serve.common import free_port

DEFAULT_DATA_DIR = ".mlflow_server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_WORKERS = 2
DATABASE_ROLE = "mlflow"
DATABASE_NAME = "mlflow"
AUTH_DATABASE_NAME = "mlflow_auth"
ADMIN_USERNAME = "admin"
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
# With --webhooks-to-local: how long the server caches each event's webhook list (MLflow's default is 60 s, so a
# webhook registered right after an event of its kind would stay silent for up to a minute).
LOCAL_WEBHOOK_CACHE_TTL_S = 5


@dataclass(frozen=True)
class ServerInfo:
    """A running tracking server: where to reach it and which processes and files belong to it."""

    data_dir: Path
    tracking_uri: str
    backend_store_uri: str
    artifacts_destination: str
    host: str
    port: int
    postgres_port: int
    server_pid: int
    postgres_pid: int
    pgpass_file: Path
    log_file: Path
    auth: bool
    admin_username: str | None = None
    admin_password_file: Path | None = None
    webhooks_to_local: bool = False

    def export_lines(self) -> list[str]:
        """Shell lines that point MLflow clients at this server; the admin password is read from its file, not printed."""
        lines = [f"export MLFLOW_TRACKING_URI={self.tracking_uri}"]
        if self.auth and self.admin_password_file is not None:
            lines.append(f"export MLFLOW_TRACKING_USERNAME={self.admin_username}")
            lines.append(f'export MLFLOW_TRACKING_PASSWORD="$(cat {shlex.quote(str(self.admin_password_file))})"')
        return lines


@dataclass(frozen=True)
class ServerStatus:
    """What `status` found: None pids mean not running; `healthy` means /health answered OK."""

    data_dir: Path
    postgres_pid: int | None
    server_pid: int | None
    healthy: bool
    info: ServerInfo | None

    @property
    def running(self) -> bool:
        return self.healthy and self.postgres_pid is not None and self.server_pid is not None


@dataclass(frozen=True)
class _Layout:
    """The files the launcher keeps in DIR."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def pgpass_file(self) -> Path:
        return self.root / "pgpass"

    @property
    def postgres_root(self) -> Path:
        return self.root / "pg"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def server_log(self) -> Path:
        return self.root / "mlflow-server.log"

    @property
    def auth_dir(self) -> Path:
        return self.root / "auth"

    @property
    def auth_config(self) -> Path:
        return self.auth_dir / "basic_auth.ini"

    @property
    def admin_password_file(self) -> Path:
        return self.auth_dir / "admin_password"

    @property
    def secret_key_file(self) -> Path:
        return self.auth_dir / "flask_secret_key"

    @property
    def webhook_key_file(self) -> Path:
        return self.root / "webhook_encryption_key"


# Small helpers: private files, ports, processes.


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, creating it 0600 so it is never readable by others even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def _read_or_create_secret(path: Path) -> str:
    if path.is_file():
        value = path.read_text().strip()
        if value:
            path.chmod(0o600)
            return value
    value = secrets.token_urlsafe(32)
    _write_private(path, value + "\n")
    return value


def _read_or_create_fernet_key(path: Path) -> str:
    """The key MLflow encrypts stored webhook secrets with (Fernet: URL-safe base64 of 32 bytes), kept 0600 in DIR.

    Without it each server process draws its own key: a secret stored through one worker cannot be read by the
    other, nor by the next server, and its deliveries fail.
    """
    if path.is_file():
        value = path.read_text().strip()
        with contextlib.suppress(ValueError):
            if len(base64.urlsafe_b64decode(value.encode())) == 32:
                path.chmod(0o600)
                return value
    value = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
    _write_private(path, value + "\n")
    return value


def _read_pgpass_password(path: Path, role: str) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 5 and fields[3] == role and fields[4]:
            return fields[4]
    return None


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR matches what servers use, so sockets in TIME_WAIT from a killed server do not block reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _process_group_members(group_id: int) -> list[int]:
    """Pids of live processes in a process group, found through /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, process_group = fields[0], int(fields[2])
        if process_group == group_id and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _is_mlflow_server(pid: int) -> bool:
    """Guards against a recycled pid: the process must be the `mlflow server` this launcher started."""
    if not process_is_running(pid):
        return False
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlflow" in arguments and b"server" in arguments


def _health_ok(tracking_uri: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{tracking_uri}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _client_host(host: str) -> str:
    """The address clients on this machine use: a wildcard bind is reached through loopback."""
    return DEFAULT_HOST if host in ("0.0.0.0", "::", "") else host


def _say(message: str) -> None:
    # Progress goes to stderr so that stdout carries only the `export` lines for `eval "$(...)"`.
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(layout: _Layout) -> Iterator[None]:
    """Serialise `up` and `down` on one data folder across processes."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_state(layout: _Layout) -> dict:
    try:
        return json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(layout: _Layout, state: dict) -> None:
    _write_private(layout.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _normalise_artifacts_destination(destination: str | os.PathLike | None, layout: _Layout) -> str:
    if destination is None or str(destination) == "":
        return str(layout.artifacts_dir)
    text = str(destination)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().absolute())


def _backend_uri(database: str, postgres_port: int) -> str:
    # No password in the URI: libpq finds it in the file named by PGPASSFILE.
    return f"postgresql+psycopg2://{DATABASE_ROLE}@127.0.0.1:{postgres_port}/{database}"


def _server_info(layout: _Layout, state: dict, cluster: PostgresCluster) -> ServerInfo:
    auth = bool(state.get("auth"))
    return ServerInfo(
        data_dir=layout.root,
        tracking_uri=f"http://{_client_host(state['host'])}:{state['port']}",
        backend_store_uri=_backend_uri(DATABASE_NAME, state["postgres_port"]),
        artifacts_destination=state["artifacts_destination"],
        host=state["host"],
        port=state["port"],
        postgres_port=state["postgres_port"],
        server_pid=state.get("server_pid") or 0,
        postgres_pid=cluster.running_pid() or 0,
        pgpass_file=layout.pgpass_file,
        log_file=layout.server_log,
        auth=auth,
        admin_username=ADMIN_USERNAME if auth else None,
        admin_password_file=layout.admin_password_file if auth else None,
        webhooks_to_local=bool(state.get("webhooks_to_local")),
    )


# Steps of `up`.


def _start_postgres(layout: _Layout, cluster: PostgresCluster, state: dict) -> int:
    running_port = cluster.running_port()
    if running_port is not None:
        return running_port
    if not cluster.is_initialized():
        _say(f"Creating a PostgreSQL cluster in {cluster.data_dir}")
        cluster.initialize()
    port = state.get("postgres_port")
    if not port or not _port_is_free(DEFAULT_HOST, port):
        port = free_port(DEFAULT_HOST)
    _say(f"Starting PostgreSQL on 127.0.0.1:{port}")
    cluster.start(port)
    return port


def _ensure_database(layout: _Layout, cluster: PostgresCluster, auth: bool) -> None:
    password = _read_pgpass_password(layout.pgpass_file, DATABASE_ROLE)
    if password is None:
        password = secrets.token_urlsafe(32)
    databases = [DATABASE_NAME, AUTH_DATABASE_NAME] if auth else [DATABASE_NAME]
    # Setting the password every time keeps the role and the pgpass file in step, even if one was lost.
    cluster.ensure_role_and_databases(DATABASE_ROLE, password, databases)
    _write_private(layout.pgpass_file, f"127.0.0.1:*:*:{DATABASE_ROLE}:{password}\n")


def _write_auth_config(layout: _Layout, postgres_port: int) -> dict[str, str]:
    """Write basic_auth.ini (0600) and return the environment the basic-auth app reads."""
    layout.auth_dir.mkdir(parents=True, exist_ok=True)
    layout.auth_dir.chmod(0o700)
    admin_password = _read_or_create_secret(layout.admin_password_file)
    secret_key = _read_or_create_secret(layout.secret_key_file)
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": _backend_uri(AUTH_DATABASE_NAME, postgres_port),
        "admin_username": ADMIN_USERNAME,
        # Read only when the admin user is first created; later rotations go through the update-password API.
        "admin_password": admin_password,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    descriptor = os.open(layout.auth_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        config.write(handle)
    layout.auth_config.chmod(0o600)
    return {"MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_config), "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key}


def _webhook_environment(layout: _Layout, to_local: bool) -> dict[str, str]:
    """The webhook settings of the server: always a persistent secret key; with `to_local`, delivery to http:// and
    private addresses (receivers on this machine or network) and a short cache of each event's webhook list."""
    environment = {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": _read_or_create_fernet_key(layout.webhook_key_file)}
    if to_local:
        environment["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] = "http,https"
        environment["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] = "true"
        environment["MLFLOW_WEBHOOK_CACHE_TTL"] = str(LOCAL_WEBHOOK_CACHE_TTL_S)
    return environment


def _server_environment(layout: _Layout, postgres_port: int, auth: bool, webhooks_to_local: bool) -> dict[str, str]:
    environment = dict(os.environ)
    # The backend URI travels in the environment (click reads MLFLOW_BACKEND_STORE_URI), not in argv.
    environment["MLFLOW_BACKEND_STORE_URI"] = _backend_uri(DATABASE_NAME, postgres_port)
    environment["PGPASSFILE"] = str(layout.pgpass_file)
    # The GenAI job runner is an extra long-lived process that model training does not use.
    environment.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # Settings from the caller's shell that would override what the launcher decided: PGPASSWORD beats the
    # pgpass file in libpq, MLFLOW_AUTH_ADMIN_* beat basic_auth.ini, a default artifact root turns off proxying.
    for name in (
        "PGPASSWORD",
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "MLFLOW_DEFAULT_ARTIFACT_ROOT",
        "MLFLOW_REGISTRY_STORE_URI",
        "MLFLOW_TRACKING_URI",
        # Webhook settings come from the launcher alone, so `up` means the same whatever the shell exported.
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS",
        "MLFLOW_WEBHOOK_CACHE_TTL",
    ):
        environment.pop(name, None)
    environment.update(_webhook_environment(layout, webhooks_to_local))
    if auth:
        environment.update(_write_auth_config(layout, postgres_port))
    return environment


def _start_server(
    layout: _Layout, state: dict, postgres_port: int, workers: int, allowed_hosts: str | None
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        state["host"],
        "--port",
        str(state["port"]),
        "--workers",
        str(workers),
        "--serve-artifacts",
        "--artifacts-destination",
        state["artifacts_destination"],
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if state["auth"]:
        command += ["--app-name", "basic-auth"]
    environment = _server_environment(layout, postgres_port, state["auth"], bool(state.get("webhooks_to_local")))
    log = open(layout.server_log, "ab")  # noqa: SIM115 - the child keeps writing after this function returns.
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=layout.root,
            # Its own session and process group: `down` stops the server and every worker in one signal.
            start_new_session=True,
        )
    finally:
        log.close()


def _wait_until_healthy(process: subprocess.Popen, tracking_uri: str, log_file: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with code {process.returncode} during startup; "
                f"last lines of {log_file}:\n{_log_tail(log_file)}"
            )
        if _health_ok(tracking_uri):
            return
        time.sleep(0.3)
    _stop_process_group(process.pid)
    raise RuntimeError(
        f"mlflow server did not answer {tracking_uri}/health within {timeout_s:.0f} s; "
        f"last lines of {log_file}:\n{_log_tail(log_file)}"
    )


def _group_runs_mlflow(group_id: int) -> bool:
    """True when a live member of the group is mlflow's server or uvicorn supervisor, so a recycled group id is left alone."""
    for pid in _process_group_members(group_id):
        try:
            if b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def _stop_process_group(group_id: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the whole group (server, uvicorn supervisor, workers), then SIGKILL whatever outlives the timeout."""
    if not _group_runs_mlflow(group_id):
        # Reap the leader if it is our child; nothing of the server is left to signal.
        process_is_running(group_id)
        return
    for signal_number, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group_id, signal_number)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            # process_is_running reaps the leader when it is our child, so it does not linger as a zombie.
            leader_alive = process_is_running(group_id)
            if not leader_alive and not _process_group_members(group_id):
                return
            time.sleep(0.1)


def _reuse_running_server(
    layout, cluster, state, port, auth, wanted_destination, host, webhooks_to_local=False
) -> ServerInfo | None:
    """The running server of this data folder when it has the asked settings and answers; None to start one.

    Raises ValueError when it runs with other settings; stops a server that does not answer or left workers behind.
    """
    server_pid = state.get("server_pid")
    if server_pid and _is_mlflow_server(server_pid) and cluster.running_pid() is not None:
        differences = []
        if port is not None and int(port) != state["port"]:
            differences.append(f"port {state['port']} (asked {port})")
        if bool(auth) != bool(state.get("auth")):
            differences.append("auth on" if state.get("auth") else "auth off")
        if wanted_destination != state["artifacts_destination"]:
            differences.append(f"artifacts at {state['artifacts_destination']}")
        if host != state["host"]:
            differences.append(f"host {state['host']}")
        if bool(webhooks_to_local) != bool(state.get("webhooks_to_local")):
            differences.append("webhooks to local receivers " + ("on" if state.get("webhooks_to_local") else "off"))
        if differences:
            raise ValueError(
                f"A server from {layout.root} is already running with {', '.join(differences)}: "
                f"run `python -m mlflow_server down --data-dir {layout.root}` first, or call up with its settings."
            )
        info = _server_info(layout, state, cluster)
        if _health_ok(info.tracking_uri):
            _say(f"Reusing the running MLflow server at {info.tracking_uri} (pid {server_pid})")
            return info
        _say(f"The MLflow server (pid {server_pid}) does not answer /health; restarting it")
        _stop_process_group(server_pid)
    elif server_pid:
        # A server from an earlier `up` that crashed or was killed may have left workers behind.
        _stop_process_group(server_pid)
    return None


def _choose_port(host: str, port: int | None, remembered_port: int | None) -> int:
    """The asked port (it must be free), else the remembered one when free, else any free port."""
    if port is not None:
        if not _port_is_free(host, int(port)):
            raise ValueError(f"Port {port} on {host} is in use: choose another --port or stop what uses it.")
        return int(port)
    if remembered_port and _port_is_free(host, remembered_port):
        return remembered_port
    chosen_port = free_port(DEFAULT_HOST if host in ("0.0.0.0", "") else host)
    if remembered_port:
        _say(f"Port {remembered_port} is taken now; using {chosen_port}")
    return chosen_port


# Public API.


def up(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    port: int | None = None,
    auth: bool = False,
    artifacts_destination: str | os.PathLike | None = None,
    *,
    host: str = DEFAULT_HOST,
    workers: int = DEFAULT_WORKERS,
    allowed_hosts: str | None = None,
    pg_bin_dir: str | os.PathLike | None = None,
    timeout_s: float = STARTUP_TIMEOUT_S,
    webhooks_to_local: bool = False,
) -> ServerInfo:
    """Start (or reuse) PostgreSQL and `mlflow server` for `data_dir` and return how to reach them.

    Reuses the cluster, role, password, port and artifact destination remembered in the data folder.
    Raises ValueError when a running server was started with different settings. `webhooks_to_local` lets the
    server deliver registry webhooks to http:// receivers on private addresses (see docs/TRACKING_SERVER.md).
    """
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"--port {port} is not a TCP port: choose 1-65535 or leave it out for a free one.")
    if int(workers) < 1:
        raise ValueError(f"--workers {workers} must be at least 1.")
    layout = _Layout(Path(data_dir).expanduser().absolute())
    with _locked(layout):
        cluster = PostgresCluster.at(layout.postgres_root, pg_bin_dir)
        state = _load_state(layout)
        wanted_destination = (
            _normalise_artifacts_destination(artifacts_destination, layout)
            if artifacts_destination is not None
            else state.get("artifacts_destination") or _normalise_artifacts_destination(None, layout)
        )
        running = _reuse_running_server(layout, cluster, state, port, auth, wanted_destination, host, webhooks_to_local)
        if running is not None:
            return running
        if wanted_destination.startswith("/"):
            Path(wanted_destination).mkdir(parents=True, exist_ok=True)
        postgres_port = _start_postgres(layout, cluster, state)
        _ensure_database(layout, cluster, auth)

        chosen_port = _choose_port(host, port, state.get("port"))
        state = {
            "host": host,
            "port": chosen_port,
            "postgres_port": postgres_port,
            "artifacts_destination": wanted_destination,
            "auth": bool(auth),
            "webhooks_to_local": bool(webhooks_to_local),
            "server_pid": None,
        }
        _save_state(layout, state)
        _say(f"Starting mlflow server on {host}:{chosen_port} (log: {layout.server_log})")
        process = _start_server(layout, state, postgres_port, int(workers), allowed_hosts)
        state["server_pid"] = process.pid
        _save_state(layout, state)
        info = _server_info(layout, state, cluster)
        _wait_until_healthy(process, info.tracking_uri, layout.server_log, timeout_s)
        _say(f"MLflow server ready at {info.tracking_uri}")
        return info


def status(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR, *, pg_bin_dir: str | os.PathLike | None = None
) -> ServerStatus:
    """Report whether PostgreSQL and `mlflow server` from `data_dir` run and answer."""
    layout = _Layout(Path(data_dir).expanduser().absolute())
    state = _load_state(layout)
    cluster = PostgresCluster.at(layout.postgres_root, pg_bin_dir)
    postgres_pid = cluster.running_pid()
    server_pid = state.get("server_pid")
    server_pid = server_pid if server_pid and _is_mlflow_server(server_pid) else None
    info = _server_info(layout, state, cluster) if state.get("port") else None
    healthy = info is not None and server_pid is not None and _health_ok(info.tracking_uri)
    return ServerStatus(
        data_dir=layout.root, postgres_pid=postgres_pid, server_pid=server_pid, healthy=healthy, info=info
    )


def down(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, *, pg_bin_dir: str | os.PathLike | None = None) -> None:
    """Stop `mlflow server` (with its workers) and PostgreSQL; data, passwords and the port choice stay for the next `up`."""
    layout = _Layout(Path(data_dir).expanduser().absolute())
    if not layout.root.exists():
        return
    with _locked(layout):
        state = _load_state(layout)
        server_pid = state.get("server_pid")
        if server_pid:
            if process_is_running(server_pid) and not _is_mlflow_server(server_pid):
                _say(f"pid {server_pid} is no longer the mlflow server; leaving it alone")
            else:
                _say(f"Stopping mlflow server (pid {server_pid})")
                _stop_process_group(server_pid)
        if state:
            state["server_pid"] = None
            _save_state(layout, state)
        cluster = PostgresCluster.at(layout.postgres_root, pg_bin_dir)
        if cluster.running_pid() is not None:
            _say("Stopping PostgreSQL")
            cluster.stop()


def stored_password(data_dir: str | os.PathLike = DEFAULT_DATA_DIR) -> str | None:
    """The database password from the data folder's pgpass file, for tools and tests that must look for leaks."""
    return _read_pgpass_password(_Layout(Path(data_dir).expanduser().absolute()).pgpass_file, DATABASE_ROLE)


__all__ = ["DEFAULT_DATA_DIR", "ServerInfo", "ServerStatus", "down", "status", "stored_password", "up"]
