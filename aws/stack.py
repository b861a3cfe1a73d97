"""Creates, lists and deletes one medimg stack on AWS (GPU host, S3 artifact bucket, optional RDS) through a boto3 Session.

Every resource carries the tag `medimg:stack=<id>` and a name derived from the id, so
`up` finds what exists instead of creating it twice, and `down` deletes only resources
that carry the stack's tag, in dependency order, waiting for each to go.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from aws.userdata import HostSettings, render_user_data

LOGGER = logging.getLogger("medimg.aws")

STACK_TAG = "medimg:stack"
MANAGED_BY_TAG = "medimg:managed-by"
MANAGED_BY = "python -m aws"
# The public SSM parameter AWS keeps pointed at the newest Deep Learning Base OSS Nvidia
# Driver GPU AMI (Ubuntu 22.04, x86_64): NVIDIA driver, Docker and the container toolkit.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
DEFAULT_INSTANCE_TYPE = "g5.xlarge"
DEFAULT_STACK_ID = "dev"
LOGIN_USER = "ubuntu"
CHECKIP_URL = "https://checkip.amazonaws.com"
ARTIFACTS_PREFIX = "mlflow"
MLFLOW_PORT = 5000
DB_USERNAME = "mlflow"
DB_NAME = "mlflow"
DB_PORT = 5432
_STACK_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_STACK_ID_MAX_LENGTH = 20
_LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]


class StackError(RuntimeError):
    """AWS refused or could not do what the stack needs; the message says what to do."""


# Inputs.


def validate_stack_id(stack_id: str) -> str:
    if len(stack_id) > _STACK_ID_MAX_LENGTH or not _STACK_ID.match(stack_id):
        raise ValueError(
            f"Stack id {stack_id!r} is not usable in bucket, role and database names: use 1-{_STACK_ID_MAX_LENGTH} "
            "lowercase letters, digits and single hyphens, starting with a letter (e.g. 'dev' or 'team-a')."
        )
    return stack_id


def parse_ssh_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network allowed to reach port 22; a bare address means that one host (/32 or /128).

    A /0 network is refused outright: SSH on a GPU host must never face the whole internet.
    """
    text = text.strip()
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise ValueError(
            f"--ssh-cidr {text!r} is not an address or network ({error}); pass your public address as A.B.C.D/32."
        ) from None
    if network.prefixlen == 0:
        raise ValueError(
            f"--ssh-cidr {text} would open SSH to the whole internet; pass your own address as A.B.C.D/32 "
            f"(see {CHECKIP_URL}) or leave --ssh-cidr out to detect it."
        )
    if network.prefixlen < network.max_prefixlen:
        LOGGER.warning("SSH will be open to %d addresses (%s), not just yours.", network.num_addresses, network)
    return network


def detect_caller_cidr(url: str = CHECKIP_URL, timeout_s: float = 10) -> str:
    """This machine's public address as a one-host CIDR, asked of checkip.amazonaws.com at run time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read(100).decode("ascii", "replace").strip()
    except OSError as error:
        raise ValueError(
            f"Could not detect your public address from {url} ({error}); pass --ssh-cidr A.B.C.D/32."
        ) from None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{url} answered {text!r}, not an address; pass --ssh-cidr A.B.C.D/32.") from None
    return f"{address}/{address.max_prefixlen}"


def region_of(session: Any, region: str | None = None) -> str:
    chosen = region or session.region_name or os.environ.get("AWS_DEFAULT_REGION")
    if not chosen:
        raise ValueError("No AWS region: pass --region (e.g. us-east-1) or set AWS_DEFAULT_REGION.")
    return chosen


@dataclass(frozen=True)
class StackNames:
    """Every resource name of one stack, derived from its id, account and region."""

    stack_id: str
    account_id: str
    region: str

    @property
    def key_pair(self) -> str:
        return f"medimg-{self.stack_id}"

    @property
    def host_security_group(self) -> str:
        return f"medimg-{self.stack_id}-host"

    @property
    def db_security_group(self) -> str:
        return f"medimg-{self.stack_id}-db"

    @property
    def bucket(self) -> str:
        # Bucket names are global, so the account and region make them unique.
        return f"medimg-{self.stack_id}-{self.account_id}-{self.region}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/{ARTIFACTS_PREFIX}"

    @property
    def role(self) -> str:
        # IAM is global, so the region keeps two regions' stacks of one id apart.
        return f"medimg-{self.stack_id}-{self.region}-host"

    @property
    def instance_profile(self) -> str:
        return self.role

    @property
    def role_policy(self) -> str:
        return "medimg-host-access"

    @property
    def secret(self) -> str:
        return f"medimg/{self.stack_id}/database"

    @property
    def db_instance(self) -> str:
        return f"medimg-{self.stack_id}-mlflow"

    @property
    def db_subnet_group(self) -> str:
        return f"medimg-{self.stack_id}"

    @property
    def instance(self) -> str:
        return f"medimg-{self.stack_id}-gpu"

    def default_key_file(self) -> Path:
        return Path.home() / ".ssh" / f"{self.key_pair}.pem"


@dataclass
class UpOptions:
    """What `up` builds. `ssh_cidr` is required here; the CLI detects it when not given."""

    stack_id: str
    ssh_cidr: str
    git_url: str
    git_ref: str = "main"
    instance_type: str = DEFAULT_INSTANCE_TYPE
    key_name: str | None = None
    key_file: Path | None = None
    with_rds: bool = False
    db_instance_class: str = "db.t4g.micro"
    ami_id: str | None = None
    ami_parameter: str = DLAMI_PARAMETER
    volume_size_gib: int = 200
    idle_minutes: int = 30
    hourly_price_usd: float | None = None
    subnet_id: str | None = None
    wait: bool = True
    poll_seconds: int = 15

    def validate(self) -> None:
        validate_stack_id(self.stack_id)
        parse_ssh_cidr(self.ssh_cidr)
        if not re.fullmatch(r"[a-z][a-z0-9-]*\.[a-z0-9]+", self.instance_type):
            raise ValueError(f"Instance type {self.instance_type!r} does not look like an EC2 type such as g5.xlarge.")
        if not self.git_url or any(character.isspace() for character in self.git_url):
            raise ValueError(
                "--git-url must be a clone URL the host can reach, e.g. https://github.com/you/medimg.git."
            )
        if self.git_url.startswith(("git@", "ssh://")):
            raise ValueError(
                f"--git-url {self.git_url} needs an SSH key the new host does not have; use the https:// clone URL."
            )
        if self.volume_size_gib < 50:
            raise ValueError("--volume-size must be at least 50 GiB: the CUDA training image alone takes ~20 GiB.")
        if self.idle_minutes < 0:
            raise ValueError("--idle-minutes must be >= 0 (0 turns the auto-stop off).")


@dataclass
class _Clients:
    ec2: Any
    s3: Any
    iam: Any
    rds: Any
    secretsmanager: Any
    ssm: Any
    sts: Any

    @classmethod
    def create(cls, session: Any, region: str) -> _Clients:
        return cls(**{name: session.client(name, region_name=region) for name in cls.__dataclass_fields__})


def _tags(names: StackNames, name: str | None = None) -> list[dict[str, str]]:
    tags = [{"Key": STACK_TAG, "Value": names.stack_id}, {"Key": MANAGED_BY_TAG, "Value": MANAGED_BY}]
    if name:
        tags.append({"Key": "Name", "Value": name})
    return tags


def _is_ours(tags: list[dict[str, str]] | None, names: StackNames) -> bool:
    return any(tag.get("Key") == STACK_TAG and tag.get("Value") == names.stack_id for tag in tags or [])


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _retry(
    action: Callable[[], Any], should_retry: Callable[[ClientError], bool], attempts: int, delay_s: float, what: str
) -> Any:
    """Run `action`, retrying the AWS errors `should_retry` accepts (eventual consistency), then give up."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except ClientError as error:
            if not should_retry(error) or attempt == attempts:
                raise
            LOGGER.info("%s: %s, retrying (%d/%d)", what, _error_code(error), attempt, attempts)
            time.sleep(delay_s)
    return None


def _is_instance_profile_propagation(error: ClientError) -> bool:
    """EC2 answers a just-created instance profile with InvalidParameterValue for a few seconds."""
    message = error.response.get("Error", {}).get("Message", "").lower()
    return _error_code(error) == "InvalidParameterValue" and (
        "instance profile" in message or "iaminstanceprofile" in message
    )


def _account_id(clients: _Clients) -> str:
    return clients.sts.get_caller_identity()["Account"]


# Lookups shared by up, status and down.


def _find_key_pair(clients: _Clients, names: StackNames) -> dict | None:
    pairs = clients.ec2.describe_key_pairs(Filters=[{"Name": f"tag:{STACK_TAG}", "Values": [names.stack_id]}])
    return pairs["KeyPairs"][0] if pairs["KeyPairs"] else None


def _find_security_groups(clients: _Clients, names: StackNames) -> dict[str, dict]:
    """The stack's security groups by name (host and db)."""
    groups = clients.ec2.describe_security_groups(Filters=[{"Name": f"tag:{STACK_TAG}", "Values": [names.stack_id]}])
    return {group["GroupName"]: group for group in groups["SecurityGroups"]}


def _find_instances(clients: _Clients, names: StackNames, states: list[str]) -> list[dict]:
    reservations = clients.ec2.describe_instances(
        Filters=[
            {"Name": f"tag:{STACK_TAG}", "Values": [names.stack_id]},
            {"Name": "instance-state-name", "Values": states},
        ]
    )["Reservations"]
    instances = [instance for reservation in reservations for instance in reservation["Instances"]]
    return sorted(instances, key=lambda instance: instance["LaunchTime"])


def _bucket_exists(clients: _Clients, names: StackNames) -> bool:
    """True when the stack's bucket exists and carries its tag; StackError when the name belongs to someone else."""
    try:
        clients.s3.head_bucket(Bucket=names.bucket)
    except ClientError as error:
        if _error_code(error) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise StackError(f"Bucket {names.bucket} exists but is not usable ({_error_code(error)}).") from error
    try:
        tags = clients.s3.get_bucket_tagging(Bucket=names.bucket)["TagSet"]
    except ClientError as error:
        if _error_code(error) != "NoSuchTagSet":
            raise
        tags = []
    if not _is_ours(tags, names):
        raise StackError(
            f"Bucket {names.bucket} exists without the tag {STACK_TAG}={names.stack_id}; it is not this stack's."
        )
    return True


def _find_role(clients: _Clients, names: StackNames) -> dict | None:
    try:
        role = clients.iam.get_role(RoleName=names.role)["Role"]
    except ClientError as error:
        if _error_code(error) == "NoSuchEntity":
            return None
        raise
    return role if _is_ours(role.get("Tags"), names) else None


def _find_instance_profile(clients: _Clients, names: StackNames) -> dict | None:
    try:
        profile = clients.iam.get_instance_profile(InstanceProfileName=names.instance_profile)["InstanceProfile"]
    except ClientError as error:
        if _error_code(error) == "NoSuchEntity":
            return None
        raise
    return profile if _is_ours(profile.get("Tags"), names) else None


def _find_secret(clients: _Clients, names: StackNames) -> dict | None:
    try:
        secret = clients.secretsmanager.describe_secret(SecretId=names.secret)
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return None
        raise
    if secret.get("DeletedDate") or not _is_ours(secret.get("Tags"), names):
        return None
    return secret


def _find_db_instance(clients: _Clients, names: StackNames) -> dict | None:
    try:
        database = clients.rds.describe_db_instances(DBInstanceIdentifier=names.db_instance)["DBInstances"][0]
    except ClientError as error:
        if _error_code(error) == "DBInstanceNotFound":
            return None
        raise
    return database if _is_ours(database.get("TagList"), names) else None


def _find_db_subnet_group(clients: _Clients, names: StackNames) -> dict | None:
    try:
        group = clients.rds.describe_db_subnet_groups(DBSubnetGroupName=names.db_subnet_group)["DBSubnetGroups"][0]
    except ClientError as error:
        if _error_code(error) == "DBSubnetGroupNotFoundFault":
            return None
        raise
    tags = clients.rds.list_tags_for_resource(ResourceName=group["DBSubnetGroupArn"])["TagList"]
    return group if _is_ours(tags, names) else None


# up


def _ensure_key_pair(clients: _Clients, names: StackNames, options: UpOptions) -> tuple[str, Path | None]:
    """The key pair name and the local private key file (None for a key pair the user brought)."""
    if options.key_name:
        try:
            clients.ec2.describe_key_pairs(KeyNames=[options.key_name])
        except ClientError as error:
            raise ValueError(
                f"Key pair {options.key_name!r} does not exist in {names.region}: check --key-name and --region, "
                "or leave --key-name out to create one."
            ) from error
        return options.key_name, options.key_file
    key_file = Path(options.key_file) if options.key_file else names.default_key_file()
    existing = _find_key_pair(clients, names)
    if existing:
        if not key_file.exists():
            LOGGER.warning(
                "Key pair %s exists but its private key %s is missing here; pass --key-file, or run down and up again.",
                existing["KeyName"],
                key_file,
            )
        return existing["KeyName"], key_file
    if key_file.exists():
        raise ValueError(
            f"{key_file} already exists but key pair {names.key_pair} does not: move the old file away or pass --key-file."
        )
    created = clients.ec2.create_key_pair(
        KeyName=names.key_pair,
        KeyType="ed25519",
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": _tags(names, names.key_pair)}],
    )
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The private key is written with 0600 from the first byte, never world-readable.
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(created["KeyMaterial"])
    LOGGER.info("created key pair %s; private key in %s", names.key_pair, key_file)
    return names.key_pair, key_file


def _ensure_bucket(clients: _Clients, names: StackNames) -> None:
    if not _bucket_exists(clients, names):
        arguments: dict[str, Any] = {"Bucket": names.bucket}
        # us-east-1 is the one region that refuses an explicit location constraint.
        if names.region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": names.region}
        clients.s3.create_bucket(**arguments)
        clients.s3.put_bucket_tagging(Bucket=names.bucket, Tagging={"TagSet": _tags(names)})
        LOGGER.info("created bucket %s", names.bucket)
    # Settings are applied on every run, so `up` also repairs a bucket someone loosened.
    clients.s3.put_public_access_block(
        Bucket=names.bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    clients.s3.put_bucket_encryption(
        Bucket=names.bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]
        },
    )
    clients.s3.put_bucket_versioning(Bucket=names.bucket, VersioningConfiguration={"Status": "Enabled"})
    bucket_arn = f"arn:aws:s3:::{names.bucket}"
    clients.s3.put_bucket_policy(
        Bucket=names.bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [bucket_arn, f"{bucket_arn}/*"],
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ],
            }
        ),
    )


def _vpc_and_subnets(clients: _Clients, options: UpOptions) -> tuple[str, list[str]]:
    """The VPC to use and the subnets to try for the host, in order."""
    if options.subnet_id:
        subnet = clients.ec2.describe_subnets(SubnetIds=[options.subnet_id])["Subnets"][0]
        return subnet["VpcId"], [subnet["SubnetId"]]
    vpcs = clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ValueError("This region has no default VPC: pass --subnet-id of a public subnet that assigns public IPs.")
    vpc_id = vpcs[0]["VpcId"]
    subnets = clients.ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    ordered = sorted(subnets, key=lambda subnet: subnet["AvailabilityZone"])
    return vpc_id, [subnet["SubnetId"] for subnet in ordered]


def _ssh_permission(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict:
    permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    if network.version == 4:
        permission["IpRanges"] = [{"CidrIp": str(network), "Description": "ssh from the operator"}]
    else:
        permission["Ipv6Ranges"] = [{"CidrIpv6": str(network), "Description": "ssh from the operator"}]
    return permission


def _ingress_summary(permissions: list[dict]) -> set[tuple]:
    """Ingress rules reduced to comparable (protocol, from, to, source) tuples."""
    summary = set()
    for permission in permissions:
        ports = (permission.get("IpProtocol"), permission.get("FromPort"), permission.get("ToPort"))
        sources = [item["CidrIp"] for item in permission.get("IpRanges", [])]
        sources += [item["CidrIpv6"] for item in permission.get("Ipv6Ranges", [])]
        sources += [item["GroupId"] for item in permission.get("UserIdGroupPairs", [])]
        sources += [item["PrefixListId"] for item in permission.get("PrefixListIds", [])]
        summary.update((*ports, source) for source in sources)
    return summary


def _clean_permissions(permissions: list[dict]) -> list[dict]:
    """Describe output turned back into revoke input (empty lists dropped)."""
    return [{key: value for key, value in permission.items() if value != []} for permission in permissions]


def _ensure_security_group(
    clients: _Clients, names: StackNames, vpc_id: str, group_name: str, description: str, permission: dict
) -> str:
    """The group's id; its ingress is made exactly `permission`, so a changed address replaces the old rule."""
    group = _find_security_groups(clients, names).get(group_name)
    if group is None:
        group_id = clients.ec2.create_security_group(
            GroupName=group_name,
            Description=description,
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(names, group_name)}],
        )["GroupId"]
        LOGGER.info("created security group %s (%s)", group_name, group_id)
        current: list[dict] = []
    else:
        group_id = group["GroupId"]
        current = group.get("IpPermissions", [])
    if _ingress_summary(current) != _ingress_summary([permission]):
        if current:
            clients.ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=_clean_permissions(current))
        clients.ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[permission])
        LOGGER.info("set ingress of %s to %s", group_name, sorted(_ingress_summary([permission])))
    return group_id


def _host_policy(names: StackNames, secret_arn: str | None) -> dict:
    """Least privilege: the artifact bucket (and the database secret when there is one), nothing else."""
    bucket_arn = f"arn:aws:s3:::{names.bucket}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListArtifactBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": bucket_arn,
        },
        {
            "Sid": "ReadWriteArtifacts",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            "Resource": f"{bucket_arn}/*",
        },
    ]
    if secret_arn:
        statements.append(
            {
                "Sid": "ReadDatabaseSecret",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                "Resource": secret_arn,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _ensure_instance_profile(clients: _Clients, names: StackNames, secret_arn: str | None, poll_seconds: int) -> str:
    if _find_role(clients, names) is None:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        clients.iam.create_role(
            RoleName=names.role,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"medimg stack {names.stack_id}: GPU host access to its artifact bucket",
            Tags=_tags(names),
        )
        LOGGER.info("created role %s", names.role)
    clients.iam.put_role_policy(
        RoleName=names.role, PolicyName=names.role_policy, PolicyDocument=json.dumps(_host_policy(names, secret_arn))
    )
    profile = _find_instance_profile(clients, names)
    if profile is None:
        profile = clients.iam.create_instance_profile(InstanceProfileName=names.instance_profile, Tags=_tags(names))[
            "InstanceProfile"
        ]
        LOGGER.info("created instance profile %s", names.instance_profile)
    if not any(role["RoleName"] == names.role for role in profile.get("Roles", [])):
        clients.iam.add_role_to_instance_profile(InstanceProfileName=names.instance_profile, RoleName=names.role)
    clients.iam.get_waiter("instance_profile_exists").wait(
        InstanceProfileName=names.instance_profile, WaiterConfig={"Delay": max(poll_seconds, 1), "MaxAttempts": 40}
    )
    return names.instance_profile


def _secret_value(clients: _Clients, names: StackNames) -> dict:
    return json.loads(clients.secretsmanager.get_secret_value(SecretId=names.secret)["SecretString"])


def _ensure_database(clients: _Clients, names: StackNames, options: UpOptions, vpc_id: str, host_group_id: str) -> str:
    """Start the RDS PostgreSQL instance (if missing) and return its secret's ARN; the password is never printed."""
    db_group_id = _ensure_security_group(
        clients,
        names,
        vpc_id,
        names.db_security_group,
        f"medimg {names.stack_id}: PostgreSQL from the GPU host only",
        {"IpProtocol": "tcp", "FromPort": DB_PORT, "ToPort": DB_PORT, "UserIdGroupPairs": [{"GroupId": host_group_id}]},
    )
    secret = _find_secret(clients, names)
    if secret is None:
        # URL-safe characters only: RDS refuses '/', '@', '"' and spaces, and the password goes into a URI.
        value = {
            "engine": "postgres",
            "username": DB_USERNAME,
            "password": secrets.token_urlsafe(24),
            "host": "",
            "port": DB_PORT,
            "dbname": DB_NAME,
            "dbInstanceIdentifier": names.db_instance,
        }
        secret = clients.secretsmanager.create_secret(
            Name=names.secret,
            Description=f"medimg stack {names.stack_id}: MLflow tracking database credentials",
            SecretString=json.dumps(value),
            Tags=_tags(names),
        )
        LOGGER.info("created secret %s", names.secret)
    database = _find_db_instance(clients, names)
    if database is None:
        if _find_db_subnet_group(clients, names) is None:
            subnets = clients.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
            if len({subnet["AvailabilityZone"] for subnet in subnets}) < 2:
                raise ValueError(f"RDS needs subnets in two availability zones; VPC {vpc_id} has fewer.")
            clients.rds.create_db_subnet_group(
                DBSubnetGroupName=names.db_subnet_group,
                DBSubnetGroupDescription=f"medimg stack {names.stack_id}",
                SubnetIds=[subnet["SubnetId"] for subnet in subnets],
                Tags=_tags(names),
            )
        clients.rds.create_db_instance(
            DBInstanceIdentifier=names.db_instance,
            Engine="postgres",
            DBInstanceClass=options.db_instance_class,
            AllocatedStorage=20,
            StorageType="gp3",
            StorageEncrypted=True,
            DBName=DB_NAME,
            MasterUsername=DB_USERNAME,
            MasterUserPassword=_secret_value(clients, names)["password"],
            VpcSecurityGroupIds=[db_group_id],
            DBSubnetGroupName=names.db_subnet_group,
            PubliclyAccessible=False,
            MultiAZ=False,
            BackupRetentionPeriod=1,
            CopyTagsToSnapshot=True,
            DeletionProtection=False,
            Tags=_tags(names, names.db_instance),
        )
        LOGGER.info(
            "creating RDS PostgreSQL %s (%s); this takes 5-10 minutes", names.db_instance, options.db_instance_class
        )
    return secret["ARN"]


def _record_database_endpoint(clients: _Clients, names: StackNames, poll_seconds: int) -> None:
    """Wait for the database and write its endpoint into the secret, where the host's bootstrap waits for it."""
    clients.rds.get_waiter("db_instance_available").wait(
        DBInstanceIdentifier=names.db_instance, WaiterConfig={"Delay": max(poll_seconds, 1), "MaxAttempts": 120}
    )
    database = _find_db_instance(clients, names)
    value = _secret_value(clients, names)
    endpoint = database["Endpoint"]
    if value.get("host") != endpoint["Address"] or value.get("port") != endpoint["Port"]:
        value.update(host=endpoint["Address"], port=endpoint["Port"])
        clients.secretsmanager.put_secret_value(SecretId=names.secret, SecretString=json.dumps(value))
        LOGGER.info("database %s is available; endpoint stored in secret %s", names.db_instance, names.secret)


def _resolve_ami(clients: _Clients, options: UpOptions) -> str:
    if options.ami_id:
        return options.ami_id
    try:
        return clients.ssm.get_parameter(Name=options.ami_parameter)["Parameter"]["Value"]
    except ClientError as error:
        raise StackError(
            f"Could not read the AMI id from SSM parameter {options.ami_parameter} ({_error_code(error)}); "
            "pass --ami-id of a Deep Learning AMI with the NVIDIA driver and container toolkit."
        ) from error


def _root_device(clients: _Clients, image_id: str) -> str:
    images = clients.ec2.describe_images(ImageIds=[image_id])["Images"]
    return images[0].get("RootDeviceName", "/dev/sda1") if images else "/dev/sda1"


def _launch_instance(
    clients: _Clients,
    names: StackNames,
    options: UpOptions,
    *,
    key_name: str,
    group_id: str,
    profile: str,
    subnets: list[str],
    user_data: str,
) -> dict:
    image_id = _resolve_ami(clients, options)
    arguments = {
        "ImageId": image_id,
        "InstanceType": options.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": key_name,
        "UserData": user_data,
        "IamInstanceProfile": {"Name": profile},
        "SecurityGroupIds": [group_id],
        # The idle timer shuts the OS down; "stop" keeps the disk so `up` can start it again.
        "InstanceInitiatedShutdownBehavior": "stop",
        # IMDSv2 only; a hop limit of 2 lets containers on the host reach the instance role.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
        "BlockDeviceMappings": [
            {
                "DeviceName": _root_device(clients, image_id),
                "Ebs": {
                    "VolumeSize": options.volume_size_gib,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": _tags(names, names.instance)},
            {"ResourceType": "volume", "Tags": _tags(names, names.instance)},
        ],
    }
    last_error: ClientError | None = None
    for subnet_id in subnets or [None]:
        if subnet_id:
            arguments["SubnetId"] = subnet_id
        try:
            # A new instance profile takes a few seconds to become usable by EC2.
            return _retry(
                lambda: clients.ec2.run_instances(**arguments)["Instances"][0],
                _is_instance_profile_propagation,
                attempts=12,
                delay_s=max(options.poll_seconds / 3, 0.1),
                what="waiting for the instance profile",
            )
        except ClientError as error:
            code = _error_code(error)
            if code in ("VcpuLimitExceeded", "InstanceLimitExceeded"):
                raise StackError(
                    f"AWS refused {options.instance_type}: your vCPU quota for this instance family is too low. "
                    "Ask for more in Service Quotas ('Running On-Demand G and VT instances' or '... P instances'), "
                    "then run up again."
                ) from error
            if code in ("Unsupported", "InsufficientInstanceCapacity"):
                LOGGER.warning(
                    "%s not available in subnet %s (%s); trying the next zone", options.instance_type, subnet_id, code
                )
                last_error = error
                continue
            raise
    raise StackError(f"No availability zone could launch {options.instance_type}: {last_error}")


def _ensure_instance(
    clients: _Clients,
    names: StackNames,
    options: UpOptions,
    *,
    key_name: str,
    group_id: str,
    profile: str,
    subnets: list[str],
    user_data: str,
) -> str:
    instances = _find_instances(clients, names, _LIVE_INSTANCE_STATES)
    if len(instances) > 1:
        LOGGER.warning(
            "stack %s has %d instances; using the oldest, %s",
            names.stack_id,
            len(instances),
            instances[0]["InstanceId"],
        )
    if instances:
        instance = instances[0]
        instance_id = instance["InstanceId"]
        if instance["InstanceType"] != options.instance_type:
            LOGGER.warning(
                "instance %s is a %s, not %s; run down and up to change the type",
                instance_id,
                instance["InstanceType"],
                options.instance_type,
            )
        state = instance["State"]["Name"]
        if state in ("stopping", "stopped"):
            if state == "stopping":
                clients.ec2.get_waiter("instance_stopped").wait(
                    InstanceIds=[instance_id], WaiterConfig={"Delay": max(options.poll_seconds, 1), "MaxAttempts": 80}
                )
            clients.ec2.start_instances(InstanceIds=[instance_id])
            LOGGER.info("started stopped instance %s", instance_id)
        return instance_id
    instance = _launch_instance(
        clients,
        names,
        options,
        key_name=key_name,
        group_id=group_id,
        profile=profile,
        subnets=subnets,
        user_data=user_data,
    )
    LOGGER.info("launched %s instance %s", options.instance_type, instance["InstanceId"])
    return instance["InstanceId"]


def up(session: Any, options: UpOptions, region: str | None = None) -> dict:
    """Create whatever of the stack is missing (nothing when all exists) and return `status`."""
    options.validate()
    region = region_of(session, region)
    clients = _Clients.create(session, region)
    names = StackNames(options.stack_id, _account_id(clients), region)
    network = parse_ssh_cidr(options.ssh_cidr)

    key_name, _ = _ensure_key_pair(clients, names, options)
    _ensure_bucket(clients, names)
    vpc_id, subnets = _vpc_and_subnets(clients, options)
    host_group_id = _ensure_security_group(
        clients,
        names,
        vpc_id,
        names.host_security_group,
        f"medimg {names.stack_id}: SSH from the operator only",
        _ssh_permission(network),
    )
    if options.with_rds:
        secret_arn = _ensure_database(clients, names, options, vpc_id, host_group_id)
    else:
        # A database from an earlier `up --with-rds` stays reachable: only `down` removes it.
        secret = _find_secret(clients, names)
        secret_arn = secret["ARN"] if secret else None
        if secret:
            LOGGER.warning(
                "stack %s has a database (%s); keeping it. `down` removes it.", names.stack_id, names.db_instance
            )
    profile = _ensure_instance_profile(clients, names, secret_arn, options.poll_seconds)
    user_data = render_user_data(
        HostSettings(
            stack_id=names.stack_id,
            region=region,
            bucket=names.bucket,
            artifacts_destination=names.artifacts_destination,
            git_url=options.git_url,
            git_ref=options.git_ref,
            instance_type=options.instance_type,
            hourly_price_usd=options.hourly_price_usd,
            idle_minutes=options.idle_minutes,
            db_secret_id=names.secret if options.with_rds else "",
            mlflow_port=MLFLOW_PORT,
        )
    )
    instance_id = _ensure_instance(
        clients,
        names,
        options,
        key_name=key_name,
        group_id=host_group_id,
        profile=profile,
        subnets=subnets,
        user_data=user_data,
    )
    if options.wait:
        clients.ec2.get_waiter("instance_running").wait(
            InstanceIds=[instance_id], WaiterConfig={"Delay": max(options.poll_seconds, 1), "MaxAttempts": 80}
        )
        if options.with_rds:
            _record_database_endpoint(clients, names, options.poll_seconds)
    return status(session, options.stack_id, region=region, key_file=options.key_file)


# status


def _ssh_commands(instance: dict | None, key_file: Path | None) -> dict[str, str | None]:
    address = (instance or {}).get("PublicDnsName") or (instance or {}).get("PublicIpAddress")
    if not address:
        return {"ssh_command": None, "tunnel_command": None}
    identity = f"-i {key_file} " if key_file else ""
    return {
        "ssh_command": f"ssh {identity}{LOGIN_USER}@{address}",
        "tunnel_command": f"ssh {identity}-N -L {MLFLOW_PORT}:127.0.0.1:{MLFLOW_PORT} {LOGIN_USER}@{address}",
    }


def status(session: Any, stack_id: str, region: str | None = None, key_file: Path | None = None) -> dict:
    """What exists of the stack: names, ids, the instance's state and address, and the SSH commands to reach it."""
    region = region_of(session, region)
    clients = _Clients.create(session, region)
    names = StackNames(validate_stack_id(stack_id), _account_id(clients), region)
    key_pair = _find_key_pair(clients, names)
    instances = _find_instances(clients, names, [*_LIVE_INSTANCE_STATES, "shutting-down"])
    instance = instances[0] if instances else None
    if key_file is None and instance and key_pair and instance.get("KeyName") == key_pair["KeyName"]:
        key_file = names.default_key_file()
    database = _find_db_instance(clients, names)
    secret = _find_secret(clients, names)
    role = _find_role(clients, names)
    profile = _find_instance_profile(clients, names)
    bucket = _bucket_exists(clients, names)
    result: dict[str, Any] = {
        "stack_id": names.stack_id,
        "region": region,
        "account_id": names.account_id,
        "key_pair": key_pair["KeyName"] if key_pair else None,
        "key_file": str(key_file) if key_file else None,
        "bucket": names.bucket if bucket else None,
        "artifacts_destination": names.artifacts_destination if bucket else None,
        "security_groups": {
            group["GroupName"]: group["GroupId"] for group in _find_security_groups(clients, names).values()
        },
        "role": role["RoleName"] if role else None,
        "instance_profile": profile["InstanceProfileName"] if profile else None,
        "secret": secret["Name"] if secret else None,
        "database": None,
        "instance": None,
        "tracking_uri": f"http://127.0.0.1:{MLFLOW_PORT}",
    }
    if database:
        result["database"] = {
            "identifier": database["DBInstanceIdentifier"],
            "status": database["DBInstanceStatus"],
            "endpoint": (database.get("Endpoint") or {}).get("Address"),
            "publicly_accessible": database.get("PubliclyAccessible"),
        }
    if instance:
        result["instance"] = {
            "id": instance["InstanceId"],
            "state": instance["State"]["Name"],
            "type": instance["InstanceType"],
            "public_dns": instance.get("PublicDnsName") or None,
            "public_ip": instance.get("PublicIpAddress"),
            "key_name": instance.get("KeyName"),
        }
        if len(instances) > 1:
            result["extra_instances"] = [other["InstanceId"] for other in instances[1:]]
    result.update(_ssh_commands(instance, key_file))
    result["exists"] = any(
        result[key]
        for key in (
            "key_pair",
            "bucket",
            "security_groups",
            "role",
            "instance_profile",
            "secret",
            "database",
            "instance",
        )
    )
    return result


# down


@dataclass
class DownReport:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _empty_and_delete_bucket(clients: _Clients, bucket: str) -> int:
    """Delete every object version and delete marker (versioning keeps them all), then the bucket; returns the count."""
    deleted = 0
    paginator = clients.s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        entries = [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        # DeleteObjects takes at most 1,000 keys per call.
        for start in range(0, len(entries), 1000):
            chunk = entries[start : start + 1000]
            clients.s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            deleted += len(chunk)
    clients.s3.delete_bucket(Bucket=bucket)
    return deleted


def down(
    session: Any,
    stack_id: str,
    region: str | None = None,
    *,
    keep_bucket: bool = False,
    key_file: Path | None = None,
    poll_seconds: int = 15,
) -> DownReport:
    """Delete every resource tagged with the stack id, dependents first, waiting until each is gone."""
    region = region_of(session, region)
    clients = _Clients.create(session, region)
    names = StackNames(validate_stack_id(stack_id), _account_id(clients), region)
    report = DownReport()
    delay = max(poll_seconds, 1)

    # The instance and the database go first: they hold network interfaces in the security groups.
    instance_ids = [
        instance["InstanceId"]
        for instance in _find_instances(clients, names, [*_LIVE_INSTANCE_STATES, "shutting-down"])
    ]
    if instance_ids:
        clients.ec2.terminate_instances(InstanceIds=instance_ids)
        LOGGER.info("terminating instance(s) %s", ", ".join(instance_ids))
    database = _find_db_instance(clients, names)
    if database and database["DBInstanceStatus"] != "deleting":
        clients.rds.delete_db_instance(
            DBInstanceIdentifier=names.db_instance, SkipFinalSnapshot=True, DeleteAutomatedBackups=True
        )
        LOGGER.info("deleting database %s (no final snapshot)", names.db_instance)
    if instance_ids:
        clients.ec2.get_waiter("instance_terminated").wait(
            InstanceIds=instance_ids, WaiterConfig={"Delay": delay, "MaxAttempts": 120}
        )
        report.deleted += [f"instance {instance_id}" for instance_id in instance_ids]
    if database:
        try:
            clients.rds.get_waiter("db_instance_deleted").wait(
                DBInstanceIdentifier=names.db_instance, WaiterConfig={"Delay": delay, "MaxAttempts": 120}
            )
        except WaiterError as error:
            raise StackError(
                f"Database {names.db_instance} was not deleted in time; run down again. ({error})"
            ) from error
        report.deleted.append(f"database {names.db_instance}")
    if _find_db_subnet_group(clients, names):
        clients.rds.delete_db_subnet_group(DBSubnetGroupName=names.db_subnet_group)
        report.deleted.append(f"db subnet group {names.db_subnet_group}")
    if _find_secret(clients, names):
        # Without recovery the name is free at once, so a later `up` can create it again.
        clients.secretsmanager.delete_secret(SecretId=names.secret, ForceDeleteWithoutRecovery=True)
        report.deleted.append(f"secret {names.secret}")

    profile = _find_instance_profile(clients, names)
    if profile:
        for role in profile.get("Roles", []):
            clients.iam.remove_role_from_instance_profile(
                InstanceProfileName=names.instance_profile, RoleName=role["RoleName"]
            )
        clients.iam.delete_instance_profile(InstanceProfileName=names.instance_profile)
        report.deleted.append(f"instance profile {names.instance_profile}")
    if _find_role(clients, names):
        for policy_name in clients.iam.list_role_policies(RoleName=names.role)["PolicyNames"]:
            clients.iam.delete_role_policy(RoleName=names.role, PolicyName=policy_name)
        for attached in clients.iam.list_attached_role_policies(RoleName=names.role)["AttachedPolicies"]:
            clients.iam.detach_role_policy(RoleName=names.role, PolicyArn=attached["PolicyArn"])
        clients.iam.delete_role(RoleName=names.role)
        report.deleted.append(f"role {names.role}")

    # The database group refers to the host group, so it goes first; ENIs may linger a little after termination.
    groups = _find_security_groups(clients, names)
    for group_name in sorted(groups, key=lambda name: name != names.db_security_group):
        group_id = groups[group_name]["GroupId"]
        _retry(
            lambda group_id=group_id: clients.ec2.delete_security_group(GroupId=group_id),
            lambda error: _error_code(error) == "DependencyViolation",
            attempts=30,
            delay_s=delay,
            what=f"deleting security group {group_name}",
        )
        report.deleted.append(f"security group {group_name} ({group_id})")

    key_pair = _find_key_pair(clients, names)
    if key_pair:
        clients.ec2.delete_key_pair(KeyName=key_pair["KeyName"])
        report.deleted.append(f"key pair {key_pair['KeyName']}")
        local_key = Path(key_file) if key_file else names.default_key_file()
        if local_key.exists():
            local_key.unlink()
            report.deleted.append(f"private key file {local_key}")

    if _bucket_exists(clients, names):
        if keep_bucket:
            report.kept.append(f"bucket {names.bucket}")
        else:
            count = _empty_and_delete_bucket(clients, names.bucket)
            report.deleted.append(f"bucket {names.bucket} ({count} object versions)")
    for line in report.deleted:
        LOGGER.info("deleted %s", line)
    return report
