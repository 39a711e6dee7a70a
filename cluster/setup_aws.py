"""Create the AWS pieces that cluster.yaml needs, kept tight, and write cluster.local.yaml.

    python cluster/setup_aws.py --bucket my-experiments --ssh-cidr 203.0.113.7/32 --region eu-west-1

Creates, or brings back in line when run again:

- security group ``caetune-ssh`` in the VPC (the default VPC unless
  ``--vpc-id``): SSH from ``--ssh-cidr`` only, all traffic between members of
  the group, nothing else from anywhere;
- IAM roles and instance profiles ``caetune-head`` (the bucket, plus the EC2
  calls the autoscaler makes for this cluster's workers) and
  ``caetune-worker`` (the bucket only), from the JSON policies beside this file;

then writes ``cluster.yaml`` with its YOUR-... placeholders filled in to
``--out``. It uses your usual AWS credentials (environment, ~/.aws) and writes
none of them anywhere. Every input is checked before anything is created: bad
input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent / "cluster.yaml"
CLUSTER_NAME = "caetune"  # cluster.yaml's cluster_name; the policies' tag conditions use it too
SECURITY_GROUP = "caetune-ssh"
HEAD_ROLE, WORKER_ROLE = "caetune-head", "caetune-worker"
# role -> {inline policy name: policy file beside this script}
ROLE_POLICIES = {
    HEAD_ROLE: {
        "caetune-s3": "iam-policy-s3.json",
        "caetune-autoscaler": "iam-policy-autoscaler.json",
    },
    WORKER_ROLE: {"caetune-s3": "iam-policy-s3.json"},
}
# AWS's public pointer to the newest Deep Learning Base AMI with the NVIDIA driver (Ubuntu 22.04,
# Python 3.10).
AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
_VPC_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")


class BadInput(ValueError):
    """``field: expected``; the script's counterpart of caetune.InputError."""

    def __init__(self, field: str, expected: str) -> None:
        super().__init__(f"{field}: {expected}")


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``YOUR-NAME`` placeholder replaced by ``values["YOUR-NAME"]``."""
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    left = sorted(set(re.findall(r"YOUR-[A-Z-]+[A-Z]", text)))
    if left:
        raise BadInput("template", f"placeholders without a value: {', '.join(left)}")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")  # one line, like caetune's own commands


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="setup_aws.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", required=True, help="the existing S3 bucket for experiments")
    parser.add_argument(
        "--ssh-cidr", required=True, help="who may SSH to the head, e.g. YOUR.PUBLIC.IP/32"
    )
    parser.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    parser.add_argument("--vpc-id", help="VPC for the cluster (default: the region's default VPC)")
    parser.add_argument(
        "--ami", help=f"image for all nodes (default: the SSM parameter {AMI_PARAMETER})"
    )
    parser.add_argument(
        "--out",
        default="cluster.local.yaml",
        help="the filled-in config (default cluster.local.yaml)",
    )
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> dict:
    """Everything that can be checked without AWS; raises BadInput."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", args.bucket):
        raise BadInput("--bucket", f"an S3 bucket name (3-63 of a-z 0-9 . -), not {args.bucket!r}")
    try:
        cidr = ipaddress.ip_network(args.ssh_cidr, strict=False)
    except ValueError:
        raise BadInput(
            "--ssh-cidr", f"an address range like 203.0.113.7/32, not {args.ssh_cidr!r}"
        ) from None
    if cidr.prefixlen == 0:
        raise BadInput(
            "--ssh-cidr", "your own address or range (e.g. YOUR.IP/32), never the whole internet"
        )
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region or not _REGION_RE.match(region):
        raise BadInput(
            "--region", f"an AWS region such as us-east-1 (or set AWS_REGION), not {region!r}"
        )
    if args.ami and not _AMI_RE.match(args.ami):
        raise BadInput("--ami", f"an image id like ami-0123456789abcdef0, not {args.ami!r}")
    if args.vpc_id and not _VPC_RE.match(args.vpc_id):
        raise BadInput("--vpc-id", f"a VPC id like vpc-0123456789abcdef0, not {args.vpc_id!r}")
    out = Path(args.out).resolve()
    if out == TEMPLATE.resolve():
        raise BadInput("--out", "another file than cluster.yaml itself (it stays a template)")
    if not out.parent.is_dir():
        raise BadInput("--out", f"a file in an existing folder, not {out}")
    return {"cidr": cidr, "region": region, "out": out}


def find_aws_inputs(session, args: argparse.Namespace) -> dict:
    """The account, VPC, AMI and bucket, looked up (nothing is created); raises BadInput."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        account = session.client("sts").get_caller_identity()["Account"]
    except (BotoCoreError, ClientError) as err:
        raise BadInput("AWS credentials", f"none that work ({err})") from None
    ec2 = session.client("ec2")
    if args.vpc_id:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [args.vpc_id]}])["Vpcs"]
    else:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        missing = args.vpc_id or "default VPC"
        raise BadInput(
            "--vpc-id", f"an existing VPC in {session.region_name} (there is no {missing})"
        )
    ami = args.ami
    if not ami:
        try:
            ami = session.client("ssm").get_parameter(Name=AMI_PARAMETER)["Parameter"]["Value"]
        except (BotoCoreError, ClientError) as err:
            raise BadInput("--ami", f"needed: the image could not be looked up ({err})") from None
    try:
        session.client("s3").head_bucket(Bucket=args.bucket)
    except ClientError as err:
        raise BadInput("--bucket", f"an existing bucket you can reach ({err})") from None
    return {"account": account, "vpc": vpcs[0]["VpcId"], "ami": ami}


def ensure_security_group(ec2, *, vpc: str, cidr) -> str:
    """The id of ``caetune-ssh`` in ``vpc``, with exactly the two ingress rules of this cluster."""
    found = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [SECURITY_GROUP]},
            {"Name": "vpc-id", "Values": [vpc]},
        ]
    )["SecurityGroups"]
    if found:
        group = found[0]
        if group["IpPermissions"]:  # a rerun (perhaps with a new --ssh-cidr): start from no rules
            ec2.revoke_security_group_ingress(
                GroupId=group["GroupId"], IpPermissions=group["IpPermissions"]
            )
        group_id = group["GroupId"]
    else:
        group_id = ec2.create_security_group(
            GroupName=SECURITY_GROUP,
            Description="caetune Ray cluster: SSH from one range, all traffic within the cluster",
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [{"Key": "ray-cluster-name", "Value": CLUSTER_NAME}],
                }
            ],
        )["GroupId"]
    ranges = "Ipv6Ranges" if cidr.version == 6 else "IpRanges"
    key = "CidrIpv6" if cidr.version == 6 else "CidrIp"
    ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                ranges: [{key: str(cidr), "Description": "SSH"}],
            },
            # GCS, object manager, raylets, dashboard agents: members of this group only.
            {
                "IpProtocol": "-1",
                "UserIdGroupPairs": [{"GroupId": group_id, "Description": "within the cluster"}],
            },
        ],
    )
    return group_id


def ensure_role(iam, name: str, policies: dict[str, str]) -> str:
    """Role and instance profile ``name`` with exactly these inline policies; returns the profile
    ARN.
    """
    trust = (HERE / "trust-policy.json").read_text(encoding="utf-8")
    try:
        iam.get_role(RoleName=name)
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
    except iam.exceptions.NoSuchEntityException:
        iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=trust,
            Description=f"caetune Ray cluster: {name}",
        )
    for stale in set(iam.list_role_policies(RoleName=name)["PolicyNames"]) - set(policies):
        iam.delete_role_policy(RoleName=name, PolicyName=stale)
    for policy_name, document in policies.items():
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=document)
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    if name not in {role["RoleName"] for role in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return profile["Arn"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import boto3

        checked = check_inputs(args)
        session = boto3.session.Session(region_name=checked["region"])
        found = find_aws_inputs(session, args)
        values = {
            "YOUR-REGION": checked["region"],
            "YOUR-ACCOUNT-ID": found["account"],
            "YOUR-VPC-ID": found["vpc"],
            "YOUR-AMI-ID": found["ami"],
            "YOUR-BUCKET": args.bucket,
        }
        template = TEMPLATE.read_text(encoding="utf-8")
        # Rendered once with a stand-in group id so a bad template fails before anything exists.
        render(template, {**values, "YOUR-SG-ID": "sg-0"})
    except BadInput as err:
        print(f"setup_aws.py: error: {err}", file=sys.stderr)
        return 2

    group_id = ensure_security_group(session.client("ec2"), vpc=found["vpc"], cidr=checked["cidr"])
    values["YOUR-SG-ID"] = group_id
    iam = session.client("iam")
    for role, policies in ROLE_POLICIES.items():
        documents = {
            name: render((HERE / file).read_text(encoding="utf-8"), values)
            for name, file in policies.items()
        }
        # Compact JSON: IAM counts whitespace against its inline-policy size limit.
        documents = {
            name: json.dumps(json.loads(doc), separators=(",", ":"))
            for name, doc in documents.items()
        }
        ensure_role(iam, role, documents)

    out = checked["out"]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(template, values), encoding="utf-8")
    os.replace(tmp, out)
    print(f"security group {group_id} in {found['vpc']}: SSH from {checked['cidr']} only")
    print(
        f"instance profiles {HEAD_ROLE} and {WORKER_ROLE}: s3://{args.bucket} only (+ autoscaler "
        "EC2 on the head)"
    )
    print(f"wrote {out}; next: ray get-auth-token --generate && ray up {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
