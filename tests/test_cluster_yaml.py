"""cluster.yaml is a valid, secure Ray cluster config; cluster/setup_aws.py makes what it needs.

The config is checked with Ray's own schema and config preparation (what
``ray up`` runs first), then property by property: CPU head and autoscaling GPU
workers, caetune installed, IAM instance profiles limited to the bucket, SSH
only from the user's range, dashboard and GCS not exposed, token auth on, no
AWS keys anywhere. setup_aws.py runs against a real moto server (EC2, IAM, STS,
S3 on 127.0.0.1), never against AWS.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.tags import TAG_RAY_CLUSTER_NAME

from tests._helpers import start_command
from tests.s3server import s3_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
POLICY_FILES = ["trust-policy.json", "iam-policy-s3.json", "iam-policy-autoscaler.json"]
SETUP = ROOT / "cluster" / "setup_aws.py"
PLACEHOLDER = re.compile(r"YOUR-[A-Z]")  # YOUR-BUCKET, YOUR-SG-ID ...
GPU_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")


def load_config(path: Path = CLUSTER_YAML) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def validate_like_ray_up(config: dict) -> None:
    """What `ray up` checks before it touches AWS: the schema on the file, then the full config."""
    jsonschema.validate(config, ray_schema())
    validate_config(prepare_config(copy.deepcopy(config)))


def policy(name: str) -> dict:
    return json.loads((ROOT / "cluster" / name).read_text(encoding="utf-8"))


def statements(document: dict) -> list[dict]:
    return [
        {
            **s,
            "Action": [s["Action"]] if isinstance(s["Action"], str) else s["Action"],
            "Resource": [s["Resource"]]
            if isinstance(s.get("Resource"), str)
            else s.get("Resource", []),
        }
        for s in document["Statement"]
    ]


# --- the file itself ------------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_own_validation():
    validate_like_ray_up(load_config())


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update(head_node_typo="head"),
        lambda c: c["available_node_types"]["gpu"].update(resources={"GPU": "one"}),
        lambda c: (
            c.update(max_workers=-1) or c["available_node_types"]["gpu"].update(min_workers=2)
        ),
    ],
)
def test_the_validation_catches_a_broken_config(break_it):
    config = load_config()
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_like_ray_up(config)


def test_a_cpu_head_and_autoscaling_gpu_workers():
    config = load_config()
    assert config["provider"]["type"] == "aws" and config["cluster_name"] == "caetune"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    assert head["resources"].get("GPU", 0) == 0

    (gpu_name,) = [name for name in types if name != config["head_node_type"]]
    gpu = types[gpu_name]
    assert gpu["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    assert gpu["resources"]["GPU"] >= 1
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0
    assert (
        config["provider"]["cache_stopped_nodes"] is False
    )  # idle workers are terminated, not kept


def test_setup_installs_caetune_and_the_same_ray_on_every_node():
    config = load_config()
    assert config["file_mounts"]["~/caetune"] == "."
    (install,) = [c for c in config["setup_commands"] if "pip install" in c and "caetune" in c]
    assert "-e ~/caetune" in install
    pinned = re.search(r'"ray\[default\]==([^"]+)"', install)
    assert pinned and pinned.group(1) == ray.__version__


def test_nodes_get_instance_profiles_and_the_prepared_security_group():
    config = load_config()
    assert "security_group" not in config["provider"]
    for name, node_type in config["available_node_types"].items():
        role = "caetune-head" if name == config["head_node_type"] else "caetune-worker"
        node = node_type["node_config"]
        assert re.fullmatch(
            rf"arn:aws:iam::[^:]+:instance-profile/{role}", node["IamInstanceProfile"]["Arn"]
        )
        assert node["SecurityGroupIds"], name  # without it Ray makes its own group ...
        assert node["MetadataOptions"] == {"HttpTokens": "required"}
    # ... whose default rules open SSH to the whole internet (cluster.yaml never lets Ray make one).
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    assert "0.0.0.0/0" in json.dumps(_create_default_inbound_rules(set()))


def test_nothing_listens_for_the_outside_but_ssh_and_token_auth_is_on():
    config = load_config()
    settings = json.dumps(
        config
    )  # the parsed config: comments may explain 0.0.0.0/0, settings never use it
    assert "0.0.0.0" not in settings and "::/0" not in settings
    head = start_command(config["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert (
        "--include-dashboard=false" not in head
    )  # the dashboard is there, reached through `ray dashboard`
    for command in (head, start_command(config["worker_start_ray_commands"])):
        assert command.split("ray start")[0].rstrip().endswith("RAY_AUTH_MODE=token")
    assert any("export RAY_AUTH_MODE=token" in c for c in config["setup_commands"])
    # The token travels as a file over SSH, never as text in the config or a command line.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN" not in settings


@pytest.mark.parametrize(
    "path", [CLUSTER_YAML, *(ROOT / "cluster").iterdir()], ids=lambda p: p.name
)
def test_no_aws_keys_in_any_file(path):
    if path.is_dir() or path.suffix == ".pyc":
        return
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)
    assert not re.search(
        r"aws_secret_access_key\s*[:=]|aws_access_key_id\s*[:=]|aws_session_token\s*[:=]",
        text,
        re.I,
    )


def test_no_credentials_are_copied_to_the_nodes():
    config = load_config()
    assert "aws_credentials" not in config["provider"]
    assert set(config["file_mounts"]) == {"~/caetune", "~/.ray/auth_token"}
    assert not any(".aws" in local or ".ssh" in local for local in config["file_mounts"].values())
    assert {".aws", ".env", "*.pem", ".venv", ".git"} <= set(config["rsync_exclude"])


# --- the IAM policies -----------------------------------------------------------------------------


def test_the_s3_policy_reaches_the_experiment_bucket_only():
    for s in statements(policy("iam-policy-s3.json")):
        assert s["Effect"] == "Allow"
        assert all(a.startswith("s3:") and "*" not in a for a in s["Action"])
        assert set(s["Resource"]) <= {"arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*"}


def test_the_autoscaler_policy_only_manages_this_clusters_instances():
    cluster_tag = f"aws:RequestTag/{TAG_RAY_CLUSTER_NAME}", load_config()["cluster_name"]
    owned_tag = f"aws:ResourceTag/{TAG_RAY_CLUSTER_NAME}", load_config()["cluster_name"]
    found = {"launch": False, "terminate": False, "pass": False}
    for s in statements(policy("iam-policy-autoscaler.json")):
        assert s["Effect"] == "Allow" and not any("*" in a for a in s["Action"])
        equals = s.get("Condition", {}).get("StringEquals", {})
        if "*" in s["Resource"]:
            assert all(a.startswith("ec2:Describe") for a in s["Action"]), s["Sid"]
        if "ec2:RunInstances" in s["Action"] and any(
            r.endswith(":instance/*") for r in s["Resource"]
        ):
            assert equals.get(cluster_tag[0]) == cluster_tag[1]
            found["launch"] = True
        if "ec2:TerminateInstances" in s["Action"]:
            assert equals.get(owned_tag[0]) == owned_tag[1]
            found["terminate"] = True
        if any(a.startswith("iam:") for a in s["Action"]):
            assert s["Action"] == ["iam:PassRole"]
            assert s["Resource"] == ["arn:aws:iam::YOUR-ACCOUNT-ID:role/caetune-worker"]
            assert equals.get("iam:PassedToService") == "ec2.amazonaws.com"
            found["pass"] = True
    assert all(found.values()), found


def test_only_ec2_instances_can_take_the_roles():
    (s,) = policy("trust-policy.json")["Statement"]
    assert s["Principal"] == {"Service": "ec2.amazonaws.com"} and s["Action"] == "sts:AssumeRole"


# --- setup_aws.py on a moto server ----------------------------------------------------------------


def run_setup(server, *args, cwd):
    return subprocess.run(
        [sys.executable, str(SETUP), *args],
        env=server.subprocess_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def aws(server, service: str):
    import boto3

    env = server.env
    return boto3.client(
        service,
        endpoint_url=server.endpoint_url,
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def caetune_groups(server) -> list[dict]:
    return aws(server, "ec2").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["caetune-ssh"]}]
    )["SecurityGroups"]


def test_setup_aws_creates_tight_pieces_and_a_valid_config(s3_server, tmp_path):  # noqa: F811
    bucket = s3_server.create_bucket()
    iam = aws(s3_server, "iam")
    base = [
        "--region",
        "us-east-1",
        "--ami",
        "ami-0123456789abcdef0",
        "--out",
        str(tmp_path / "cluster.local.yaml"),
    ]

    # Bad input first: one line, exit 2, and nothing made.
    for bad, field in [
        (["--bucket", bucket, "--ssh-cidr", "0.0.0.0/0"], "--ssh-cidr"),
        (["--bucket", bucket, "--ssh-cidr", "::/0"], "--ssh-cidr"),
        (["--bucket", bucket, "--ssh-cidr", "my-laptop"], "--ssh-cidr"),
        (["--bucket", "no-such-bucket-caetune", "--ssh-cidr", "203.0.113.7/32"], "--bucket"),
        (["--bucket", bucket], "--ssh-cidr"),
    ]:
        done = run_setup(s3_server, *bad, *base, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert field in line
    assert not caetune_groups(s3_server)
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("caetune-")]
    assert not (tmp_path / "cluster.local.yaml").exists()

    done = run_setup(
        s3_server, "--bucket", bucket, "--ssh-cidr", "203.0.113.7/32", *base, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    (group,) = caetune_groups(s3_server)
    assert_only_ssh_from(group, "203.0.113.7/32")

    account = aws(s3_server, "sts").get_caller_identity()["Account"]
    for role, names in {
        "caetune-head": {"caetune-s3", "caetune-autoscaler"},
        "caetune-worker": {"caetune-s3"},
    }.items():
        assert set(iam.list_role_policies(RoleName=role)["PolicyNames"]) == names
        profile = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
        assert [r["RoleName"] for r in profile["Roles"]] == [role]
        for name in names:
            document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            text = json.dumps(document)
            assert not PLACEHOLDER.search(text)
            if name == "caetune-s3":
                assert f"arn:aws:s3:::{bucket}/*" in text
            else:
                assert f"security-group/{group['GroupId']}" in text and f":{account}:" in text

    rendered_text = (tmp_path / "cluster.local.yaml").read_text()
    assert not PLACEHOLDER.search(rendered_text)
    rendered = yaml.safe_load(rendered_text)
    validate_like_ray_up(rendered)
    assert rendered["provider"]["region"] == "us-east-1"
    for node_type in rendered["available_node_types"].values():
        node = node_type["node_config"]
        assert (
            node["SecurityGroupIds"] == [group["GroupId"]]
            and node["ImageId"] == "ami-0123456789abcdef0"
        )
        assert node["IamInstanceProfile"]["Arn"].startswith(
            f"arn:aws:iam::{account}:instance-profile/caetune-"
        )

    # Run again with a new range: the old one is gone, nothing else is added.
    done = run_setup(
        s3_server, "--bucket", bucket, "--ssh-cidr", "198.51.100.0/24", *base, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    (again,) = caetune_groups(s3_server)
    assert again["GroupId"] == group["GroupId"]
    assert_only_ssh_from(again, "198.51.100.0/24")


def assert_only_ssh_from(group: dict, cidr: str) -> None:
    rules = group["IpPermissions"]
    assert len(rules) == 2, rules
    (ssh,) = [r for r in rules if r.get("IpRanges") or r.get("Ipv6Ranges")]
    assert (ssh["IpProtocol"], ssh["FromPort"], ssh["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == [cidr] and not ssh.get("Ipv6Ranges")
    (internal,) = [r for r in rules if r is not ssh]
    assert [p["GroupId"] for p in internal["UserIdGroupPairs"]] == [group["GroupId"]]
    assert not internal.get("IpRanges") and not internal.get("Ipv6Ranges")
