"""The Ray that ``caetune search`` starts gives its workers glibc's allocator tuning from their
start.

The first case starts a local Ray in a subprocess, as ``caetune search`` does,
and asks a Ray worker for its ``GLIBC_TUNABLES``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from caetune.models import ALLOCATOR_TUNABLES

PROBE = """
import os, ray
from caetune.search._run import connect_ray
assert connect_ray(None)
print("worker:", ray.get(ray.remote(lambda: os.environ.get("GLIBC_TUNABLES")).remote()))
ray.shutdown()
"""


def worker_tunables(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GLIBC_TUNABLES")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split("worker:", 1)[1].strip()


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc tunables are a Linux matter"
)
def test_workers_start_with_the_allocator_tuned():
    assert worker_tunables({}) == ALLOCATOR_TUNABLES


def test_a_users_own_tunables_are_kept(monkeypatch):
    from caetune.search._ray_setup import _worker_runtime_env

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert _worker_runtime_env() == {}  # the workers inherit the user's value
