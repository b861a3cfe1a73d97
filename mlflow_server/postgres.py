"""A private PostgreSQL cluster for the tracking server: reads and writes DIR/pg (data, log, socket) with initdb, pg_ctl and psql."""

from __future__ import annotations

import base64
import getpass
import glob
import hashlib
import hmac
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The operating-system user that owns the cluster when the launcher runs as root.
POSTGRES_SYSTEM_USER = "postgres"
PG_BIN_DIR_ENV = "MLFLOW_SERVER_PG_BIN_DIR"
# Unix socket paths are limited to 108 bytes; ".s.PGSQL.65535" and a margin leave this much for the folder.
_MAX_SOCKET_DIR_LENGTH = 90
_SCRAM_ITERATIONS = 4096
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def find_pg_bin_dir(pg_bin_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding initdb, pg_ctl and psql: the argument, $MLFLOW_SERVER_PG_BIN_DIR, PATH, or a standard place."""
    candidates: list[Path] = []
    chosen = pg_bin_dir or os.environ.get(PG_BIN_DIR_ENV)
    if chosen:
        candidates.append(Path(chosen))
    else:
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)

        def version_key(path: str) -> tuple[int, ...]:
            return tuple(int(part) for part in re.findall(r"\d+", path))

        for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin"):
            candidates.extend(Path(path) for path in sorted(glob.glob(pattern), key=version_key, reverse=True))
        candidates.extend([Path("/usr/local/pgsql/bin"), Path("/usr/local/bin")])
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "psql", "postgres")):
            return candidate
    raise ValueError(
        "PostgreSQL server binaries (initdb, pg_ctl, psql) were not found: install them "
        "(Debian/Ubuntu: `apt-get install postgresql`, macOS: `brew install postgresql@16`) "
        f"or point {PG_BIN_DIR_ENV} or --pg-bin-dir at their folder."
    )


def scram_sha256_verifier(password: str, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password`, so the plain password never reaches the server."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted_password = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted_password, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted_password, b"Server Key", hashlib.sha256).digest()

    def encode(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{encode(salt)}${encode(stored_key)}:{encode(server_key)}"


def process_is_running(pid: int | None) -> bool:
    """True when `pid` names a live process (zombies count as gone); reaps it when it is our own child."""
    if not pid or pid <= 0:
        return False
    try:
        finished_pid, _ = os.waitpid(pid, os.WNOHANG)
        if finished_pid == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass(frozen=True)
class PostgresCluster:
    """One cluster under `root` (DIR/pg): data/ holds the database files, postgres.log the server log."""

    root: Path
    bin_dir: Path

    @classmethod
    def at(cls, root: str | os.PathLike, pg_bin_dir: str | os.PathLike | None = None) -> PostgresCluster:
        return cls(root=Path(root).absolute(), bin_dir=find_pg_bin_dir(pg_bin_dir))

    # Paths and identities.

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def run_as(self) -> str | None:
        """PostgreSQL refuses to run as root, so root runs it as the `postgres` system user."""
        return POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def superuser(self) -> str:
        """The cluster's superuser: the OS user that owns it, so `peer` authentication lets it in over the socket."""
        return self.run_as or getpass.getuser()

    @property
    def socket_dir(self) -> Path:
        preferred = self.root / "run"
        if len(str(preferred)) <= _MAX_SOCKET_DIR_LENGTH:
            return preferred
        # A deep data folder would overflow the socket path limit, so the socket moves to a short private folder.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"mlflow-pg-{digest}"

    def _owner_ids(self) -> tuple[int, int]:
        if self.run_as is None:
            return os.getuid(), os.getgid()
        try:
            entry = pwd.getpwnam(self.run_as)
        except KeyError as error:
            raise ValueError(
                f"Running as root needs the system user {self.run_as!r} to own PostgreSQL: "
                "install the postgresql package or create it with `useradd --system postgres`."
            ) from error
        return entry.pw_uid, entry.pw_gid

    def _tool(self, name: str, *arguments: str) -> list[str]:
        command = [str(self.bin_dir / name), *arguments]
        if self.run_as is None:
            return command
        return ["runuser", "-u", self.run_as, "--", *command]

    def _run(self, command: list[str], *, input_text: str | None = None, timeout_s: float = 120) -> str:
        completed = subprocess.run(
            command,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            # The cluster owner may be unable to enter the caller's working folder.
            cwd=self.root,
            check=False,
        )
        if completed.returncode != 0:
            output = (completed.stdout + completed.stderr).strip()
            tool = next((Path(part).name for part in command if part.startswith(str(self.bin_dir))), command[0])
            raise RuntimeError(f"{tool} failed (exit code {completed.returncode}): {output}")
        return completed.stdout

    # Setup.

    def prepare_folders(self) -> None:
        """Create DIR/pg owned by the cluster owner, or say how to fix an existing one it cannot use."""
        uid, gid = self._owner_ids()
        if not self.root.exists():
            self.root.mkdir(parents=True, mode=0o700)
            os.chown(self.root, uid, gid)
        owner = self.root.stat().st_uid
        if owner != uid:
            owner_name = pwd.getpwuid(uid).pw_name
            raise ValueError(
                f"{self.root} must be owned by {owner_name!r}, who runs PostgreSQL: "
                f"run `chown -R {owner_name} {self.root}` or choose another --data-dir."
            )
        if self.run_as is not None:
            reachable = subprocess.run(
                ["runuser", "-u", self.run_as, "--", "test", "-w", str(self.root), "-a", "-x", str(self.root)],
                cwd="/",
                check=False,
            )
            if reachable.returncode != 0:
                raise ValueError(
                    f"The {self.run_as!r} user cannot reach {self.root}: a parent folder denies it access. "
                    "Give the parents search permission (`chmod o+x` on each) or choose a --data-dir "
                    "outside private folders such as /root or a 0700 temporary folder."
                )
        socket_dir = self.socket_dir
        socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chown(socket_dir, uid, gid)
        socket_dir.chmod(0o700)

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def initialize(self) -> None:
        """Run initdb once: peer authentication on the socket, SCRAM passwords over TCP."""
        self.prepare_folders()
        if self.is_initialized():
            return
        self._run(
            self._tool(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username",
                self.superuser,
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
            ),
            timeout_s=300,
        )

    # Running.

    def _postmaster_fields(self) -> list[str]:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def running_pid(self) -> int | None:
        fields = self._postmaster_fields()
        if not fields:
            return None
        try:
            pid = int(fields[0])
        except ValueError:
            return None
        return pid if process_is_running(pid) else None

    def running_port(self) -> int | None:
        fields = self._postmaster_fields()
        if self.running_pid() is None or len(fields) < 4:
            return None
        return int(fields[3])

    def start(self, port: int) -> int:
        """Start the cluster on 127.0.0.1:`port` and return the postmaster's pid; a running cluster is left as it is."""
        if self.running_pid() is not None:
            return self.running_pid()
        self.prepare_folders()
        # pg_ctl hands -o to a shell, so the socket folder is quoted there.
        socket_dir = str(self.socket_dir).replace("'", "'\\''")
        options = f"-p {int(port)} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{socket_dir}'"
        self._run(
            self._tool(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--wait",
                "--timeout",
                "120",
                "-o",
                options,
            ),
            timeout_s=150,
        )
        pid = self.running_pid()
        if pid is None:
            raise RuntimeError(f"PostgreSQL did not start; see {self.log_file}")
        return pid

    def stop(self, timeout_s: float = 60) -> None:
        """Stop the cluster with a fast shutdown (rolls back open transactions) and wait until it is gone."""
        pid = self.running_pid()
        if pid is None:
            return
        self._run(
            self._tool("pg_ctl", "stop", "--pgdata", str(self.data_dir), "--mode", "fast", "--wait", "--timeout", "60"),
            timeout_s=timeout_s + 30,
        )
        deadline = time.monotonic() + timeout_s
        while process_is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def run_sql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private socket; SQL goes through stdin, never the command line."""
        port = self.running_port()
        if port is None:
            raise RuntimeError(f"PostgreSQL in {self.data_dir} is not running")
        command = self._tool(
            "psql",
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set=ON_ERROR_STOP=1",
            "--host",
            str(self.socket_dir),
            "--port",
            str(port),
            "--username",
            self.superuser,
            "--dbname",
            database,
            "--file",
            "-",
        )
        return self._run(command, input_text=sql)

    def ensure_role_and_databases(self, role: str, password: str, databases: list[str]) -> None:
        """Create (or update the password of) a login role and the databases it owns."""
        for name in (role, *databases):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"{name!r} is not a plain PostgreSQL name: use lowercase letters, digits and _.")
        verifier = scram_sha256_verifier(password)
        statements = [
            f"SELECT 'CREATE ROLE {role} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')\\gexec",
            f"ALTER ROLE {role} WITH LOGIN PASSWORD '{verifier}';",
        ]
        for database in databases:
            statements.append(
                f"SELECT 'CREATE DATABASE {database} OWNER {role}' "
                f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec"
            )
        self.run_sql("\n".join(statements) + "\n")
