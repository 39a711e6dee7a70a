"""A real S3 for tests: moto's server on 127.0.0.1 in a subprocess.

Use it as pytest fixtures (import the ones you need into a test module, or
list this module in ``pytest_plugins``)::

    from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401

    def test_upload(s3_bucket):  # env points at the server, bucket exists
        storage = parse_storage(f"s3://{s3_bucket}/runs")

or directly: ``with S3Server() as server: server.create_bucket("b")``; pass
``server.env`` to subprocesses (fake credentials, never real ones). One
server serves the whole test process; every test gets its own bucket.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

_RUNNING_ON = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")
# Variables that would send a test's S3 traffic anywhere but this server.
_CLEARED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


class S3Server:
    """``moto_server`` on a free 127.0.0.1 port, started and stopped by this object.

    Args:
        start_timeout: Seconds to wait for the server to answer.
    """

    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = Path(tempfile.mkdtemp(prefix="caetune-moto-")) / "moto.log"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point AWS clients (boto3, pyarrow) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at this server."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CLEARED}
        env.update(self.env)
        return env

    def start(self) -> S3Server:
        if self.process is not None:
            return self
        with open(self._log, "wb") as log:
            # Port 0: the OS picks a free port and the server prints it (no race with other tests).
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"moto_server exited with {self.process.returncode}: {self._log.read_text()}"
                )
            found = _RUNNING_ON.search(self._log.read_text(errors="replace"))
            if found and self._answers(int(found.group(1))):
                self.port = int(found.group(1))
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer within {self.start_timeout} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        env = self.env
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=env["AWS_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh unique name by default) and returns its name."""
        name = name or f"caetune-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, sorted."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                return True
        except OSError:
            return False


_shared: S3Server | None = None


def shared_server() -> S3Server:
    """The one server of this test process, started on first use and stopped at exit."""
    global _shared
    if _shared is None:
        _shared = S3Server().start()
        atexit.register(_shared.stop)
    return _shared


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """The running moto server (its environment is not applied; see ``s3_env``)."""
    return shared_server()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The server, with this process's AWS environment pointed at it for one test."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A fresh, empty bucket on the server, with the environment pointed at it."""
    return s3_env.create_bucket()
