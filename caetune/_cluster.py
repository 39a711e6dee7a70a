"""Talk to a running Ray cluster through the Ray Jobs API (submit, status, logs, stop).

The cluster is reached at its dashboard address: ``--address``, else
``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``, else ``http://127.0.0.1:8265``,
where ``ray dashboard cluster.yaml`` forwards the head's dashboard over SSH.
Clusters started from ``cluster.yaml`` require Ray's token authentication; the
token is found where Ray itself looks (``RAY_AUTH_TOKEN``, then the file named
by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``) and sent as a bearer
header, so it never has to appear on a command line::

    client = connect()                        # checks address and token first
    job_id = client.submit(["search", "--run-root", "s3://bucket/runs"],
                           runtime_env=build_runtime_env(working_dir=project_checkout()))
    details = client.follow(job_id, sys.stdout.write)  # streams logs; exit_code(details) -> 0

A missing cluster, a missing or wrong token, an unknown job id: each is an
:class:`~caetune.InputError` before anything is submitted. Importing this
module does not import ray.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from caetune._errors import InputError

if TYPE_CHECKING:
    from ray.job_submission import JobDetails, JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Ray's own order (`ray job submit`): the Jobs API variable first, then the general one.
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
TOKEN_VAR, TOKEN_PATH_VAR = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
CONNECT_TIMEOUT_S = 5.0

# What a job sees of this machine's environment: caetune's own settings and the
# region. Credentials never travel: the nodes use their IAM instance profile.
PASSED_ENV_PREFIX = "CAETUNE_"
PASSED_ENV_NAMES = ("AWS_REGION", "AWS_DEFAULT_REGION")
# Kept out of the uploaded checkout: environments, history, outputs, anything secret.
WORKING_DIR_EXCLUDES = [
    ".venv",
    ".git",
    "runs",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ipynb_checkpoints",
    ".env",
    ".aws",
    "*.pem",
    "cluster.local.yaml",
]
# Sub-commands that make no sense inside a job (they drive jobs themselves).
CLUSTER_COMMANDS = ("submit", "status", "logs", "stop")

_TOKEN_SOURCES = f"{TOKEN_VAR}, {TOKEN_PATH_VAR} or {DEFAULT_TOKEN_FILE}"
_HINT_START = "start one with `ray up cluster.yaml` and reach it with `ray dashboard cluster.yaml`"


def resolve_address(
    address: str | None = None, *, environ: Mapping[str, str] = os.environ
) -> tuple[str, str]:
    """The dashboard URL to use and the name of where it came from (for error messages).

    Raises:
        InputError: The address is not ``http(s)://HOST[:PORT]`` (``HOST:PORT`` gets ``http://``).
    """
    field, value = "--address", address
    if value is None:
        set_vars = [(var, environ[var]) for var in ADDRESS_VARS if environ.get(var)]
        field, value = set_vars[0] if set_vars else ("--address", DEFAULT_ADDRESS)
    url = value.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path
        or not _valid_port(parts)
    ):
        raise InputError(
            field,
            f"the Ray dashboard's http://HOST:PORT (default {DEFAULT_ADDRESS}), not {value!r}",
        )
    return url, field


def _valid_port(parts) -> bool:
    try:
        return parts.port is None or parts.port > 0
    except ValueError:  # urllib's way of saying "not a port number"
        return False


def resolve_token(*, environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """The Ray auth token and where it was found, looked up the way Ray does.

    Returns ``(None, ...)`` when there is none: a cluster without token
    authentication needs none, and one with it will say so.

    Raises:
        InputError: ``RAY_AUTH_TOKEN_PATH`` names a file that is missing or empty
            (Ray treats this as an error too, rather than falling back).
    """
    if environ.get(TOKEN_VAR, "").strip():
        return environ[TOKEN_VAR].strip(), TOKEN_VAR
    if environ.get(TOKEN_PATH_VAR):
        path = Path(environ[TOKEN_PATH_VAR]).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            expected = f"a readable file holding the cluster's token ({path}: {err.strerror})"
            raise InputError(TOKEN_PATH_VAR, expected) from None
        if not token:
            raise InputError(
                TOKEN_PATH_VAR, f"a file holding the cluster's token ({path} is empty)"
            )
        return token, str(path)
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    path = home / DEFAULT_TOKEN_FILE.relative_to("~")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None, _TOKEN_SOURCES
    return (token, str(path)) if token else (None, _TOKEN_SOURCES)


def project_checkout() -> Path | None:
    """The caetune source checkout this package runs from, or ``None`` when installed
    from a wheel.
    """
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(
        r'(?m)^name\s*=\s*"caetune"', pyproject.read_text(encoding="utf-8")
    ):
        return root
    return None


def build_runtime_env(
    *,
    working_dir: Path | None = None,
    pip: list[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict:
    """The job's Ray runtime environment.

    Args:
        working_dir: A caetune checkout to upload and run from (without
            :data:`WORKING_DIR_EXCLUDES`); ``None`` runs the caetune installed
            on the cluster (``cluster.yaml`` installs the checkout it was
            started from).
        pip: Extra requirements to install for the job, e.g. ``["caetune==0.1.0"]``.
        environ: Where ``CAETUNE_*`` and ``AWS_REGION``/``AWS_DEFAULT_REGION`` come from.

    Raises:
        InputError: ``working_dir`` is not a folder.
    """
    env_vars = {
        k: v for k, v in environ.items() if k.startswith(PASSED_ENV_PREFIX) or k in PASSED_ENV_NAMES
    }
    env_vars["PYTHONUNBUFFERED"] = "1"  # logs reach `caetune logs --follow` as they are printed
    runtime_env: dict = {"env_vars": env_vars}
    if working_dir is not None:
        if not Path(working_dir).is_dir():
            raise InputError("--working-dir", f"a caetune checkout folder, not {working_dir}")
        runtime_env["working_dir"] = str(Path(working_dir).resolve())
        runtime_env["excludes"] = list(WORKING_DIR_EXCLUDES)
    if pip:
        runtime_env["pip"] = list(pip)
    return runtime_env


def exit_code(details: JobDetails) -> int:
    """A shell exit code for a finished job: 0 succeeded, the driver's own code (else 1) failed, 130
    stopped.
    """
    status = str(details.status.value if hasattr(details.status, "value") else details.status)
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 130
    code = getattr(details, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


@dataclass
class JobClient:
    """A checked connection to one cluster's Jobs API; build it with :func:`connect`."""

    address: str
    client: JobSubmissionClient

    def submit(self, args: list[str], *, runtime_env: dict, metadata: dict | None = None) -> str:
        """Starts ``python -m caetune.cli ARGS...`` as a job on the cluster; returns the job id."""
        import shlex

        entrypoint = shlex.join(["python", "-m", "caetune.cli", *args])
        return self.client.submit_job(
            entrypoint=entrypoint, runtime_env=runtime_env, metadata=metadata or {}
        )

    def details(self, job_id: str) -> JobDetails:
        """Raises InputError when the cluster has no job ``job_id``."""
        try:
            return self.client.get_job_info(job_id)
        except RuntimeError as err:
            if "status code 404" in str(err):
                expected = (
                    f"no job {job_id!r} on the cluster at {self.address} (see `caetune status`)"
                )
                raise InputError("JOB", expected) from None
            raise

    def jobs(self) -> list[JobDetails]:
        """All jobs the cluster knows, oldest first."""
        return sorted(self.client.list_jobs(), key=lambda job: job.start_time or 0)

    def logs(self, job_id: str) -> str:
        self.details(job_id)
        return self.client.get_job_logs(job_id)

    def follow(self, job_id: str, write: Callable[[str], object]) -> JobDetails:
        """Streams the job's logs to ``write`` until it ends; returns its final details."""
        import asyncio

        self.details(job_id)

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        asyncio.run(tail())
        return self.wait(job_id, timeout=30.0)

    def stop(self, job_id: str, *, timeout: float = 60.0) -> JobDetails:
        """Asks the job to stop (SIGTERM, then SIGKILL) and waits up to ``timeout`` seconds."""
        self.details(job_id)
        self.client.stop_job(job_id)
        return self.wait(job_id, timeout=timeout)

    def wait(self, job_id: str, *, timeout: float) -> JobDetails:
        """The job's details once it is finished, or as they are after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            details = self.details(job_id)
            if details.status.is_terminal() or time.monotonic() > deadline:
                return details
            time.sleep(0.5)


def connect(
    address: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    timeout: float = CONNECT_TIMEOUT_S,
) -> JobClient:
    """A :class:`JobClient` for the cluster at ``address``, after checking it answers and takes the
    token.

    Raises:
        InputError: No Ray dashboard answers there within ``timeout`` seconds,
            the cluster wants a token and none was found, or it refuses the token.
    """
    url, field = resolve_address(address, environ=environ)
    token, token_source = resolve_token(environ=environ)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    server_ray = _check_dashboard(url, field, headers, token_source, timeout=timeout)

    import ray
    from ray.job_submission import JobSubmissionClient

    if server_ray.split(".")[:2] != ray.__version__.split(".")[:2]:
        logging.getLogger(__name__).warning(
            "the cluster runs Ray %s, this machine Ray %s", server_ray, ray.__version__
        )
    # Ray's SDK logs each packaging step and closed log stream at INFO; the CLI says what matters
    # itself.
    for name in ("job.sdk", "dashboard_sdk"):
        logging.getLogger(f"ray.dashboard.modules.{name}").setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.packaging").setLevel(logging.WARNING)
    return JobClient(address=url, client=JobSubmissionClient(url, headers=headers))


def _check_dashboard(
    url: str, field: str, headers: dict, token_source: str, *, timeout: float
) -> str:
    """The cluster's Ray version, from ``/api/version``; raises InputError for each way
    this fails.
    """
    import requests

    try:
        response = requests.get(
            f"{url}/api/version", headers=headers, timeout=(timeout, 2 * timeout)
        )
    except requests.exceptions.RequestException as err:
        reason = "timed out" if isinstance(err, requests.exceptions.Timeout) else _short_reason(err)
        raise InputError(
            field, f"no Ray cluster answers at {url} ({reason}); {_HINT_START}"
        ) from None
    if response.status_code == 401:
        raise InputError(
            "token",
            f"the cluster at {url} requires a Ray auth token and none was found in "
            f"{_TOKEN_SOURCES}",
        )
    if response.status_code == 403:
        raise InputError(
            "token",
            f"the cluster at {url} refused the token from {token_source}: use the one it was "
            "started with",
        )
    try:
        response.raise_for_status()
        return str(response.json()["ray_version"])
    except (requests.exceptions.HTTPError, ValueError, KeyError, TypeError):
        raise InputError(
            field, f"{url} is not a Ray dashboard (HTTP {response.status_code} on /api/version)"
        ) from None


def _short_reason(err: Exception) -> str:
    text = str(err)
    for needle, reason in (
        ("refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("No route", "no route to host"),
    ):
        if needle in text:
            return reason
    return type(err).__name__
