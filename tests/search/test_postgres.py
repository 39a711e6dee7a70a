"""A search whose Optuna study lives in a real PostgreSQL (a throw-away cluster: tests.postgres).

One search through the CLI, as on a cluster head: its study in PostgreSQL
with a password, its run folder local. While it runs, a second driver on
another "host" (its own run folder and cache, another ``CAETUNE_HOST``) asks
for the same study and is refused by the lease row in the study's database.
The first driver is then SIGKILLed (its Ray with it) and resumed: every
trial once, those finished before the kill untouched. The password is used
throughout and appears nowhere: not in the run folders, the caches, the
printed output or Ray's session logs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

import optuna
import pytest

from caetune import InputError
from caetune.search._lease_stores import LEASE_TABLE, RdbLeaseStore
from tests._helpers import (
    DONE_STATES,
    FINISHED,
    fault_search,
    finished_files,
    kill_group,
    results,
    run_search_cli,
    search_env,
    trial_metrics,
    wait_until,
)
from tests.postgres import pg_database, pg_server  # noqa: F401  (fixtures)
from tests.search.test_lease import refused_search

NUM_SAMPLES = 3


def files_holding(folder: Path, secret: str) -> list[str]:
    """Files under ``folder`` whose bytes hold ``secret``."""
    needle = secret.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_wrong_password_is_one_line_without_the_url_secret(pg_database):
    wrong = pg_database.server.url(pg_database.name, password="not-the-password")
    with pytest.raises(InputError) as err:
        RdbLeaseStore(wrong, "exp", where="postgresql+psycopg://***@db")
    message = str(err.value)
    assert message.startswith("--study-storage: cannot open postgresql+psycopg://***@db: ")
    assert "password authentication failed" in message and len(message.splitlines()) == 1
    assert "not-the-password" not in message and pg_database.password not in message


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_postgresql_study_refuses_a_second_driver_survives_sigkill_and_hides_its_password(
    pg_database, tmp_path
):
    url = pg_database.url
    search = fault_search(
        tmp_path, str(tmp_path / "runs"), seed=6, num_samples=NUM_SAMPLES, subset=300, epochs=(2, 2)
    )
    search.flags += ["--study-storage", url]
    ray_tmp = tempfile.mkdtemp(prefix="cpg", dir="/tmp")  # short: Ray's socket paths have a limit
    # A TTL longer than the second driver can take to start, however loaded the machine: frozen,
    # the first driver renews nothing, and its lease must still be live when the second asks.
    search.env.update(CAETUNE_HOST="host-a", RAY_TMPDIR=ray_tmp, CAETUNE_LEASE_TTL_S="600")
    log = tmp_path / "first.log"
    try:
        first = search.start(log)
        try:
            wait_until(first, log, lambda: _finished_lines(log.read_text()) > 0, "a finished trial")
            os.kill(first.pid, signal.SIGSTOP)  # frozen, lease and all: the second driver finds it
            other = search_env(tmp_path / "host-b")
            other.update(CAETUNE_HOST="host-b")
            flags = search.flags[:]
            flags[flags.index("--run-root") + 1] = str(tmp_path / "host-b" / "runs")
            refused = refused_search(flags, other, tmp_path)
        finally:
            kill_group(first)
        assert first.returncode == -signal.SIGKILL
        line = refused.stderr
        assert f"is in use by process {first.pid} on host-a (since " in line, line
        assert f"{LEASE_TABLE}" in line and "postgresql+psycopg://***@127.0.0.1:" in line, line

        study = optuna.load_study(study_name="exp", storage=url)
        done_before = {f"t{t.number:04d}" for t in study.trials if t.state.name in DONE_STATES}
        before = finished_files(search.run, results(search.run))
        assert done_before and done_before <= set(before), (done_before, before.keys())
        before = {tid: before[tid] for tid in done_before}

        # The same host resumes at once: the lease's pid is gone (no TTL to wait).
        flags = ["--run-root", search.storage_url, "--resume", "exp", "--study-storage", url]
        resumed = run_search_cli(flags, search.env, tmp_path)
        assert "resuming:" in resumed.stderr

        table = results(search.run)
        assert sorted(table["trial_id"]) == [f"t{i:04d}" for i in range(NUM_SAMPLES)], table
        assert set(table["status"]) <= set(FINISHED), table[["trial_id", "status", "error"]]
        for tid, metrics in before.items():
            assert trial_metrics(search.run, tid) == metrics, f"{tid} ran again after the kill"
        trials = optuna.load_study(study_name="exp", storage=url).trials
        assert [t.number for t in trials] == list(range(NUM_SAMPLES))
        assert {t.state.name for t in trials} <= set(DONE_STATES)
        assert RdbLeaseStore(url, "exp", where="db").read()[0] is None  # let go at the end

        secret = pg_database.password
        printed = log.read_text() + refused.stdout + refused.stderr
        printed += resumed.stdout + resumed.stderr
        assert "***@127.0.0.1" in printed and secret not in printed
        assert list(Path(ray_tmp).rglob("*.log")), "Ray wrote no session logs where expected"
        assert files_holding(tmp_path, secret) == []  # run folders, caches, space, logs
        assert files_holding(Path(ray_tmp), secret) == []  # Ray's session logs
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _finished_lines(text: str) -> int:
    """Progress lines of trials that ended (``  tNNNN complete ...``)."""
    return len(re.findall(rf"^\s+t\d{{4}} ({'|'.join(FINISHED)})\b", text, re.MULTILINE))
