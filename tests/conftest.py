"""Fixtures shared by every test package.

``ray_local``: one local Ray for the whole session (``num_cpus=2``, the CI
machine's size), started on first use and shut down at the end. Search and
analysis tests that need Ray use it rather than starting their own; a test
that needs a different cluster (multi-node) must ``ray.shutdown()`` first
and leave Ray down, or run in a subprocess.
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, shared by the session; yields the ``ray`` module."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
        )
    yield ray
    ray.shutdown()
