"""Fixtures and collection rules shared by every test package.

``ray_local``: one local Ray for the whole session (``num_cpus=2``, the CI
machine's size), started on first use and shut down at the end. Search and
analysis tests that need Ray use it rather than starting their own; a test
that needs a different cluster (multi-node) must ``ray.shutdown()`` first
and leave Ray down, or run in a subprocess.

``make test`` runs two pytest-xdist workers (``-n 2 --dist loadfile``): a test
file runs whole on one worker, so its module fixtures are set up once; each
worker is a session of its own, with its own Ray, S3 server and PostgreSQL.
"""

from __future__ import annotations

import logging

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort: the order is otherwise kept).

    ``make test`` hands whole test files to its two xdist workers in collection
    order: a long file handed out last keeps one worker busy while the other
    idles. Putting the files with ``slow`` tests first evens out the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, shared by the session; yields the ``ray`` module."""
    import ray

    if not ray.is_initialized():
        ray.init(  # "local": never a cluster another test's `ray start` recorded (see README)
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    yield ray
    ray.shutdown()
