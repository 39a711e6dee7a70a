"""Security: token authentication, loopback binding, and credentials that never reach a file.

Part 4 of the "Reliability and security" issue, against real processes:

* the local Ray that ``caetune search`` starts (``connect_ray`` with no
  address) requires Ray's token on its GCS, and should listen on 127.0.0.1
  only;
* a head started with the very ``ray start`` command of ``cluster.yaml``
  refuses clients without the token (dashboard, Jobs API, GCS) and keeps its
  dashboard on 127.0.0.1;
* a whole search with a report, an export, a report and a retrain, run with
  fake AWS keys and a fake Ray token in the environment, writes neither into
  any file (run folder, export, report, cache, home, Ray's session logs) nor
  onto its output.

Every Ray here runs in its own short temp dir (unix socket paths must stay
under 107 characters) and is stopped through its own process, never with
``ray stop``, which would end other Ray instances on the machine.
``cluster.yaml`` and the IAM policies are checked in tests/test_cluster_yaml.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import string
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests._helpers import processes_of, ray_head, start_command, stop

ROOT = Path(__file__).resolve().parents[2]
RAY_VARS_PREFIXES = ("RAY_", "AWS_")
# caetune's own local Ray, by the code path `caetune search` takes; then it waits for a stdin line.
LOCAL_RAY_SCRIPT = """
import json, os, sys
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
from caetune.search._ray_setup import connect_ray

started = connect_ray(None)
node = ray._private.worker._global_node
print(json.dumps({
    "started": started,
    "token_auth": get_authentication_mode() == AuthenticationMode.TOKEN,
    "gcs": node.gcs_address,
    "node_ip": node.node_ip_address,
    "session_dir": node.get_session_dir_path(),
}), flush=True)
sys.stdin.readline()
ray.shutdown()
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray or AWS settings (no cluster, no real keys), and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(RAY_VARS_PREFIXES)}
    env.update(RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def listeners(processes) -> list[tuple[str, int, str]]:
    """``(ip, port, process name)`` of every TCP socket these processes listen on."""
    import psutil

    out = set()
    for proc in processes:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    out.add((conn.laddr.ip, conn.laddr.port, proc.name()))
        except psutil.Error:
            continue
    return sorted(out)


def is_loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def gcs_call(address: str, token: str | None) -> str:
    """One GCS RPC (``GetClusterId``), with the token as Ray sends it or none: OK or gRPC's code."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token is not None else []
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as err:
            return err.code().name
    return "OK"


# --- the local Ray caetune starts itself ----------------------------------------------------------


@dataclass
class LocalRay:
    info: dict
    token_file: Path
    processes: list


@pytest.fixture(scope="module")
def local_ray():
    """The Ray `caetune search` starts without --address, in a subprocess with an empty home."""
    home = Path(tempfile.mkdtemp(prefix="cth"))
    ray_tmp = tempfile.mkdtemp(prefix="ctl", dir="/tmp")
    env = clean_env(HOME=str(home), RAY_TMPDIR=ray_tmp)
    driver = subprocess.Popen(
        [sys.executable, "-c", LOCAL_RAY_SCRIPT],
        env=env,
        cwd=home,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        line = driver.stdout.readline()
        if not line:
            pytest.fail(f"the driver exited {driver.wait()} before Ray was up")
        info = json.loads(line)
        yield LocalRay(
            info, home / ".ray" / "auth_token", processes_of(ray_tmp, roots=(driver.pid,))
        )
    finally:
        leftovers = processes_of(ray_tmp)
        try:
            driver.stdin.write("\n")
            driver.stdin.flush()
            driver.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        stop([p for p in leftovers if p.is_running()])
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_the_local_ray_of_a_search_requires_the_token(local_ray):
    assert local_ray.info["started"] and local_ray.info["token_auth"]
    token = (
        local_ray.token_file.read_text().strip()
    )  # Ray made one for this home, as on a first run
    gcs = local_ray.info["gcs"]
    assert gcs_call(gcs, None) == "UNAUTHENTICATED"
    assert gcs_call(gcs, "0" * len(token)) == "UNAUTHENTICATED"
    assert gcs_call(gcs, token) == "OK"  # the control: the same call with the token goes through


@pytest.mark.slow
def test_the_local_ray_of_a_search_listens_on_loopback_only(local_ray):
    sockets = listeners(local_ray.processes)
    assert sockets, "found no listening socket of the local Ray"
    assert [s for s in sockets if not is_loopback(s[0])] == []
    assert local_ray.info["node_ip"] == "127.0.0.1"


@pytest.mark.slow
def test_the_token_ray_generates_for_a_search_is_private(local_ray):
    assert local_ray.token_file.stat().st_mode & 0o077 == 0


# --- a head as cluster.yaml starts it -------------------------------------------------------------


def cluster_head_command() -> tuple[dict[str, str], list[str]]:
    """``cluster.yaml``'s own ``ray start --head`` line: its environment prefix and its flags."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    line = start_command(config["head_start_ray_commands"])
    words = shlex.split(line.split(";")[-1])
    at = words.index("ray")
    env = dict(word.split("=", 1) for word in words[:at])
    return env, words[at + 2 :]  # after "ray start"


@pytest.fixture(scope="module")
def head():
    """``ray start --head`` with cluster.yaml's flags and environment; ports and paths local."""
    env_prefix, flags = cluster_head_command()
    token = secrets.token_hex(32)
    home = Path(tempfile.mkdtemp(prefix="cth"))
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(token)  # where cluster.yaml's file_mounts put it
    assert flags[0] == "--head" and "--dashboard-host=127.0.0.1" in flags
    # The launcher writes --autoscaling-config's file on the head; the head serves the same without
    # it.
    kept = [f for f in flags[1:] if not f.startswith("--autoscaling-config")]
    try:
        with ray_head(kept, env=clean_env(HOME=str(home), **env_prefix), token=token) as started:
            yield started
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_the_cluster_head_refuses_clients_without_the_token(head):
    assert gcs_call(head.gcs, None) == "UNAUTHENTICATED"
    assert gcs_call(head.gcs, "0" * len(head.token)) == "UNAUTHENTICATED"
    assert gcs_call(head.gcs, head.token) == "OK"

    version = f"{head.url}/api/version"
    assert requests.get(version, timeout=10).status_code == 401
    assert (
        requests.get(version, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code
        == 403
    )
    assert requests.get(version, headers={"Authorization": f"Bearer {head.token}"}, timeout=10).ok

    job = {"entrypoint": "touch /tmp/caetune-security-test-never"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        assert requests.post(
            f"{head.url}/api/jobs/", json=job, headers=headers, timeout=10
        ).status_code in (401, 403)
    listed = requests.get(
        f"{head.url}/api/jobs/", headers={"Authorization": f"Bearer {head.token}"}, timeout=10
    )
    assert listed.ok and listed.json() == []  # nothing was submitted


@pytest.mark.slow
def test_the_cluster_heads_dashboard_listens_on_loopback_only(head):
    port = int(head.url.rsplit(":", 1)[1])
    sockets = listeners(head.processes())
    on_port = [s for s in sockets if s[1] == port]
    assert on_port and all(is_loopback(ip) for ip, _, _ in on_port), sockets


# --- no credential in anything written ------------------------------------------------------------


def fake_secrets() -> dict[str, str]:
    """Credential-shaped values, unique to this run, so any copy of them is found."""
    upper = string.ascii_uppercase + string.digits
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + "".join(secrets.choice(upper) for _ in range(16)),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)[:40],
        "AWS_SESSION_TOKEN": "FQoGZXIvYXdzE" + secrets.token_hex(24),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }


def files_holding(root: Path, needles: dict[str, bytes]) -> list[str]:
    """``path: VAR`` for every file under ``root`` whose name or bytes hold a secret."""
    found = []
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [
            f"{path}: {var}"
            for var, needle in needles.items()
            if needle in data or needle in bytes(path)
        ]
    return found


@dataclass
class Pipeline:
    fake: dict[str, str]
    root: Path  # the working folder, home and cache
    ray_tmp: Path  # Ray's session folders and logs
    outputs: dict[str, str]  # what each command printed


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """search (with report) -> export -> report -> train, fake credentials in the environment."""
    fake = fake_secrets()
    root = tmp_path_factory.mktemp("credentials")
    ray_tmp = Path(tempfile.mkdtemp(prefix="ctc", dir="/tmp"))
    work, home = root / "work", root / "home"
    work.mkdir()
    home.mkdir()
    env = clean_env(
        HOME=str(home),
        XDG_CACHE_HOME=str(root / "cache"),
        RAY_TMPDIR=str(ray_tmp),
        PYTHONUNBUFFERED="1",
        AWS_REGION="eu-west-1",
        **fake,
    )
    (work / "tiny.yaml").write_text(
        yaml.safe_dump(
            {
                "fixed": {
                    "dataset": "mnist-10k",
                    "subset": 120,
                    "image_size": 12,
                    "batch_size": 32,
                },
                "params": {"n_neurons": {"low": 4, "high": 16, "log": True}, "n_maps": [2, 4]},
            }
        )
    )
    commands = {
        "search": [
            "--space",
            "tiny.yaml",
            "--run-root",
            "runs",
            "--name",
            "cred",
            "--num-samples",
            "2",
            "--max-epochs",
            "1",
            "--confirm-seeds",
            "1",
            "--top-k",
            "1",
            "--util-images",
            "16",
            "--max-concurrent",
            "2",
        ],
        "export": ["runs/cred", "--top", "1", "--to", "exported"],
        "report": ["runs/cred", "--top", "1", "--out", "report-again"],
        "train": ["--config", "exported/CONFIG", "--out", "retrained"],
    }
    outputs = {}
    try:
        for command, argv in commands.items():
            if command == "train":
                argv = [
                    a.replace(
                        "exported/CONFIG", str(next((work / "exported").glob("1-*/config.yaml")))
                    )
                    for a in argv
                ]
            done = subprocess.run(
                [sys.executable, "-m", "caetune.cli", command, *argv],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
            outputs[command] = done.stdout + done.stderr
        yield Pipeline(fake, root, ray_tmp, outputs)
    finally:
        stop(processes_of(str(ray_tmp)))
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_credential_in_runs_reports_exports_models_or_output(pipeline):
    work = pipeline.root / "work"
    # The scan covers real output: a finished run, two reports, an export and a retrained model.
    assert len((work / "runs/cred/results.csv").read_text().splitlines()) == 3
    for written in (
        "runs/cred/report/index.html",
        "report-again/index.html",
        "exported/manifest.json",
        "retrained/model.pt",
        "runs/cred/study.db",
        "runs/cred/experiment.yaml",
        "runs/cred/confirm.csv",
    ):
        assert (work / written).is_file(), written
    needles = {var: value.encode() for var, value in pipeline.fake.items()}
    leaks = files_holding(pipeline.root, needles)
    leaks += [
        f"output of caetune {command}: {var}"
        for command, text in pipeline.outputs.items()
        for var, value in pipeline.fake.items()
        if value in text
    ]
    assert leaks == []


@pytest.mark.slow
def test_no_ray_token_in_rays_session_logs(pipeline):
    assert list(pipeline.ray_tmp.rglob("*.log")), (
        "Ray wrote no session logs where they were expected"
    )
    assert (
        files_holding(
            pipeline.ray_tmp, {"RAY_AUTH_TOKEN": pipeline.fake["RAY_AUTH_TOKEN"].encode()}
        )
        == []
    )


@pytest.mark.slow
def test_no_aws_credential_in_rays_session_logs(pipeline):
    needles = {
        var: value.encode() for var, value in pipeline.fake.items() if var.startswith("AWS_")
    }
    assert files_holding(pipeline.ray_tmp, needles) == []
