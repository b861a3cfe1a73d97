"""Command line of the AWS stack: `python -m aws up|status|down|cost`; reads flags and AWS credentials, prints what it did.

A bad flag exits with code 2 and one line on stderr before anything is created;
an AWS refusal exits with code 1 and the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from aws.cost import ON_DEMAND_HOURLY_USD
from aws.stack import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_STACK_ID,
    StackError,
    UpOptions,
    detect_caller_cidr,
    down,
    status,
    up,
)


def _local_git(*arguments: str) -> str | None:
    try:
        completed = subprocess.run(["git", *arguments], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return completed.stdout.strip() if completed.returncode == 0 and completed.stdout.strip() else None


def default_git_url() -> str | None:
    """The clone URL of this checkout's `origin`, as https (the new host has no SSH key for git)."""
    url = _local_git("remote", "get-url", "origin")
    if not url:
        return None
    scp_style = re.fullmatch(r"git@([^:]+):(.+)", url)
    if scp_style:
        return f"https://{scp_style.group(1)}/{scp_style.group(2)}"
    return url


def default_git_ref() -> str:
    branch = _local_git("rev-parse", "--abbrev-ref", "HEAD")
    return branch if branch and branch != "HEAD" else "main"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stack-id", default=DEFAULT_STACK_ID, help="names and tags every resource (default: %(default)s)"
    )
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_DEFAULT_REGION or the profile's)")
    parser.add_argument("--profile", default=None, help="AWS named profile (default: the usual credential chain)")
    parser.add_argument(
        "--key-file", type=Path, default=None, help="private key file (default: ~/.ssh/medimg-<stack-id>.pem)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aws", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="log every AWS step")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="create what is missing of the stack and print how to reach it")
    _common(up)
    up.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE, help="EC2 GPU type (default: %(default)s)")
    up.add_argument(
        "--ssh-cidr", default=None, help="who may SSH in (default: your address from checkip.amazonaws.com, /32)"
    )
    up.add_argument("--key-name", default=None, help="use this existing EC2 key pair instead of creating one")
    up.add_argument("--git-url", default=None, help="https clone URL of the project (default: this checkout's origin)")
    up.add_argument(
        "--git-ref", default=None, help="branch, tag or commit to check out (default: this checkout's branch)"
    )
    up.add_argument("--with-rds", action="store_true", help="also create an RDS PostgreSQL tracking database")
    up.add_argument("--db-instance-class", default="db.t4g.micro", help="RDS class (default: %(default)s)")
    up.add_argument("--ami-id", default=None, help="AMI to launch (default: the latest Deep Learning AMI from SSM)")
    up.add_argument("--volume-size", type=int, default=200, help="root disk in GiB (default: %(default)s)")
    up.add_argument(
        "--idle-minutes",
        type=int,
        default=30,
        help="stop the host after this long idle, 0 = never (default: %(default)s)",
    )
    up.add_argument(
        "--hourly-price", type=float, default=None, help="USD per hour for cost_usd (default: the price table)"
    )
    up.add_argument("--subnet-id", default=None, help="public subnet for the host (default: the default VPC's)")
    up.add_argument(
        "--no-wait", dest="wait", action="store_false", help="return without waiting for the instance and database"
    )
    up.add_argument("--json", action="store_true", help="print the stack as JSON")

    status = commands.add_parser("status", help="print what exists and the ssh / tunnel commands")
    _common(status)
    status.add_argument("--json", action="store_true", help="print the stack as JSON")

    down = commands.add_parser("down", help="delete everything the stack's tag marks, including the bucket's artifacts")
    _common(down)
    down.add_argument("--keep-bucket", action="store_true", help="keep the artifact bucket and its contents")
    down.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    cost = commands.add_parser("cost", help="estimate the dollars of a run from its wall time")
    source = cost.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", default=None, help="MLflow run whose wall_time_s metric to price")
    source.add_argument("--hours", type=float, default=None, help="price this many hours instead")
    cost.add_argument(
        "--instance-type", default=None, help="EC2 type from the price table (default: MEDIMG_INSTANCE_TYPE)"
    )
    cost.add_argument("--hourly-price", type=float, default=None, help="USD per hour (wins over --instance-type)")
    cost.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    return parser


def _session(arguments: argparse.Namespace):
    import boto3

    return boto3.Session(profile_name=arguments.profile, region_name=arguments.region)


def print_status(result: dict) -> None:
    print(f"stack {result['stack_id']} in {result['region']} (account {result['account_id']})")
    rows = [
        ("instance", _instance_line(result.get("instance"))),
        ("bucket", result.get("artifacts_destination")),
        ("database", _database_line(result.get("database"))),
        ("secret", result.get("secret")),
        (
            "security groups",
            ", ".join(f"{name} ({group_id})" for name, group_id in result["security_groups"].items()) or None,
        ),
        ("role", result.get("role")),
        ("instance profile", result.get("instance_profile")),
        ("key pair", result.get("key_pair")),
        ("private key", result.get("key_file")),
    ]
    for label, value in rows:
        print(f"  {label + ':':<18}{value or '-'}")
    if result.get("ssh_command"):
        print(f"\nssh:     {result['ssh_command']}")
        print(f"tunnel:  {result['tunnel_command']}")
        print(f"then:    export MLFLOW_TRACKING_URI={result['tracking_uri']}  (the MLflow UI is at that address)")
    elif result.get("instance"):
        print("\nThe instance has no public address (stopped?). `python -m aws up` starts a stopped instance again.")


def _instance_line(instance: dict | None) -> str | None:
    if not instance:
        return None
    return f"{instance['id']} {instance['type']} {instance['state']} {instance.get('public_dns') or ''}".strip()


def _database_line(database: dict | None) -> str | None:
    if not database:
        return None
    return f"{database['identifier']} {database['status']} {database.get('endpoint') or ''}".strip()


def command_up(arguments: argparse.Namespace) -> int:
    git_url = arguments.git_url or default_git_url()
    if not git_url:
        raise ValueError("No --git-url given and this folder has no git remote `origin`: pass --git-url https://...")
    ssh_cidr = arguments.ssh_cidr or detect_caller_cidr()
    hourly_price = arguments.hourly_price
    if hourly_price is None:
        hourly_price = ON_DEMAND_HOURLY_USD.get(arguments.instance_type)
        if hourly_price is None:
            logging.getLogger("medimg.aws").warning(
                "%s is not in the price table: runs will not log cost_usd unless you pass --hourly-price.",
                arguments.instance_type,
            )
    options = UpOptions(
        stack_id=arguments.stack_id,
        ssh_cidr=ssh_cidr,
        git_url=git_url,
        git_ref=arguments.git_ref or default_git_ref(),
        instance_type=arguments.instance_type,
        key_name=arguments.key_name,
        key_file=arguments.key_file,
        with_rds=arguments.with_rds,
        db_instance_class=arguments.db_instance_class,
        ami_id=arguments.ami_id,
        volume_size_gib=arguments.volume_size,
        idle_minutes=arguments.idle_minutes,
        hourly_price_usd=hourly_price,
        subnet_id=arguments.subnet_id,
        wait=arguments.wait,
    )
    result = up(_session(arguments), options, region=arguments.region)
    if arguments.json:
        print(json.dumps(result, indent=2))
    else:
        print_status(result)
        print(
            "\nThe host bootstraps for ~15 minutes (image build); follow it with: ssh ... tail -f /var/log/medimg-bootstrap.log"
        )
    return 0


def command_status(arguments: argparse.Namespace) -> int:
    result = status(_session(arguments), arguments.stack_id, region=arguments.region, key_file=arguments.key_file)
    if arguments.json:
        print(json.dumps(result, indent=2))
    elif not result["exists"]:
        print(f"stack {result['stack_id']} has no resources in {result['region']}")
    else:
        print_status(result)
    return 0


def command_down(arguments: argparse.Namespace) -> int:
    session = _session(arguments)
    current = status(session, arguments.stack_id, region=arguments.region, key_file=arguments.key_file)
    if not current["exists"]:
        print(f"stack {current['stack_id']} has no resources in {current['region']}; nothing to delete")
        return 0
    print_status(current)
    if not arguments.yes:
        warning = "" if arguments.keep_bucket else " and every artifact in the bucket"
        if not sys.stdin.isatty():
            raise ValueError(f"down deletes the resources above{warning}: pass --yes to confirm.")
        answer = input(f"\nThis deletes the resources above{warning}. Type the stack id to confirm: ")
        if answer.strip() != arguments.stack_id:
            print("not confirmed; nothing deleted")
            return 1
    report = down(
        session,
        arguments.stack_id,
        region=arguments.region,
        keep_bucket=arguments.keep_bucket,
        key_file=arguments.key_file,
    )
    for line in report.deleted:
        print(f"deleted {line}")
    for line in report.kept:
        print(f"kept    {line}")
    return 0


def command_cost(arguments: argparse.Namespace) -> int:
    from aws.cost import estimate

    result = estimate(
        run_id=arguments.run_id,
        hours=arguments.hours,
        instance_type=arguments.instance_type,
        hourly_price=arguments.hourly_price,
        tracking_uri=arguments.tracking_uri,
    )
    print(result.describe())
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Progress of up and down is worth seeing; boto's own chatter is not.
    verbose = arguments.verbose or arguments.command in ("up", "down")
    logging.getLogger("medimg.aws").setLevel(logging.INFO if verbose else logging.WARNING)
    handlers = {"up": command_up, "status": command_status, "down": command_down, "cost": command_cost}
    try:
        return handlers[arguments.command](arguments)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (StackError, ClientError, BotoCoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
