"""Command line of the tracking-server launcher: `python -m mlflow_server up|status|down`; prints `export` lines on stdout, progress on stderr."""

from __future__ import annotations

import argparse
import sys

from mlflow_server.launcher import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_WORKERS, STARTUP_TIMEOUT_S


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_server",
        description="Run PostgreSQL and an MLflow tracking server from one data folder, without Docker.",
        epilog='Point this shell at the server with: eval "$(python -m mlflow_server up)"',
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add_common(subparser: argparse.ArgumentParser) -> None:
        subparser.add_argument(
            "--data-dir",
            default=DEFAULT_DATA_DIR,
            help=f"folder for the database, artifacts, passwords, logs and state (default: {DEFAULT_DATA_DIR})",
        )
        subparser.add_argument(
            "--pg-bin-dir",
            default=None,
            help="folder with initdb, pg_ctl and psql (default: $MLFLOW_SERVER_PG_BIN_DIR, PATH, /usr/lib/postgresql/*/bin)",
        )

    up_parser = subparsers.add_parser("up", help="start PostgreSQL and mlflow server, or reuse running ones")
    add_common(up_parser)
    up_parser.add_argument(
        "--port", type=int, default=None, help="MLflow port (default: the remembered one, else a free one)"
    )
    up_parser.add_argument("--auth", action="store_true", help="turn on MLflow's basic-auth app with a generated admin")
    up_parser.add_argument(
        "--artifacts-destination",
        default=None,
        help="where proxied artifacts go: a folder or s3://bucket/prefix (default: DATA_DIR/artifacts)",
    )
    up_parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"interface to bind (default: {DEFAULT_HOST}; 0.0.0.0 for all)"
    )
    up_parser.add_argument(
        "--allowed-hosts",
        default=None,
        help="Host headers the server accepts besides localhost, e.g. 'gpu01:5000,10.0.0.5:*' (needed with --host 0.0.0.0)",
    )
    up_parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"uvicorn worker processes (default: {DEFAULT_WORKERS})"
    )
    up_parser.add_argument(
        "--webhooks-to-local",
        action="store_true",
        help="let registry webhooks reach http:// receivers on this machine or private networks (the app, "
        "python -m train.release.watch), with a 5 s webhook cache",
    )
    up_parser.add_argument(
        "--timeout", type=float, default=STARTUP_TIMEOUT_S, help="seconds to wait for /health (default: %(default)s)"
    )

    status_parser = subparsers.add_parser("status", help="say whether the server runs; exit code 0 when healthy")
    add_common(status_parser)
    down_parser = subparsers.add_parser("down", help="stop mlflow server and PostgreSQL (data is kept)")
    add_common(down_parser)

    compose_parser = subparsers.add_parser(
        "compose-init", help="write mlflow_server/.env and secrets/ for docker compose (keeps existing files)"
    )
    compose_parser.add_argument(
        "--compose-dir", default=None, help="folder of docker-compose.yaml (default: mlflow_server/)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "compose-init":
        from mlflow_server.compose import COMPOSE_DIR, init_compose_files

        for path in init_compose_files(arguments.compose_dir or COMPOSE_DIR):
            print(f"created {path}", file=sys.stderr)
        return 0
    # The launcher imports nothing heavy, but keeping it here lets `--help` answer instantly.
    from mlflow_server import launcher

    try:
        if arguments.command == "up":
            info = launcher.up(
                arguments.data_dir,
                port=arguments.port,
                auth=arguments.auth,
                artifacts_destination=arguments.artifacts_destination,
                host=arguments.host,
                workers=arguments.workers,
                allowed_hosts=arguments.allowed_hosts,
                pg_bin_dir=arguments.pg_bin_dir,
                timeout_s=arguments.timeout,
                webhooks_to_local=arguments.webhooks_to_local,
            )
            print("\n".join(info.export_lines()), flush=True)
            return 0
        if arguments.command == "status":
            report = launcher.status(arguments.data_dir, pg_bin_dir=arguments.pg_bin_dir)
            postgres = f"running (pid {report.postgres_pid})" if report.postgres_pid else "stopped"
            if report.server_pid:
                server = f"running (pid {report.server_pid}), /health {'OK' if report.healthy else 'not answering'}"
            else:
                server = "stopped"
            print(f"postgresql: {postgres}")
            print(f"mlflow server: {server}")
            if report.info is not None:
                print(f"tracking uri: {report.info.tracking_uri}")
                print(f"backend store: {report.info.backend_store_uri}")
                print(f"artifacts: {report.info.artifacts_destination}")
                print(f"auth: {'on' if report.info.auth else 'off'}")
                print(f"webhooks to local receivers: {'on' if report.info.webhooks_to_local else 'off'}")
            return 0 if report.running else 3
        launcher.down(arguments.data_dir, pg_bin_dir=arguments.pg_bin_dir)
        return 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
