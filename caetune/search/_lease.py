"""One driver per run across machines: a lease that the storage itself enforces.

The local run lock (:mod:`caetune.search._lock`) is an ``flock`` on a file
beside the local study; two machines never see each other's. A run whose
folder is on S3, or whose study is in a database server, is shared between
machines, so the driver also holds a lease there:

- S3 run root: the object ``RUN/.lease``, created with a conditional write
  (``If-None-Match: *``) and renewed or taken over with ``If-Match: ETag``,
  so of two writers exactly one succeeds;
- RDB study (PostgreSQL, MySQL ...): a row of the table ``caetune_run_leases``
  in the study's database, keyed by the study name, changed only by an
  ``UPDATE ... WHERE token = <the token read>`` (a compare-and-set).

A lease names its owner (host, pid, start time) and lives for a TTL: a
heartbeat thread renews it every third of the TTL while the search runs, and
the search lets it go at the end. A lease whose owner stopped renewing it
(a driver SIGKILLed, its machine gone) is free once the TTL has passed, or
at once on the owner's own host when its pid is gone;
``caetune search --resume NAME --break-lease`` takes a live one. Ages are
measured by the storage's clock (S3's ``Last-Modified`` against its ``Date``,
the database's ``now()``), so the machines' clocks need not agree. A driver
that finds its lease taken, or cannot renew it for most of the TTL, exits at
once (:data:`EXIT_LEASE_LOST`): each write after that could undo the new
owner's, and a run is resumable from any moment a driver dies.

Environment (read when a search starts):
    CAETUNE_LEASE_TTL_S: the TTL in seconds (default 120).
    CAETUNE_HOST: the host name a driver puts in its lease (default: the
        machine's), for hosts whose names are not unique.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from caetune._errors import InputError
from caetune.search._lease_stores import (
    RdbLeaseStore,
    S3LeaseStore,
    first_line,
)

LEASE_FILE = ".lease"
# Long enough to ride out the S3 outages caetune's storage retries through (about 90 s).
DEFAULT_TTL_S = 120.0
# A driver that could not renew its lease for this share of the TTL stops, before it expires.
FENCE = 0.75
EXIT_LEASE_LOST = 75  # sysexits' EX_TEMPFAIL: resume the run later
TTL_ENV = "CAETUNE_LEASE_TTL_S"
HOST_ENV = "CAETUNE_HOST"
# Lost races in a row before a driver gives up taking a lease (each: another driver wrote).
TAKE_ATTEMPTS = 5


class LeaseStore(Protocol):
    """Where one lease lives; every write is conditional on the version last read."""

    where: str  # what the lease guards, for messages

    def read(self) -> tuple[dict | None, str | None, float]:
        """The record, its version and its age in seconds (``None, None, 0`` when absent)."""
        ...

    def create(self, record: dict) -> str | None:
        """Writes ``record`` where none exists; its version, or ``None`` when one does."""
        ...

    def replace(self, record: dict, version: str) -> str | None:
        """Writes ``record`` over ``version``; the new version, or ``None`` when it changed."""
        ...

    def remove(self, version: str) -> None:
        """Deletes the record if it is still ``version``."""
        ...

    def close(self) -> None:
        """Lets go of connections."""
        ...


def lease_ttl() -> float:
    """The TTL from ``CAETUNE_LEASE_TTL_S``, else :data:`DEFAULT_TTL_S`.

    Raises:
        InputError: Not a positive number of seconds.
    """
    raw = os.environ.get(TTL_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        ttl = float("nan")
    if not ttl > 0 or ttl == float("inf"):
        raise InputError(TTL_ENV, f"a number of seconds > 0, got {raw!r}")
    return ttl


def lease_host() -> str:
    """The host name a driver gives in its lease: ``CAETUNE_HOST``, else the machine's."""
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


def describe_owner(record: dict) -> str:
    """``process PID on HOST (since TIME)``: who holds a lease, for a one-line message."""
    since = record.get("started")
    return f"process {record.get('pid')} on {record.get('host')}" + (
        f" (since {since})" if since else ""
    )


class RunLease:
    """Holds the leases of one run (one per shared store) while a search runs.

    Used as a context manager around the search: entering takes every lease
    or none, leaving lets them go. Taking a live lease is refused with
    :class:`InputError` naming its owner, unless ``break_lease``.

    Args:
        stores: Where the leases live (none: a purely local run, nothing to do).
        url: The run, for messages.
        break_lease: Take a lease even from a live owner.
        ttl_s: Seconds a lease lives without renewal.
        host: This driver's host name.
        stream: Where to say that a lease was broken or lost.
        on_lost: Called (from the heartbeat thread) when another driver took
            a lease, or it went unrenewed for :data:`FENCE` of the TTL;
            default: this process exits at once with :data:`EXIT_LEASE_LOST`.
    """

    def __init__(
        self,
        stores: list[LeaseStore],
        *,
        url: str,
        break_lease: bool = False,
        ttl_s: float = DEFAULT_TTL_S,
        host: str | None = None,
        stream: TextIO | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        if not ttl_s > 0:
            raise InputError(TTL_ENV, f"a number of seconds > 0, got {ttl_s!r}")
        self.stores = list(stores)
        self.url = url
        self.break_lease = break_lease
        self.ttl_s = float(ttl_s)
        self.stream = stream
        self.on_lost = on_lost or _exit_now
        self.beats = 0
        self.record: dict[str, Any] = {
            "token": uuid.uuid4().hex,
            "host": host or lease_host(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ttl_s": self.ttl_s,
            "beat": 0,
        }
        self.lost = False
        self._renewed = time.monotonic()
        self._versions: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLease:
        self._renewed = time.monotonic()
        try:
            for index, store in enumerate(self.stores):
                self._versions[index] = self._take(store)
        except BaseException:
            self._release()
            raise
        if self.stores:
            self._thread = threading.Thread(
                target=self._heartbeat, name="caetune-lease", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._release()

    def renew(self) -> bool:
        """Renews every lease now; False (and ``on_lost`` called once) when one was taken."""
        if self.lost:
            return False
        self.beats += 1
        self.record["beat"] = self.beats
        for index, store in enumerate(self.stores):
            version = self._versions.get(index)
            if version is None:
                continue
            new = store.replace(self.record, version)
            if new is None:  # changed under us: ours still (a renewal whose reply was lost)?
                current, current_version, _ = store.read()
                if current is not None and current.get("token") == self.record["token"]:
                    new = store.replace(self.record, str(current_version))
            if new is None:
                self._versions.pop(index)
                current, _, _ = store.read()
                owner = describe_owner(current) if current else "nobody"
                self._lose(f"lease lost: {store.where} is now held by {owner}")
                return False
            self._versions[index] = new
        return True

    def _take(self, store: LeaseStore) -> str:
        for _ in range(TAKE_ATTEMPTS):
            current, version, age = store.read()
            if current is None or version is None:
                made = store.create(self.record)
                if made is not None:
                    return made
                continue  # another driver created it meanwhile: look at it
            if _live(current, age) and not self.break_lease:
                raise InputError("--name", self._refusal(store, current, age))
            taken = store.replace(self.record, version)
            if taken is not None:
                if _live(current, age):
                    self._say(f"broke the lease of {describe_owner(current)} on {store.where}")
                return taken
        current, _, age = store.read()
        raise InputError("--name", self._refusal(store, current or {"pid": "?", "host": "?"}, age))

    def _refusal(self, store: LeaseStore, owner: dict, age: float) -> str:
        left = max(0.0, float(owner.get("ttl_s", DEFAULT_TTL_S)) - age)
        return (
            f"run {self.url} is in use by {describe_owner(owner)}, whose lease on {store.where} "
            f"was renewed {age:.0f} s ago; wait for it or stop it (if it is dead: "
            f"--break-lease, or its lease expires in {left:.0f} s)"
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            attempt = time.monotonic()
            try:
                if not self.renew():
                    return
                self._renewed = attempt  # the store stamped it after this moment
            except Exception as err:  # the store is unreachable: try again next beat
                silent = time.monotonic() - self._renewed
                if silent >= FENCE * self.ttl_s:
                    # Another driver may take an expired lease: stop before it can.
                    self._lose(f"lease not renewed for {silent:.0f} s ({first_line(err)})")
                    return
                self._say(f"warning: could not renew the run's lease ({first_line(err)})")

    def _lose(self, why: str) -> None:
        self._say(f"{why}; stopping this search")
        if not self.lost:
            self.lost = True
            self.on_lost()

    def _release(self) -> None:
        for index, version in list(self._versions.items()):
            try:
                self.stores[index].remove(version)
            except Exception as err:  # it expires by itself
                self._say(f"warning: could not release the run's lease ({first_line(err)})")
        self._versions = {}
        for store in self.stores:
            store.close()

    def _say(self, line: str) -> None:
        if self.stream is not None:
            print(f"  {line}", file=self.stream, flush=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (the lease's and the run lock's test)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def _live(record: dict, age: float) -> bool:
    """Whether ``record``'s owner may still be running: renewed within its TTL, its pid alive."""
    if age >= float(record.get("ttl_s", DEFAULT_TTL_S)):
        return False
    pid = record.get("pid")
    if record.get("host") == lease_host() and isinstance(pid, int) and pid != os.getpid():
        return _alive(pid)
    return True


def _exit_now() -> None:
    """Ends this driver at once, as SIGKILL would: a run is resumable from any such moment.

    Not a graceful stop: that would still write results and push the study,
    over what the lease's new owner writes.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_LEASE_LOST)


# -- a run's leases --------------------------------------------------------------------


def run_lease(
    run, *, name: str, study_url: str | None, break_lease: bool, stream: TextIO
) -> RunLease:
    """The leases a search on ``run`` holds: its S3 run root, its RDB study (not SQLite).

    Args:
        run: The run's :class:`~caetune._storage.Storage` (``RUN_ROOT/NAME``).
        name: The study name.
        study_url: ``--study-storage`` as given (``None``: SQLite beside the run).
        break_lease: ``--break-lease``.
        stream: Progress lines.

    Raises:
        InputError: A bad ``CAETUNE_LEASE_TTL_S``.
    """
    ttl = lease_ttl()
    stores: list[LeaseStore] = []
    if run.is_s3:
        key = f"{run.prefix}/{LEASE_FILE}" if run.prefix else LEASE_FILE
        stores.append(S3LeaseStore(str(run.bucket), key))
    if study_url is not None and _is_server_url(study_url):
        from caetune.search._searcher import _redact

        stores.append(RdbLeaseStore(study_url, name, where=_redact(study_url)))
    return RunLease(stores, url=run.url, break_lease=break_lease, ttl_s=ttl, stream=stream)


def _is_server_url(url: str) -> bool:
    """Whether an RDB URL names a database server (not SQLite, a file the local lock guards)."""
    from sqlalchemy.engine import make_url

    return make_url(url).get_dialect().name != "sqlite"
