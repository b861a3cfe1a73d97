"""Command line of the AWS stack: `python -m aws up|status|down|cost`; reads flags and AWS credentials, prints what it did.

A bad flag exits with code 2 and one line on stderr before anything is created;
an AWS refusal exits with code 1 and the reason, in one line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from aws.stack import (
    DEFAULT_STACK_ID,
    StackError,
    UpOptions,
    database_storage_gib,
    detect_caller_cidr,
    down,
    down_refusal,
    stack_name,
    status,
    template_allowed_values,
    template_defaults,
    up,
)


def true_or_false(text: str) -> str:
    """A template switch as CloudFormation takes it: the word true or false."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is neither true nor false")
    return text.lower()


def monitoring_interval(text: str) -> str:
    """Seconds between enhanced monitoring samples, one of the values the template allows."""
    allowed = template_allowed_values("DatabaseMonitoringInterval")
    if text not in allowed:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(allowed)} seconds")
    return text


# The flags of `up` that set one template parameter each (dest: its name in aws/stack.yaml). One left
# out keeps the stack's current value, or takes the template's default (in brackets) for a new stack.
SETTING_FLAGS = [
    ("--instance-type", "InstanceType", str, "EC2 GPU type [g5.xlarge]"),
    ("--git-url", "GitUrl", str, "https clone URL of the project [this checkout's origin]"),
    ("--git-ref", "GitRef", str, "branch, tag or commit the host checks out [this checkout's branch]"),
    ("--key-name", "KeyName", str, "an existing EC2 key pair to use [the stack makes medimg-<id>]"),
    ("--db-instance-class", "DatabaseInstanceClass", str, "RDS class [db.t4g.micro]"),
    ("--volume-size", "VolumeSizeGiB", int, "root disk in GiB [200]"),
    ("--idle-minutes", "IdleMinutes", int, "stop the host after this long idle, 0 = never [30]"),
    ("--hourly-price", "HourlyPriceUsd", float, "USD per hour for cost_usd [the price table's, for a new type]"),
    ("--db-multi-az", "DatabaseMultiAz", true_or_false, "a standby database in a second zone [false]"),
    ("--db-monitoring-interval", "DatabaseMonitoringInterval", monitoring_interval, "seconds between OS samples [60]"),
    (
        "--db-deletion-protection",
        "DatabaseDeletionProtection",
        true_or_false,
        "RDS refuses to delete the database [true]",
    ),
    ("--bucket-kms", "ArtifactBucketKms", true_or_false, "artifacts under the stack's KMS key, for good [false]"),
    ("--access-log-bucket", "AccessLogBucket", str, "an existing bucket for the access logs [the stack makes one]"),
    ("--access-log-days", "AccessLogRetentionDays", int, "days the stack's log bucket keeps each log [365]"),
]
# The flags of `up` that `cost --month` also takes: the parameters that change what the stack costs.
MONTH_FLAGS = ("--db-instance-class", "--volume-size", "--db-multi-az", "--db-monitoring-interval", "--bucket-kms")
MONTH_FLAGS += ("--access-log-bucket", "--access-log-days")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aws", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="log every AWS step")
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = {
        "up": commands.add_parser("up", help="create or update the stack through a change set"),
        "status": commands.add_parser("status", help="print the stack, its outputs and the ssh commands"),
        "down": commands.add_parser("down", help="delete the stack, then its artifact and access-log buckets"),
    }
    for name, subparser in subparsers.items():
        subparser.add_argument("--stack-id", default=DEFAULT_STACK_ID, help="the stack is medimg-<id> [%(default)s]")
        subparser.add_argument("--region", default=None, help="AWS region [AWS_DEFAULT_REGION or the profile's]")
        subparser.add_argument("--profile", default=None, help="AWS named profile [the usual credential chain]")
        subparser.add_argument("--key-file", type=Path, default=None, help="private key [~/.ssh/medimg-<id>.pem]")
        if name != "status":
            subparser.add_argument("--yes", action="store_true", help="do not ask before changing anything")
        if name != "down":
            subparser.add_argument("--json", action="store_true", help="print the stack as JSON")
    for flag, parameter, kind, text in SETTING_FLAGS:
        subparsers["up"].add_argument(
            flag, dest=parameter, type=kind, default=None, help=text, metavar=flag[2:].upper().replace("-", "_")
        )
    subparsers["up"].add_argument("--ssh-cidr", default=None, help="who may SSH in [your address, from checkip, /32]")
    subparsers["up"].add_argument("--with-rds", action="store_true", help="also make an RDS PostgreSQL tracking store")
    subparsers["up"].add_argument("--ami-id", default=None, help="AMI to launch [the latest Deep Learning AMI]")
    subparsers["up"].add_argument("--subnet-id", default=None, help="public subnet of the host [a default VPC one]")
    subparsers["down"].add_argument(
        "--keep-bucket", action="store_true", help="keep the buckets: artifacts and access logs"
    )
    _add_cost_parser(commands)
    return parser


def _add_cost_parser(commands) -> None:
    cost = commands.add_parser(
        "cost", help="estimate the dollars of a run from its wall time, or of the stack per month"
    )
    source = cost.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", default=None, help="MLflow run whose wall_time_s metric to price")
    source.add_argument("--hours", type=float, default=None, help="price this many hours instead")
    source.add_argument("--month", action="store_true", help="price a month of the stack, item by item")
    cost.add_argument("--instance-type", default=None, help="EC2 type from the price table [MEDIMG_INSTANCE_TYPE]")
    cost.add_argument("--hourly-price", type=float, default=None, help="USD per hour (wins over --instance-type)")
    cost.add_argument("--tracking-uri", default=None, help="MLflow tracking URI [MLFLOW_TRACKING_URI]")
    month = cost.add_argument_group("with --month: the stack's settings, as `up` takes them")
    month.add_argument("--with-rds", action="store_true", help="the stack has the RDS tracking database")
    for flag, parameter, kind, text in SETTING_FLAGS:
        if flag in MONTH_FLAGS:
            month.add_argument(
                flag, dest=parameter, type=kind, default=None, help=text, metavar=flag[2:].upper().replace("-", "_")
            )
    month.add_argument(
        "--gpu-hours", type=float, default=0.0, help="hours the GPU host runs in the month [%(default)s]"
    )
    month.add_argument(
        "--artifact-gb", type=float, default=None, help="GB of artifacts in the bucket [the price table's]"
    )


def _session(arguments: argparse.Namespace):
    import boto3

    return boto3.Session(profile_name=arguments.profile, region_name=arguments.region)


def print_status(result: dict) -> None:
    """The stack line, the live instance, every stack output, the latest (or failing) event, then the ssh lines."""
    print(f"stack {result['stack_name']} in {result['region']} (account {result['account_id']}): {result['status']}")
    rows = {"instance": " ".join(str(value) for value in (result["instance"] or {}).values() if value)}
    rows.update(result["outputs"], PrivateKey=result["key_file"], LastEvent=result["last_event"])
    for label, value in {**rows, **({"Failed": result["failure"]} if result["failure"] else {})}.items():
        print(f"  {label + ':':<22}{value or '-'}")
    if result["ssh_command"]:
        print(f"\nssh:     {result['ssh_command']}")
        print(f"tunnel:  {result['tunnel_command']}")
        print(f"then:    export MLFLOW_TRACKING_URI={result['outputs']['TrackingUri']}  (the MLflow UI is there)")
    elif result["instance"]:
        print("\nThe host has no public address now (stopped?). `python -m aws up` starts a stopped host again.")


def _ask(question: str, arguments: argparse.Namespace) -> str | None:
    """The user's answer, or None with --yes; without a terminal, ValueError saying to pass --yes."""
    if arguments.yes:
        return None
    if not sys.stdin.isatty():
        raise ValueError(f"{question.split('.')[0]}: pass --yes to go ahead without being asked.")
    return input(question).strip()


def command_up(arguments: argparse.Namespace) -> int:
    def confirm(lines: list[str]) -> bool:
        shown = [f"change set for stack {stack_name(arguments.stack_id)}:", *[f"  {line}" for line in lines]]
        print("\n".join(shown), file=sys.stderr if arguments.json else sys.stdout)
        return _ask("This changes the stack as listed. Type yes to go ahead: ", arguments) in (None, "yes")

    given = {parameter: getattr(arguments, parameter) for _, parameter, *_ in SETTING_FLAGS}
    settings = {name: str(value) for name, value in given.items() if value is not None}
    settings.update({"WithDatabase": "true"} if arguments.with_rds else {})
    cidr = arguments.ssh_cidr or detect_caller_cidr()
    options = UpOptions(arguments.stack_id, cidr, settings, arguments.ami_id, arguments.subnet_id, arguments.key_file)
    result = up(_session(arguments), options, region=arguments.region, confirm=confirm)
    if result is None:
        print("not confirmed; nothing changed")
        return 1
    if arguments.json:
        print(json.dumps(result, indent=2))
        return 0
    print_status(result)
    print("\nA new host bootstraps for ~15 minutes; follow it with: ssh ... tail -f /var/log/medimg-bootstrap.log")
    return 0


def command_status(arguments: argparse.Namespace) -> int:
    result = status(_session(arguments), arguments.stack_id, region=arguments.region, key_file=arguments.key_file)
    if arguments.json:
        print(json.dumps(result, indent=2))
    elif not result["exists"]:
        kept = f"; bucket {result['kept_bucket']} was kept" if result["kept_bucket"] else ""
        print(f"stack {result['stack_name']} does not exist in {result['region']}{kept}")
    else:
        print_status(result)
    return 0


def command_down(arguments: argparse.Namespace) -> int:
    session = _session(arguments)
    current = status(session, arguments.stack_id, region=arguments.region, key_file=arguments.key_file)
    if not current["exists"] and (arguments.keep_bucket or not current["kept_bucket"]):
        print(f"stack {current['stack_name']} does not exist in {current['region']}; nothing to delete")
        return 0
    refusal = down_refusal(arguments.stack_id, arguments.region, current["parameters"], arguments.keep_bucket)
    if refusal:
        raise StackError(refusal)
    if current["exists"]:
        print_status(current)
    else:
        print(f"only bucket {current['kept_bucket']} is left (kept by an earlier down --keep-bucket)")
    warning = "" if arguments.keep_bucket else " and every artifact in the bucket, with its access logs"
    answer = _ask(f"\nThis deletes the above{warning}. Type the stack id to confirm: ", arguments)
    if answer not in (None, arguments.stack_id):
        print("not confirmed; nothing deleted")
        return 1
    keep = arguments.keep_bucket
    for line in down(session, arguments.stack_id, arguments.region, keep_bucket=keep, key_file=arguments.key_file):
        print(line)
    return 0


def command_cost(arguments: argparse.Namespace) -> int:
    from aws.cost import estimate, monthly_estimate

    if arguments.month:
        # The template's defaults, then what the flags name: the stack a plain `up` with the same flags makes.
        given = {parameter: getattr(arguments, parameter, None) for _, parameter, *_ in SETTING_FLAGS}
        parameters = {**template_defaults(), **{name: str(value) for name, value in given.items() if value is not None}}
        parameters.update({"WithDatabase": "true"} if arguments.with_rds else {})
        parameters.update(InstanceType=arguments.instance_type or parameters["InstanceType"])
        parameters.update(HourlyPriceUsd="" if arguments.hourly_price is None else str(arguments.hourly_price))
        month = monthly_estimate(
            parameters,
            database_storage_gib=database_storage_gib(),
            gpu_hours=arguments.gpu_hours,
            artifact_gb=arguments.artifact_gb,
        )
        print(month.describe())
        return 0
    names = ("run_id", "hours", "instance_type", "hourly_price", "tracking_uri")
    print(estimate(**{name: getattr(arguments, name) for name in names}).describe())
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Progress of up and down (each stack event) is worth seeing; boto's own chatter is not.
    verbose = arguments.verbose or arguments.command in ("up", "down")
    logging.getLogger("medimg.aws").setLevel(logging.INFO if verbose else logging.WARNING)
    handlers = {"up": command_up, "status": command_status, "down": command_down, "cost": command_cost}
    try:
        return handlers[arguments.command](arguments)
    except (ValueError, StackError, ClientError, BotoCoreError) as error:
        # One line: AWS reasons sometimes span several.
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
