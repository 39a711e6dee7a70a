"""The run lease across machines (:mod:`caetune.search._lease`), on moto's S3 and on PostgreSQL.

The unit tests drive :class:`RunLease` directly against both stores: a live
lease refuses a second driver naming its owner, an unrenewed one expires
after its TTL, a dead pid on the owner's own host frees it at once,
``break_lease`` takes a live one (whose owner then finds it lost), and of
drivers racing for it exactly one wins. The end-to-end test runs two real
``caetune search`` processes on one S3 run from two "hosts" (other cache
folders, other ``CAETUNE_HOST``).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from caetune import InputError
from caetune.search._lease import (
    EXIT_LEASE_LOST,
    LEASE_FILE,
    TTL_ENV,
    RdbLeaseStore,
    RunLease,
    S3LeaseStore,
    lease_host,
    lease_ttl,
)
from tests._helpers import (
    RUN_TIMEOUT_S,
    FaultSearch,
    fault_search,
    kill_group,
    processes_of,
    results,
    search_command,
    search_env,
    start_search,
    started_ids,
    stop,
    wait_until,
)
from tests.postgres import pg_database, pg_server  # noqa: F401  (fixtures)
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

RUN = "s3://bucket/runs/exp"


@pytest.fixture(params=["s3", "postgres"])
def make_store(request):
    """A factory of stores of one lease (each call: a new client, as another driver has)."""
    made = []
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")

        def make():
            made.append(S3LeaseStore(bucket, f"runs/exp/{LEASE_FILE}"))
            return made[-1]
    else:
        database = request.getfixturevalue("pg_database")

        def make():
            made.append(RdbLeaseStore(database.url, "exp", where="postgresql://***@db"))
            return made[-1]

    yield make
    for store in made:
        store.close()


def lease(make_store, host: str, *, ttl_s: float = 30.0, **kwargs) -> RunLease:
    lost = kwargs.pop("lost", None)
    return RunLease(
        [make_store()],
        url=RUN,
        ttl_s=ttl_s,
        host=host,
        on_lost=(lambda: lost.append(True)) if lost is not None else None,
        **kwargs,
    )


def refusal(make_store, host: str = "host-b", **kwargs) -> str:
    with pytest.raises(InputError) as err:
        lease(make_store, host, **kwargs).__enter__()
    return str(err.value)


def test_a_live_lease_refuses_another_driver_naming_its_owner(make_store):
    first = lease(make_store, "host-a")
    with first:
        message = refusal(make_store)
        assert message.startswith(f"--name: run {RUN} is in use by process ")
        assert f"process {first.record['pid']} on host-a (since " in message
        assert "--break-lease" in message and len(message.splitlines()) == 1
    # Let go at the end: the next driver takes it.
    with lease(make_store, "host-b"):
        pass
    assert make_store().read()[0] is None


def test_the_heartbeat_keeps_a_lease_and_an_unrenewed_one_expires(make_store):
    lost: list = []
    first = lease(make_store, "host-a", ttl_s=1.5, lost=lost)
    with first:
        time.sleep(2.0)  # over a TTL: the heartbeat renewed it meanwhile
        assert first.beats >= 3
        assert re.search(r"renewed [01] s ago", refusal(make_store))
        first._stop.set()  # the driver hangs (or its machine is gone): no more renewals
        first._thread.join()
        time.sleep(2.6)  # the TTL, and S3's whole seconds
        with lease(make_store, "host-b"):
            assert not first.renew() and lost == [True]  # it learns it lost the run, once
    assert not first.renew() and lost == [True]


def test_a_dead_pid_on_the_owners_own_host_frees_the_lease_at_once(make_store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    store = make_store()
    record = {"token": "old", "host": lease_host(), "pid": int(dead.stdout), "ttl_s": 600}
    assert store.create(record) is not None
    with lease(make_store, lease_host()):
        pass
    # The same pid on another host is not this machine's to judge: refused until the TTL.
    store.create(dict(record, host="host-a"))
    assert "on host-a" in refusal(make_store)


def test_break_lease_takes_a_live_lease_and_its_owner_stops(make_store):
    lost: list = []
    stream = _Lines()
    with lease(make_store, "host-a", ttl_s=1.5, lost=lost):
        with lease(make_store, "host-b", break_lease=True, stream=stream) as second:
            assert [line for line in stream.lines if "broke the lease of process" in line]
            time.sleep(1.5)  # the first driver's next heartbeat finds it taken
            assert lost == [True]
            assert make_store().read()[0]["token"] == second.record["token"]


def test_of_drivers_racing_for_a_lease_exactly_one_wins(make_store):
    for round_ in range(6):
        leases = [lease(make_store, f"host-{i}") for i in range(3)]
        barrier, outcome = threading.Barrier(len(leases)), {}
        threads = [
            threading.Thread(target=_take, args=(held, barrier, outcome, index))
            for index, held in enumerate(leases)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [i for i, result in outcome.items() if result == "won"]
        assert len(winners) == 1, (round_, outcome)
        assert all(f"on host-{winners[0]} " in r for r in outcome.values() if r != "won")
        leases[winners[0]].__exit__(None, None, None)


def _take(held: RunLease, barrier: threading.Barrier, outcome: dict, index: int) -> None:
    barrier.wait()  # every driver asks in the same moment
    try:
        held.__enter__()
        outcome[index] = "won"
    except InputError as err:
        outcome[index] = str(err)


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "inf", "nan"])
def test_a_bad_ttl_is_one_line_naming_the_variable(raw, monkeypatch):
    monkeypatch.setenv(TTL_ENV, raw)
    with pytest.raises(InputError, match=f"^{TTL_ENV}: a number of seconds > 0, got"):
        lease_ttl()
    monkeypatch.setenv(TTL_ENV, "2.5")
    assert lease_ttl() == 2.5


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(line for line in text.splitlines() if line.strip())

    def flush(self) -> None:
        pass


# -- two real drivers on one S3 run ----------------------------------------------------


def refused_search(flags: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    """``caetune search`` that must be refused: exit 2 and one line on stderr (returned with it)."""
    done = subprocess.run(
        search_command(*flags), env=env, cwd=cwd, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stderr[-3000:]}"
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr[-3000:]
    return done


def host_env(search: FaultSearch, host: str) -> dict[str, str]:
    """The search's environment as on the machine ``host``: its own cache, its own host name."""
    env = search_env(search.cwd / host, search.env)
    env.update(CAETUNE_HOST=host, CAETUNE_LEASE_TTL_S="3")
    return env


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_second_host_is_refused_then_breaks_the_lease_and_the_first_stops(s3_bucket, tmp_path):
    """Host A searches; host B is refused naming A, then takes the run with ``--break-lease``:
    A exits at its next heartbeat, before writing again, and B finishes it, each trial once.

    A's trial workers are frozen (SIGSTOP) once its first trial starts, so A is
    mid-search, its driver renewing its lease, however slowly B starts."""
    url = f"s3://{s3_bucket}/runs"
    search = fault_search(tmp_path, url, seed=4, num_samples=3, subset=300, epochs=(2, 2))
    search.env = host_env(search, "host-a")
    log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    first = search.start(log)
    family: list = []
    try:
        wait_until(first, log, lambda: bool(started_ids(log.read_text())), "a first trial")
        family = processes_of(roots=(first.pid,))
        workers = [p for p in family if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::")]
        assert workers, [p.cmdline() for p in family]
        for worker in workers:
            worker.send_signal(signal.SIGSTOP)
        line = refused_search(search.flags, host_env(search, "host-b"), tmp_path).stderr
        assert f"is in use by process {first.pid} on host-a (since " in line, line
        assert first.poll() is None

        flags = ["--run-root", url, "--resume", "exp", "--break-lease"]
        second = start_search(flags, host_env(search, "host-b"), tmp_path, b_log)
        try:
            broke = f"broke the lease of process {first.pid} on host-a"
            wait_until(second, b_log, lambda: broke in b_log.read_text(), "the lease broken")
            assert first.wait(30) == EXIT_LEASE_LOST  # within a heartbeat (1 s)
            assert "lease lost: " in log.read_text()
            stop(family)  # A's Ray, frozen workers included
            assert second.wait(RUN_TIMEOUT_S) == 0, b_log.read_text()[-4000:]
        finally:
            kill_group(second)
    finally:
        kill_group(first)
        stop(family)
    table = results(search.run)
    assert sorted(table["trial_id"]) == ["t0000", "t0001", "t0002"], table
    assert S3LeaseStore(s3_bucket, f"runs/exp/{LEASE_FILE}").read()[0] is None  # let go
