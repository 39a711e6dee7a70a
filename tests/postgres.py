"""A real PostgreSQL for tests: a throw-away cluster on 127.0.0.1 with password auth.

Import the fixtures a test module needs::

    from tests.postgres import pg_database, pg_server  # noqa: F401

    def test_study(pg_database):  # a fresh database, its URL with user and password
        optuna.create_study(storage=pg_database.url, ...)

The cluster is made once per test process (``initdb`` into a temporary
folder, then ``pg_ctl start`` on a free port, listening on 127.0.0.1 only,
with scram-sha-256 passwords for every connection) and removed at its end.
PostgreSQL refuses to run as root, so as root (CI) the server runs as the
``postgres`` user that Debian's package creates. Binaries are looked up on
``PATH``, then in Debian's ``/usr/lib/postgresql/<version>/bin``. Where they
(or psycopg) are missing the tests skip, except in CI (``CI=true``), where
.ci/run installs them and a missing one fails.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN = "caetune_admin"
USER = "caetune"
START_TIMEOUT_S = 60


def _binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``, newest Debian version first after ``PATH``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(versions[-1]).parent if versions else None


def _unavailable(reason: str):
    """Skips where PostgreSQL is optional; fails in CI, which must have it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason} (.ci/run installs it)")
    pytest.skip(f"PostgreSQL tests need {reason}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running cluster: ``url(database)`` connects as :data:`USER` with :attr:`password`."""

    port: int
    password: str
    folder: Path
    bin_dir: Path
    run_as: str | None  # the user the server runs as (root's tests), else None

    def url(self, database: str, *, user: str = USER, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql+psycopg://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str, *, database: str = "postgres") -> None:
        """Runs ``sql`` as the cluster's superuser (autocommit: CREATE DATABASE needs it)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=ADMIN,
            password=self.password,
            dbname=database,
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by :data:`USER`; its name."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.admin(f'CREATE DATABASE "{name}" OWNER {USER}')
        return name

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def stop(self) -> None:
        _run(self.run_as, [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.folder / "data"),
                    "-m", "immediate", "-w"], check=False)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


def _run(user: str | None, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    """``argv`` run as ``user`` (root's tests), else as this process's user."""
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


def start_postgres() -> PostgresServer:
    """Makes and starts a cluster (skips or fails as :func:`_unavailable` says when it cannot)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg (pip install -e '.[test]')")
    bin_dir = _binaries()
    if bin_dir is None:
        _unavailable("PostgreSQL's initdb and pg_ctl (apt-get install postgresql)")
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("a 'postgres' user to run the server as (root cannot)")
        run_as = "postgres"
    folder = Path(tempfile.mkdtemp(prefix="caetune-pg-"))
    password = f"pg-{uuid.uuid4().hex[:16]}"
    (folder / "pwfile").write_text(password + "\n")
    if run_as is not None:
        account = pwd.getpwnam(run_as)
        os.chown(folder, account.pw_uid, account.pw_gid)
        os.chown(folder / "pwfile", account.pw_uid, account.pw_gid)
    data = folder / "data"
    _run(run_as, [str(bin_dir / "initdb"), "-D", str(data), "-U", ADMIN, "-E", "UTF8",
                  "--pwfile", str(folder / "pwfile"), "--auth", "scram-sha-256", "--no-sync",
                  "--no-instructions"])  # fmt: skip
    (folder / "pwfile").unlink()
    for _ in range(3):
        port = _free_port()  # freed again before the server binds it: retried if another took it
        server = PostgresServer(port, password, folder, bin_dir, run_as)
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        done = _run(run_as, [str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-w",
                             "-t", str(START_TIMEOUT_S), "-l", str(server.log), "-o", options],
                    check=False)  # fmt: skip
        if done.returncode == 0:
            server.admin(f"CREATE ROLE {USER} LOGIN PASSWORD '{password}'")
            return server
        time.sleep(0.2)
    log = server.log.read_text(errors="replace") if server.log.exists() else ""
    shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start:\n{done.stdout}{done.stderr}\n{log[-3000:]}")


_shared: PostgresServer | None = None


def shared_postgres() -> PostgresServer:
    """The one cluster of this test process, started on first use and removed at exit.

    One for all modules that import the fixtures (pytest would make one per module).
    """
    global _shared
    if _shared is None:
        _shared = start_postgres()
        atexit.register(_shared.stop)
    return _shared


@pytest.fixture(scope="session")
def pg_server() -> PostgresServer:
    """The session's PostgreSQL cluster (:func:`shared_postgres`)."""
    return shared_postgres()


@pytest.fixture
def pg_database(pg_server: PostgresServer):
    """A fresh database of the session's cluster: ``.url``, ``.name``, ``.server``."""
    name = pg_server.create_database()
    return Database(pg_server, name)


@dataclass
class Database:
    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)

    @property
    def password(self) -> str:
        return self.server.password
