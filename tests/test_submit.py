"""``caetune submit/status/logs/stop`` against a real Ray head with token authentication.

The head is :func:`tests._helpers.ray_head`: ``ray start --head --block`` in a
subprocess of its own, every port chosen free, its own short temp dir and
RAY_AUTH_MODE=token, stopped by its own pid, never with ``ray stop``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caetune import __version__
from caetune._cluster import build_runtime_env, resolve_address, resolve_token
from caetune.cli import main
from tests._helpers import free_port, ray_head

CLIENT_VARS = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
)


@pytest.fixture(scope="module")
def head():
    """A Ray head with token auth on 127.0.0.1, its Jobs API at ``head.url``."""
    if importlib.util.find_spec("aiohttp") is None:
        pytest.fail("the Ray dashboard (Jobs API) needs ray[default]: pip install 'ray[default]'")
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    # As on a cluster node (cluster.yaml activates its venv): `python` in a job has caetune.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with ray_head(
        ["--dashboard-host=127.0.0.1", "--disable-usage-stats"], env=env, token=token
    ) as started:
        yield started


@pytest.fixture
def client_env(monkeypatch, tmp_path):
    """This process as a user's machine: no Ray variables, an empty home (no ~/.ray/auth_token)."""
    for var in CLIENT_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# --- without a cluster ----------------------------------------------------------------------------


def test_runtime_env_passes_caetune_settings_and_region_but_never_credentials(tmp_path):
    environ = {
        "CAETUNE_STORAGE": "s3://b/runs",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE12",
        "AWS_SECRET_ACCESS_KEY": "x" * 40,
        "AWS_SESSION_TOKEN": "t",
        "RAY_AUTH_TOKEN": "secret",
        "HOME": "/root",
    }
    env = build_runtime_env(working_dir=tmp_path, pip=["caetune==0.1.0"], environ=environ)
    assert env["env_vars"] == {
        "CAETUNE_STORAGE": "s3://b/runs",
        "AWS_REGION": "eu-west-1",
        "PYTHONUNBUFFERED": "1",
    }
    assert env["working_dir"] == str(tmp_path.resolve()) and env["pip"] == ["caetune==0.1.0"]
    assert {".venv", ".git", "runs", ".env", ".aws", "*.pem"} <= set(env["excludes"])
    assert "working_dir" not in build_runtime_env(working_dir=None, environ={})


def test_address_and_token_are_found_where_ray_looks(tmp_path):
    assert resolve_address(None, environ={}) == ("http://127.0.0.1:8265", "--address")
    env = {"RAY_ADDRESS": "10.0.0.5:8265", "RAY_API_SERVER_ADDRESS": "https://head:443/"}
    assert resolve_address(None, environ=env) == ("https://head:443", "RAY_API_SERVER_ADDRESS")
    assert (
        resolve_address(None, environ={"RAY_ADDRESS": "10.0.0.5:8265"})[0] == "http://10.0.0.5:8265"
    )

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "t").write_text("from-path")
    assert resolve_token(environ={"HOME": str(tmp_path)}) == (
        "from-home",
        str(tmp_path / ".ray" / "auth_token"),
    )
    assert (
        resolve_token(environ={"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")})[
            0
        ]
        == "from-path"
    )
    assert (
        resolve_token(environ={"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "from-env"})[0]
        == "from-env"
    )
    assert resolve_token(environ={"HOME": str(tmp_path / "nobody")})[0] is None


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["submit", "--address", "ray://head:10001", "--", "--version"], "--address"),
        (["status", "--address", "http://head:8265/api"], "--address"),
        (["submit", "--", "submit", "--", "search"], "COMMAND"),
        (["submit", "--", "rm", "-rf", "/"], "COMMAND"),
        (["submit"], "COMMAND"),
        (["submit", "--working-dir", "no/such/dir", "--", "--version"], "--working-dir"),
        (["stop", "JOB", "--timeout", "0"], "--timeout"),
    ],
)
def test_bad_input_is_one_line_and_contacts_nothing(client_env, capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert needle in one_error_line(err)


def test_a_remote_command_with_bad_flags_fails_here_before_sending(client_env, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "--", "search", "--num-samples", "many"])
    assert exit_info.value.code == 2
    assert "--num-samples" in one_error_line(capsys.readouterr().err)


def test_no_cluster_at_the_address_is_one_line_and_fast(client_env, capsys):
    closed = free_port()  # nothing listens there once the probe socket is closed
    started = time.monotonic()
    code, out, err = run(
        capsys, "submit", "--address", f"http://127.0.0.1:{closed}", "--", "--version"
    )
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert (
        "--address" in line and "no Ray cluster answers" in line and "ray up cluster.yaml" in line
    )
    assert time.monotonic() - started < 5


# --- against the head -----------------------------------------------------------------------------


@pytest.mark.slow
def test_submit_uploads_the_checkout_streams_logs_and_reports_success(
    head, client_env, capsys, monkeypatch
):
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    monkeypatch.setenv("CAETUNE_TEST_MARK", "passed-on")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-sent")
    code, out, err = run(capsys, "submit", "--address", head.url, "--", "--version")
    assert code == 0, err
    job_id = out.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert f"caetune {__version__}" in out  # printed by the job, streamed here
    assert "SUCCEEDED" in err

    info = head.sdk().get_job_info(job_id)
    assert info.runtime_env["working_dir"].startswith("gcs://")  # the checkout was uploaded
    assert info.runtime_env["env_vars"]["CAETUNE_TEST_MARK"] == "passed-on"
    assert not {"AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN"} & set(info.runtime_env["env_vars"])

    code, out, _ = run(capsys, "status", "--address", head.url, job_id)
    assert code == 0 and out.split()[:2] == [job_id, "SUCCEEDED"]
    code, out, _ = run(capsys, "logs", "--address", head.url, job_id)
    assert code == 0 and f"caetune {__version__}" in out
    code, out, _ = run(capsys, "status", "--address", head.url)
    assert code == 0 and any(line.startswith(job_id) for line in out.splitlines())


@pytest.mark.slow
def test_a_real_tiny_training_job_and_no_wait_then_follow(
    head, client_env, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    out_dir = tmp_path / "run"  # the job runs on this machine, so it writes here
    code, out, err = run(
        capsys,
        "submit",
        "--no-wait",
        "--address",
        head.url,
        "--",
        "train",
        "--dataset",
        "mnist-10k",
        "--subset",
        "200",
        "--n-neurons",
        "8",
        "--n-maps",
        "2",
        "--n-epochs",
        "1",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--out",
        str(out_dir),
    )
    assert code == 0, err
    job_id = out.strip()
    code, out, err = run(capsys, "logs", "--follow", "--address", head.url, job_id)
    assert code == 0, out + err
    assert "val_mse" in out
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["val_mse"] > 0


@pytest.mark.slow
def test_a_failing_job_gives_its_own_exit_code(head, client_env, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    # Parses here (an int), fails validation there: the job's InputError exit code 2 comes back.
    code, out, err = run(
        capsys,
        "submit",
        "--address",
        head.url,
        "--",
        "train",
        "--n-neurons",
        "-5",
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 2, out + err
    assert "n_neurons" in out and "FAILED" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_stop_ends_a_running_job(head, client_env, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    job_id = head.sdk().submit_job(entrypoint="echo started; sleep 60")
    deadline = time.monotonic() + 60
    while head.sdk().get_job_status(job_id).value != "RUNNING":
        assert time.monotonic() < deadline, "the sleep job never started"
        time.sleep(0.5)

    started = time.monotonic()
    code, out, err = run(capsys, "stop", "--address", head.url, job_id)
    assert code == 0, err
    assert out.split()[:2] == [job_id, "STOPPED"]
    assert time.monotonic() - started < 30
    code, out, _ = run(capsys, "stop", "--address", head.url, job_id)
    assert code == 0 and "already ended" in out
    code, _, err = run(capsys, "logs", "--follow", "--address", head.url, job_id)
    assert code == 130 and "STOPPED" in err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_an_unknown_job_is_bad_input(head, client_env, capsys, monkeypatch, command):
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    code, out, err = run(capsys, command, "--address", head.url, "raysubmit_nosuchjob")
    assert code == 2 and out == ""
    assert "raysubmit_nosuchjob" in one_error_line(err)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["RAY_AUTH_TOKEN_PATH", "home"])
def test_the_token_is_read_from_a_file_too(head, client_env, capsys, monkeypatch, tmp_path, where):
    if where == "home":
        (client_env / ".ray").mkdir()
        (client_env / ".ray" / "auth_token").write_text(head.token + "\n")
    else:
        (tmp_path / "token").write_text(head.token)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    code, _, err = run(capsys, "status", "--address", head.url)
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize(
    "token,needle", [("wrong-token", "refused the token"), (None, "requires a Ray auth token")]
)
def test_a_missing_or_wrong_token_is_refused_and_nothing_is_submitted(
    head, client_env, capsys, monkeypatch, token, needle
):
    if token:
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    before = len(head.sdk().list_jobs())
    code, out, err = run(capsys, "submit", "--address", head.url, "--", "--version")
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert line.startswith("caetune submit: error: token:") and needle in line
    assert len(head.sdk().list_jobs()) == before


@pytest.mark.slow
def test_the_installed_command_line_says_one_line_and_exits_2(head, client_env, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
    env["RAY_AUTH_TOKEN"] = "wrong-token"
    done = subprocess.run(
        [sys.executable, "-m", "caetune.cli", "status", "--address", head.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "refused the token" in one_error_line(done.stderr)


def test_the_readme_commands_parse(client_env):
    from caetune._cluster_cli import check_remote_command

    readme = (Path(__file__).resolve().parent.parent / "cluster" / "README.md").read_text(
        encoding="utf-8"
    )
    lines = [line for line in readme.splitlines() if line.startswith("caetune submit -- ")]
    submits = [line.split(" -- ", 1)[1].split() for line in lines]
    assert submits
    for args in submits:
        assert check_remote_command(args).command == args[0]
