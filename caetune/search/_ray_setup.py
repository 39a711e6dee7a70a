"""Ray for a search: join a cluster or start a local Ray, check its resources, quiet Ray Tune.

Ray's own internals that caetune relies on live in :mod:`caetune.search._compat`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from caetune._errors import InputError
from caetune.search._compat import bind_local_ray_to_loopback

ADDRESS_TIMEOUT_S = 5.0


def _ray_target(address: str | None) -> tuple[str | None, str]:
    """The cluster to join and the flag it came from: ``--address``, else ``RAY_ADDRESS``.

    ``None`` as the cluster: no cluster given, a local Ray.
    """
    if address:
        return address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def check_ray_address(address: str | None) -> None:
    """Fails fast when the cluster to join does not answer (unless this process runs Ray)."""
    import ray

    target, field = _ray_target(address)
    if target and target != "auto" and not ray.is_initialized():
        _check_reachable(target, field)


def connect_ray(address: str | None) -> bool:
    """Joins ``address`` (or ``RAY_ADDRESS``), else starts a local Ray; True if it started one.

    A Ray already initialised in this process (a test's, a notebook's) is used as is.
    Ray's token authentication, where the cluster uses it, works as Ray documents it
    (``RAY_AUTH_TOKEN`` and friends in the environment).

    Raises:
        InputError: The cluster cannot be joined.
    """
    import ray

    if ray.is_initialized():
        return False
    target, field = _ray_target(address)
    if target is None:
        bind_local_ray_to_loopback()  # a local Ray listens on 127.0.0.1 only
    try:
        # Ray's console warnings would interleave with the progress lines; its logs keep them.
        # "local", not None: a bare ray.init() joins the cluster that `ray start` (or
        # ray.cluster_utils) last recorded on this machine, even a gone one, and hangs on it.
        ray.init(
            address=target or "local",
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
            runtime_env=_worker_runtime_env(),
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise InputError(
            field, f"cannot join the Ray cluster at {target}: {str(err).splitlines()[0]}"
        ) from None
    if target is None:
        _make_token_private()
    return True


def _worker_runtime_env() -> dict[str, Any]:
    """The environment of this search's Ray workers: glibc's allocator tuned from their start.

    A trial trains in a thread of its worker, where ``mallopt`` (what
    :func:`caetune.models.tune_allocator` calls) cannot keep glibc from
    unmapping the big gradient buffers after every step; ``GLIBC_TUNABLES``
    read at process start can. A value the user set is left alone.
    """
    from caetune.models import ALLOCATOR_TUNABLES

    if "GLIBC_TUNABLES" in os.environ or not sys.platform.startswith("linux"):
        return {}
    return {"env_vars": {"GLIBC_TUNABLES": ALLOCATOR_TUNABLES}}


def _make_token_private() -> None:
    """Ray writes the token it makes for a new local cluster with the umask's mode (often 0644)."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.is_file():
        path.chmod(0o600)


def check_resources(values: dict, *, strict: bool, stream) -> None:
    """A trial must fit on the cluster, or Tune waits for it forever.

    On a local Ray (``strict``) that is bad input; a cluster that autoscales
    may still grow, so there it is a warning.
    """
    import ray

    have = ray.cluster_resources()
    for flag, key, need in (
        ("--cpus-per-trial", "CPU", float(values["cpus_per_trial"])),
        ("--gpus-per-trial", "GPU", float(values["gpus_per_trial"])),
    ):
        if need > have.get(key, 0.0):
            message = f"a trial needs {need:g} {key}, the Ray cluster has {have.get(key, 0.0):g}"
            if strict:
                raise InputError(flag, message)
            print(f"  warning: {flag}: {message} (waiting for the cluster to grow)", file=stream)


def _check_reachable(address: str, field: str) -> None:
    """A TCP connect to the cluster's host:port within seconds (ray.init waits far longer)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(field, f"expected host:port, ray://host:port or auto, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as err:
        raise InputError(
            field, f"cannot reach a Ray cluster at {hostport}: {err.strerror or err}"
        ) from None


def quiet_tune_environment() -> None:
    """Ray Tune settings read from the environment when the Tuner is built (driver only)."""
    # The recorder prints the progress; Tune's own tables and banners would drown it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpoints every epoch with num_to_keep=2 make Tune snapshot often; that is intended.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A failed trial's last result carries its reason but no metric (it has none to give).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Only the JSON logger (passed explicitly): no TensorBoard files per trial.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


class quiet_ray:
    """Keeps Ray Tune's console output to errors while trials run (the recorder prints progress)."""

    def __enter__(self):
        self.logger = logging.getLogger("ray.tune")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
