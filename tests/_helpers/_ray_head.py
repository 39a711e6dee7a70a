"""A real Ray head with token authentication: ``ray start --head --block`` in a process of its own.

Every port is chosen free and the head gets its own short temp dir (Ray's unix
socket paths must stay under 107 characters), so it never meets another Ray
on the machine. It is stopped through its own process, and what is left of it
is found by that temp dir (or its token) and killed; never with ``ray stop``,
which would end every Ray instance on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

# Every port `ray start --head` opens; Ray's fixed defaults would collide with other Rays here.
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--object-manager-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (once this probe's socket is closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_command(commands: list[str]) -> str:
    """The one ``ray start`` line of a cluster config's list of shell commands."""
    (command,) = [c for c in commands if "ray start" in c]
    return command


def processes_of(*needles: str, roots: tuple[int, ...] = ()) -> list:
    """Processes whose command line holds one of ``needles``, and ``roots``; with descendants."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if proc.pid in roots or any(needle in cmdline for needle in needles):
            found[proc.pid] = proc
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            pass
    return list(found.values())


def stop(processes) -> None:
    """SIGKILL what is left of one Ray instance (found by its own temp dir)."""
    for proc in processes:
        try:
            proc.send_signal(signal.SIGKILL)
        except Exception:
            pass


@dataclass
class RayHead:
    """A running head: its dashboard (Jobs API) URL, GCS address, token, process and temp dir."""

    url: str
    gcs: str
    token: str
    process: subprocess.Popen
    temp_dir: str

    def sdk(self):
        """Ray's own Jobs API client, with the token."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {self.token}"})

    def processes(self) -> list:
        """The head's processes: ``ray start`` and all it started."""
        return processes_of(self.temp_dir, roots=(self.process.pid,))


@contextmanager
def ray_head(flags: list[str], *, env: dict[str, str], token: str) -> Iterator[RayHead]:
    """``ray start --head --block --num-cpus 1`` with ``flags``, up and answering with ``token``.

    Args:
        flags: ``--name=value`` flags of ``ray start``; a port flag among them
            (:data:`PORT_FLAGS`) gives way to a free port.
        env: The head's environment; it must make Ray use ``token``
            (``RAY_AUTH_TOKEN``, or a ``HOME`` holding ``.ray/auth_token``).
        token: The token, to see the head answer.
    """
    temp_dir = tempfile.mkdtemp(prefix="cts", dir="/tmp")
    ports = {name: free_port() for name in PORT_FLAGS}
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        *[flag for flag in flags if flag.split("=", 1)[0] not in ports],
        "--block",
        "--num-cpus",
        "1",
        "--temp-dir",
        temp_dir,
        *[f"{name}={port}" for name, port in ports.items()],
    ]
    log_path = Path(temp_dir) / "head.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        wait_for_head(process, url, token, log_path)
        yield RayHead(url, f"127.0.0.1:{ports['--port']}", token, process, temp_dir)
    finally:
        started = processes_of(temp_dir, roots=(process.pid,))
        stop_head(process)
        stop([p for p in started if p.is_running()])
        for pid in _leftovers(temp_dir, token):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_head(
    process: subprocess.Popen, url: str, token: str, log: Path, timeout_s: float = 120
) -> None:
    """Until the head's dashboard answers the token; fails if ``ray start`` exits or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"ray start exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            headers = {"Authorization": f"Bearer {token}"}
            if requests.get(f"{url}/api/version", headers=headers, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the Ray head's dashboard did not answer within {timeout_s:g} s")
        time.sleep(0.5)


def stop_head(process: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` alone: it drains the node and stops what it started.

    SIGKILL to its group after 45 s.
    """
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _leftovers(temp_dir: str, token: str) -> list[int]:
    """This head's processes: its temp dir on their command line, or its token in their env."""
    needle = f"RAY_AUTH_TOKEN={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline or needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids
