"""Reads aws/stack.yaml and one AWS account (a boto3 Session); creates, updates, describes and deletes the medimg CloudFormation stack.

`up` shows a change set, executes it and follows its events; `status` reads outputs, events and the live host;
`down` deletes the stack, then empties and deletes the buckets the template retains (unless --keep-bucket).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from aws.cost import ON_DEMAND_HOURLY_USD

LOGGER = logging.getLogger("medimg.aws")
TEMPLATE_PATH = Path(__file__).resolve().with_name("stack.yaml")
STACK_TAG = "medimg:stack"
DEFAULT_STACK_ID = "dev"
CHECKIP_URL = "https://checkip.amazonaws.com"
# Stack statuses that mean the last operation failed (CREATE_FAILED, ROLLBACK_COMPLETE, UPDATE_ROLLBACK_COMPLETE, ...).
_FAILED = ("_FAILED", "ROLLBACK_COMPLETE")
# Capacity and quota refusals surface as the instance's failure reason; these say what to do.
_ADVICE = {
    "VcpuLimitExceeded": "your vCPU quota for this instance family is too low: ask for more in Service Quotas "
    "('Running On-Demand G and VT instances' or '... P instances'), then run up again",
    "InsufficientInstanceCapacity": "the zone has no capacity for this type now: run up again later, "
    "or pass --subnet-id of a subnet in another zone",
}


class StackError(RuntimeError):
    """AWS refused or could not do what the stack needs; the message says what to do."""


class _TemplateLoader(yaml.SafeLoader):
    """Reads the template's Parameters; intrinsic functions (!Ref, !Sub, ...) are not needed here and load as None."""


_TemplateLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


@functools.cache
def _template() -> dict:
    return yaml.load(TEMPLATE_PATH.read_text(), Loader=_TemplateLoader)


def template_defaults() -> dict[str, str]:
    return {name: str(spec["Default"]) for name, spec in _template()["Parameters"].items() if "Default" in spec}


def template_allowed_values(name: str) -> list[str]:
    return [str(value) for value in _template()["Parameters"][name]["AllowedValues"]]


def database_storage_gib() -> float:
    """The tracking database's allocated storage as the template declares it, for the monthly estimate."""
    return float(_template()["Resources"]["Database"]["Properties"]["AllocatedStorage"])


def stack_name(stack_id: str) -> str:
    if len(stack_id) > 20 or not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", stack_id):
        raise ValueError(f"Stack id {stack_id!r}: use 1-20 lowercase letters, digits and single hyphens, e.g. dev.")
    return f"medimg-{stack_id}"


def default_key_file(stack_id: str) -> Path:
    return Path.home() / ".ssh" / f"medimg-{stack_id}.pem"


def _local_git(*arguments: str) -> str | None:
    try:
        completed = subprocess.run(["git", *arguments], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return completed.stdout.strip() if completed.returncode == 0 and completed.stdout.strip() else None


def default_git_url() -> str | None:
    """The clone URL of this checkout's `origin`, as https (the new host has no SSH key for git)."""
    url = _local_git("remote", "get-url", "origin") or ""
    return re.sub(r"^git@([^:]+):", r"https://\1/", url) or None


def default_git_ref() -> str:
    branch = _local_git("rev-parse", "--abbrev-ref", "HEAD")
    return branch if branch and branch != "HEAD" else "main"


def parse_ssh_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network allowed to reach port 22; a bare address is that one host. A /0 network is refused outright."""
    text = text.strip()
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise ValueError(f"--ssh-cidr {text!r} is not an address or network ({error}); pass A.B.C.D/32.") from None
    if network.prefixlen == 0:
        raise ValueError(f"--ssh-cidr {text} would open SSH to the whole internet; pass your address as A.B.C.D/32.")
    if network.prefixlen < network.max_prefixlen:
        LOGGER.warning("SSH will be open to %d addresses (%s), not just yours.", network.num_addresses, network)
    return network


def detect_caller_cidr(url: str = CHECKIP_URL, timeout_s: float = 10) -> str:
    """This machine's public address as a one-host CIDR, asked of checkip.amazonaws.com at run time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read(100).decode("ascii", "replace").strip()
        address = ipaddress.ip_address(text)
    except (OSError, ValueError) as error:
        raise ValueError(f"Could not detect your address from {url} ({error}); pass --ssh-cidr A.B.C.D/32.") from None
    return f"{address}/{address.max_prefixlen}"


class _Aws:
    """One region of one account: a boto3 client per service, made once, and the account id."""

    def __init__(self, session: Any, region: str | None):
        self.region = region or session.region_name or os.environ.get("AWS_DEFAULT_REGION")
        if not self.region:
            raise ValueError("No AWS region: pass --region (e.g. us-east-1) or set AWS_DEFAULT_REGION.")
        self.client = functools.cache(lambda service: session.client(service, region_name=self.region))

    @functools.cached_property
    def account_id(self) -> str:
        return self.client("sts").get_caller_identity()["Account"]


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _describe(aws: _Aws, stack_id: str) -> tuple[dict | None, dict[str, str], dict[str, str]]:
    """The stack (None when there is none), its outputs and its parameters."""
    try:
        stack = aws.client("cloudformation").describe_stacks(StackName=stack_name(stack_id))["Stacks"][0]
    except ClientError as error:
        if "does not exist" not in str(error):
            raise
        return None, {}, {}
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stack.get("Outputs") or []}
    return stack, outputs, {item["ParameterKey"]: item["ParameterValue"] for item in stack.get("Parameters") or []}


def _instance(aws: _Aws, instance_id: str | None) -> dict | None:
    if not instance_id:
        return None
    # A filter, unlike InstanceIds, answers an unknown id with nothing instead of an error.
    found = aws.client("ec2").describe_instances(Filters=[{"Name": "instance-id", "Values": [instance_id]}])
    return next((instance for reservation in found["Reservations"] for instance in reservation["Instances"]), None)


def kept_bucket(aws: _Aws, stack_id: str, kind: str = "") -> str | None:
    """The stack's artifact bucket (`kind` "logs": its access-log bucket) if it exists, the stack's own or one
    `down --keep-bucket` left, else None."""
    infix = f"{kind}-" if kind else ""
    name = f"medimg-{stack_id}-{infix}{aws.account_id}-{aws.region}"  # as the template names it
    try:
        aws.client("s3").head_bucket(Bucket=name)
        tags = aws.client("s3").get_bucket_tagging(Bucket=name)["TagSet"]
    except ClientError as error:
        if _code(error) in ("404", "NoSuchBucket", "NotFound"):
            return None
        if _code(error) != "NoSuchTagSet":
            raise StackError(f"Bucket {name} exists but is not usable ({_code(error)}).") from error
        tags = []
    if {"Key": STACK_TAG, "Value": stack_id} not in tags:
        raise StackError(f"Bucket {name} exists without the tag {STACK_TAG}={stack_id}; it is not this stack's.")
    return name


def _event_line(event: dict) -> str:
    line = f"{event['LogicalResourceId']} ({event['ResourceType']}) {event['ResourceStatus']}"
    reason = " ".join((event.get("ResourceStatusReason") or "").split())
    return f"{line}: {reason}" if reason else line


def first_failure(events: list[dict]) -> str | None:
    """The oldest failed resource event of `events` (oldest first) in one line, with advice where there is some."""
    for event in events:
        if event["ResourceStatus"].endswith("_FAILED") and event["ResourceType"] != "AWS::CloudFormation::Stack":
            advice = [text for code, text in _ADVICE.items() if code in (event.get("ResourceStatusReason") or "")]
            return "; ".join([_event_line(event), *advice])
    return None


def _events(aws: _Aws, stack_ref: str) -> list[dict]:
    """The stack's latest events, oldest first (one page: far more than one operation of this stack makes)."""
    return aws.client("cloudformation").describe_stack_events(StackName=stack_ref)["StackEvents"][::-1]


def _run(aws: _Aws, stack_ref: str, operation: Callable[[], Any], poll_seconds: float) -> dict:
    """Start `operation` on the stack and log each new event until it settles; StackError names the first failure."""
    seen = {event["EventId"] for event in _events(aws, stack_ref)}
    operation()
    events: list[dict] = []
    while True:
        stack = aws.client("cloudformation").describe_stacks(StackName=stack_ref)["Stacks"][0]
        for event in _events(aws, stack_ref):
            if event["EventId"] not in seen:
                seen.add(event["EventId"])
                events.append(event)
                LOGGER.info("  %s", _event_line(event))
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            break
        time.sleep(poll_seconds)
    if stack["StackStatus"].endswith(_FAILED):
        cause = first_failure(events) or stack.get("StackStatusReason") or "see its events"
        raise StackError(f"stack {stack['StackName']} ended {stack['StackStatus']}: {cause}")
    return stack


@dataclass
class UpOptions:
    """What `up` asks for; `settings` are template parameters by name, and one left out keeps the stack's value."""

    stack_id: str
    ssh_cidr: str
    settings: dict[str, str] = field(default_factory=dict)
    ami_id: str | None = None
    subnet_id: str | None = None
    key_file: Path | None = None
    poll_seconds: float = 15


def _parameter_values(aws: _Aws, options: UpOptions, stack: dict | None, previous: dict, instance: dict | None) -> dict:
    """Every template parameter: the command line's, else the stack's, else the template's default.

    All of them go to CloudFormation each time, so an `up` that changes nothing sends what the stack has.
    """
    values = {**template_defaults(), **previous, **options.settings, "DatabaseSubnetIds": ""}
    if stack is None:
        values["GitRef"] = options.settings.get("GitRef") or default_git_ref()
        values["ExistingBucket"] = kept_bucket(aws, options.stack_id) or ""
        # A kept log bucket goes on taking the kept artifact bucket's logs, as that bucket's logging still says.
        values["AccessLogBucket"] = values["AccessLogBucket"] or kept_bucket(aws, options.stack_id, "logs") or ""
    if previous.get("ArtifactBucketKms") == "true" and values["ArtifactBucketKms"] != "true":
        raise ValueError(
            "The artifact bucket is encrypted with the stack's KMS key and stays so: artifacts written so far "
            "need that key. Leave --bucket-kms out (or true)."
        )
    values["GitUrl"] = values.get("GitUrl") or default_git_url() or ""
    if not values["GitUrl"]:
        raise ValueError("No --git-url given and this folder has no git remote `origin`: pass --git-url https://...")
    if "HourlyPriceUsd" not in options.settings and (stack is None or "InstanceType" in options.settings):
        # A new or retyped host takes its price from the table, so that runs on it log cost_usd.
        price = ON_DEMAND_HOURLY_USD.get(values["InstanceType"])
        if price is None:
            LOGGER.warning("%s has no price in the table: pass --hourly-price for cost_usd.", values["InstanceType"])
        values["HourlyPriceUsd"] = "" if price is None else str(price)
    values.update(StackId=options.stack_id, SshCidr=str(parse_ssh_cidr(options.ssh_cidr)))
    # The AMI is pinned (--ami-id, else the host's own) so that an update never replaces the host for a newer one.
    values["ImageId"] = options.ami_id or (instance or {}).get("ImageId") or _dlami_image_id(aws)
    values["SubnetId"] = options.subnet_id or values["SubnetId"]
    if values["SubnetId"]:
        # Outside the default VPC: the subnet's VPC, and all that VPC's subnets for the database, looked up
        # each time so that the database's subnet group follows the VPC.
        ec2 = aws.client("ec2")
        values["VpcId"] = ec2.describe_subnets(SubnetIds=[values["SubnetId"]])["Subnets"][0]["VpcId"]
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [values["VpcId"]]}])["Subnets"]
        values["DatabaseSubnetIds"] = ",".join(subnet["SubnetId"] for subnet in subnets)
    return values


def _dlami_image_id(aws: _Aws) -> str:
    parameter = template_defaults()["ImageParameter"]
    try:
        return aws.client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
    except ClientError as error:
        raise StackError(
            f"Could not read the AMI id from SSM parameter {parameter} ({_code(error)}); pass --ami-id of a "
            "Deep Learning AMI with the NVIDIA driver and container toolkit."
        ) from error


def _change_set(aws: _Aws, values: dict[str, str], creating: bool, poll_seconds: float) -> dict | None:
    """The change set that brings the stack to the template with `values`, described; None when nothing changes."""
    cloudformation = aws.client("cloudformation")
    created = cloudformation.create_change_set(
        StackName=stack_name(values["StackId"]),
        ChangeSetName=f"medimg-up-{uuid.uuid4().hex[:12]}",
        ChangeSetType="CREATE" if creating else "UPDATE",
        TemplateBody=TEMPLATE_PATH.read_text(),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in values.items()],
        Capabilities=["CAPABILITY_IAM"],
        # Stack tags reach every resource that takes tags: cost allocation by stack.
        Tags=[{"Key": STACK_TAG, "Value": values["StackId"]}, {"Key": "medimg:managed-by", "Value": "python -m aws"}],
    )
    change_set = cloudformation.describe_change_set(ChangeSetName=created["Id"])
    while change_set["Status"] not in ("CREATE_COMPLETE", "FAILED"):
        time.sleep(poll_seconds)
        change_set = cloudformation.describe_change_set(ChangeSetName=created["Id"])
    if change_set["Status"] == "FAILED":
        cloudformation.delete_change_set(ChangeSetName=created["Id"])
        if any(text in change_set.get("StatusReason", "") for text in ("didn't contain changes", "No updates are")):
            return None
        raise StackError(f"CloudFormation refused the change set: {change_set.get('StatusReason')}")
    return change_set


def change_lines(change_set: dict) -> list[str]:
    """One line per resource the change set adds, modifies or removes, saying when it replaces one."""
    lines = []
    for change in change_set.get("Changes", []):
        item = change["ResourceChange"]
        replaced = {"True": " (replaced)", "Conditional": " (may be replaced)"}.get(item.get("Replacement", ""), "")
        lines.append(f"{item['Action']:<7} {item['ResourceType']:<38} {item['LogicalResourceId']}{replaced}")
    return lines or ["(no resource changes: parameter values only)"]


def up(session: Any, options: UpOptions, region: str | None = None, confirm: Callable | None = None) -> dict | None:
    """Create or update the stack through a change set that `confirm` sees first; returns `status`, None if declined."""
    name, aws = stack_name(options.stack_id), _Aws(session, region)
    stack, outputs, previous = _describe(aws, options.stack_id)
    if stack and stack["StackStatus"] in ("ROLLBACK_COMPLETE", "REVIEW_IN_PROGRESS"):
        # A stack whose creation failed, or was never executed, holds nothing and can only be deleted.
        LOGGER.info("deleting stack %s (%s) before creating it again", stack["StackName"], stack["StackStatus"])
        delete = functools.partial(aws.client("cloudformation").delete_stack, StackName=stack["StackId"])
        _run(aws, stack["StackId"], delete, options.poll_seconds)
        stack, outputs, previous = None, {}, {}
    if stack and stack["StackStatus"].endswith("_IN_PROGRESS"):
        raise StackError(f"stack {stack['StackName']} is busy ({stack['StackStatus']}); run up when it has finished.")
    values = _parameter_values(aws, options, stack, previous, _instance(aws, outputs.get("InstanceId")))
    key_file = Path(options.key_file or default_key_file(options.stack_id))
    if stack is None and not values["KeyName"] and key_file.exists():
        raise ValueError(f"{key_file} exists but stack {name} does not: move it or pass --key-file.")
    change_set = _change_set(aws, values, stack is None, options.poll_seconds)
    if change_set is None:
        LOGGER.info("stack %s already matches; nothing to change", name)
    else:
        cloudformation, approved = aws.client("cloudformation"), False
        try:
            approved = confirm is None or confirm(change_lines(change_set))
        finally:
            if not approved:  # a declined or interrupted change set goes, and the empty stack a CREATE one made
                cloudformation.delete_change_set(ChangeSetName=change_set["ChangeSetId"])
                if stack is None:
                    cloudformation.delete_stack(StackName=change_set["StackId"])
        if not approved:
            return None
        LOGGER.info("%s stack %s", "updating" if stack else "creating", name)
        execute = functools.partial(cloudformation.execute_change_set, ChangeSetName=change_set["ChangeSetId"])
        _run(aws, change_set["StackId"], execute, options.poll_seconds)
    _ready_host(aws, options, key_file)
    return status(session, options.stack_id, aws.region, options.key_file)


def _ready_host(aws: _Aws, options: UpOptions, key_file: Path) -> None:
    """Copy the private key of the stack's own key pair to `key_file` once, and start a host the idle timer stopped."""
    _, outputs, parameters = _describe(aws, options.stack_id)
    if not parameters.get("KeyName") and outputs.get("KeyName") and not key_file.exists():
        save_private_key(aws, outputs["KeyName"], key_file)
    instance = _instance(aws, outputs.get("InstanceId"))
    if instance and instance["State"]["Name"] in ("stopping", "stopped"):
        ec2, ids, config = aws.client("ec2"), [instance["InstanceId"]], {"Delay": max(options.poll_seconds, 1)}
        ec2.get_waiter("instance_stopped").wait(InstanceIds=ids, WaiterConfig=config)
        ec2.start_instances(InstanceIds=ids)
        LOGGER.info("started stopped instance %s", ids[0])
        ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=config)


def save_private_key(aws: _Aws, key_name: str, key_file: Path) -> None:
    """Write the private key that EC2 keeps in SSM, under the pair's id, for a key pair CloudFormation made."""
    key_pair = aws.client("ec2").describe_key_pairs(KeyNames=[key_name])["KeyPairs"][0]
    secret = aws.client("ssm").get_parameter(Name=f"/ec2/keypair/{key_pair['KeyPairId']}", WithDecryption=True)
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created with mode 0600 from the first byte, so the key is never readable by others.
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secret["Parameter"]["Value"])
    LOGGER.info("private key of key pair %s written to %s", key_name, key_file)


def status(session: Any, stack_id: str, region: str | None = None, key_file: Path | None = None) -> dict:
    """The stack's state, outputs and events, its live instance, and the ssh commands that reach it."""
    name, aws = stack_name(stack_id), _Aws(session, region)
    stack, outputs, parameters = _describe(aws, stack_id)
    events = _events(aws, stack["StackId"]) if stack else []
    # The failure that matters is the last operation's, which starts at its "User Initiated" stack event.
    starts = [index for index, event in enumerate(events) if event.get("ResourceStatusReason") == "User Initiated"]
    last_start = starts[-1] if starts else 0
    if key_file is None and stack and not parameters.get("KeyName") and default_key_file(stack_id).exists():
        key_file = default_key_file(stack_id)
    found, instance = _instance(aws, outputs.get("InstanceId")), None
    if found:
        state, address = found["State"]["Name"], found.get("PublicDnsName") or None
        instance = {"id": found["InstanceId"], "type": found["InstanceType"], "state": state, "public_dns": address}
    ssh_command = tunnel_command = None
    # The live address, not the output: a host that stopped and started again has a new one.
    if instance and instance["state"] == "running" and instance["public_dns"]:
        destination = f"{outputs['LoginUser']}@{instance['public_dns']}"
        identity = f"-i {key_file} " if key_file else ""
        port = urllib.parse.urlsplit(outputs["TrackingUri"]).port
        ssh_command = f"ssh {identity}{destination}"
        tunnel_command = f"ssh {identity}-N -L {port}:127.0.0.1:{port} {destination}"
    return {
        "stack_name": name,
        "region": aws.region,
        "account_id": aws.account_id,
        "exists": stack is not None,
        "status": stack and stack["StackStatus"],
        "outputs": outputs,
        "instance": instance,
        "key_file": str(key_file) if key_file else None,
        "ssh_command": ssh_command,
        "tunnel_command": tunnel_command,
        "last_event": _event_line(events[-1]) if events else None,
        "failure": first_failure(events[last_start:]) if stack and stack["StackStatus"].endswith(_FAILED) else None,
        "kept_bucket": None if stack else kept_bucket(aws, stack_id),
        "parameters": parameters,
    }


def down_refusal(stack_id: str, region: str | None, parameters: dict[str, str], keep_bucket: bool) -> str | None:
    """Why `down` must not delete the stack with these parameters, and how to go on on purpose; None when it may."""
    where = f" --region {region}" if region else ""
    if parameters.get("WithDatabase") == "true" and parameters.get("DatabaseDeletionProtection") == "true":
        database = f"medimg-{stack_id}-mlflow"
        return (
            f"stack {stack_name(stack_id)} keeps its database {database} under deletion protection, so down deletes "
            "nothing. To delete the database and every run and model in it on purpose: snapshot it if you may need it "
            f"(aws rds create-db-snapshot --db-instance-identifier {database} --db-snapshot-identifier {database}-final"
            f"{where}), turn the protection off with `python -m aws up --stack-id {stack_id}{where} "
            f"--db-deletion-protection false`, then run `python -m aws down --stack-id {stack_id}{where}` again."
        )
    if keep_bucket and parameters.get("ArtifactBucketKms") == "true" and not parameters.get("ExistingBucket"):
        return (
            "the artifacts are encrypted with the stack's KMS key, which down schedules for deletion with the stack, "
            "so a kept bucket would hold artifacts nobody can read. Copy them out first (the host role can read them), "
            "or run down without --keep-bucket."
        )
    return None


def _empty_and_delete_bucket(aws: _Aws, bucket: str) -> int:
    """Delete every object version and delete marker (versioning keeps them all), then the bucket; returns the count."""
    s3, deleted = aws.client("s3"), 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        items = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        entries = [{"Key": item["Key"], "VersionId": item["VersionId"]} for item in items]
        # DeleteObjects takes at most 1,000 keys per call.
        for start in range(0, len(entries), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": entries[start : start + 1000], "Quiet": True})
        deleted += len(entries)
    s3.delete_bucket(Bucket=bucket)
    return deleted


def down(
    session: Any, stack_id: str, region: str | None = None, *, keep_bucket=False, key_file=None, poll_seconds=15.0
) -> list[str]:
    """Delete the stack (CloudFormation removes what it made), the artifact and log buckets and the private key;
    say what went. A protected database or a kept bucket only the stack's key can read stops it first (StackError)."""
    name, aws, report = stack_name(stack_id), _Aws(session, region), []
    stack, _, parameters = _describe(aws, stack_id)
    refusal = down_refusal(stack_id, region, parameters, keep_bucket) if stack else None
    if refusal:
        raise StackError(refusal)
    if stack:
        LOGGER.info("deleting stack %s", name)
        delete = functools.partial(aws.client("cloudformation").delete_stack, StackName=stack["StackId"])
        _run(aws, stack["StackId"], delete, poll_seconds)
        report.append(f"deleted stack {name}: every resource it made but the bucket")
        local_key = Path(key_file or default_key_file(stack_id))
        if not parameters.get("KeyName") and local_key.exists():
            local_key.unlink()
            report.append(f"deleted private key file {local_key}")
    # The artifacts first, so that no access log arrives after its bucket is emptied.
    for bucket in (kept_bucket(aws, stack_id), kept_bucket(aws, stack_id, "logs")):
        if bucket and keep_bucket:
            report.append(f"kept    bucket {bucket}")
        elif bucket:
            report.append(f"deleted bucket {bucket} ({_empty_and_delete_bucket(aws, bucket)} object versions)")
    return report
