"""A tiny search as the fault tests run it: the CLI in a process group, watched, killed, resumed.

The search runs as the user runs it, ``python -m caetune.cli search`` with its
own local Ray, in a process group of its own so that a SIGKILL of the group
takes Ray with it. Its study is read with plain SQL while it runs.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from caetune._runs import COMPLETE, FAILED, PRUNED, RESULTS_CSV, TRIAL_METRICS, TRIALS_DIR
from caetune._storage import Storage, parse_storage, read_bytes

FINISHED = (COMPLETE, PRUNED, FAILED)
# Optuna's state of a trial for each status of results.csv.
STUDY_STATE = {COMPLETE: "COMPLETE", PRUNED: "PRUNED", FAILED: "FAIL"}
DONE_STATES = tuple(STUDY_STATE.values())  # the study's states of a finished trial
RUN_TIMEOUT_S = 240
# What a search trial's settings are in every fault search: no confirmation or report (not what is
# tested, and slow), few utilisation images, and a grace period past every trial's Ne: no ASHA stop,
# so each trial runs all its epochs. The CLI flags of search_command and fault_search say the same.
QUICK = {"confirm_seeds": 0, "report": False, "util_images": 16}
NO_ASHA_STOP = 10

# Small enough for 2 shared CPUs, big enough that an epoch takes a visible moment.
TINY_SPACE = """\
description: a tiny space for fault tests
fixed:
  dataset: mnist-10k
  subset: {subset}
params:
  n_neurons: {{low: 8, high: 32, log: true}}
  n_maps: {{low: 2, high: 6}}
  n_epochs: {{low: {low_epochs}, high: {high_epochs}}}
  batch_size: [32]
"""
_START_LINE = re.compile(r"^\s+(t\d{4}) start\b", re.MULTILINE)
T = TypeVar("T")


def write_space(folder: Path, *, subset: int = 300, epochs: tuple[int, int] = (2, 3)) -> Path:
    """A tiny search space file in ``folder``."""
    path = folder / "tiny.yaml"
    path.write_text(TINY_SPACE.format(subset=subset, low_epochs=epochs[0], high_epochs=epochs[1]))
    return path


def search_command(*flags: str) -> list[str]:
    """``caetune search`` with the given flags, quiet and quick (see :data:`QUICK`)."""
    quick = ["--confirm-seeds", "0", "--no-report", "--util-images", "16"]
    return [sys.executable, "-m", "caetune.cli", "search", *flags, *quick]


def search_env(tmp_path: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a search subprocess: its own local Ray, a private cache folder."""
    env = {k: v for k, v in (base or os.environ).items() if k != "RAY_ADDRESS"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_search_cli(flags: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``caetune search`` to its end; fails the test with its output if it does not exit 0."""
    done = subprocess.run(
        search_command(*flags),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done


def start_search(flags: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """``caetune search`` in its own process group (so Ray dies with it), output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            search_command(*flags),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until(
    proc: subprocess.Popen, log: Path, ready: Callable[[], bool], what: str, *, poll_s: float = 0.05
) -> None:
    """Polls ``ready()`` until it holds; fails the test if the search ends or time is up first."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            pytest.fail(
                f"the search ended (exit {proc.returncode}) before {what}:\n"
                f"{log.read_text()[-4000:]}"
            )
        time.sleep(poll_s)
    pytest.fail(f"no {what} within {RUN_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (Ray's raylet, GCS and workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


def results(run: Storage):
    """The run's results.csv as a DataFrame (read through the storage: local or S3)."""
    import pandas as pd

    return pd.read_csv(io.BytesIO(read_bytes(run, RESULTS_CSV)))


def trial_metrics(run: Storage, trial_id: str) -> bytes:
    """A trial's ``metrics.json``, byte for byte."""
    return read_bytes(run, f"{TRIALS_DIR}/{trial_id}/{TRIAL_METRICS}")


def finished_files(run: Storage, table) -> dict[str, bytes]:
    """``metrics.json`` of every trial the results table says has finished, byte for byte."""
    done = table[table["status"].isin(FINISHED)]["trial_id"].tolist()
    return {tid: trial_metrics(run, tid) for tid in done}


def study_trials(db: Path, *, writer_dead: bool = False) -> list[dict]:
    """Every trial of an Optuna SQLite file: number, state, checkpoint, epochs done, n_epochs.

    Plain SQL on Optuna's long-stable schema, read-only: safe while the search
    writes, with no Optuna storage (and its schema checks) per poll. ``epochs``
    counts the intermediate values (one per epoch).

    Args:
        db: The study file.
        writer_dead: The search was killed: open it read-write, as the next
            driver does, so SQLite rolls back a transaction the kill cut short
            (a hot journal, which a read-only connection refuses to read).
    """
    uri = db.resolve().as_uri() + ("" if writer_dead else "?mode=ro")
    with sqlite3.connect(uri, uri=True, timeout=10) as conn:
        rows = conn.execute(
            "select t.number, t.state, "
            " (select value_json from trial_user_attributes a"
            "  where a.trial_id = t.trial_id and a.key = 'checkpoint'),"
            " (select count(*) from trial_intermediate_values v where v.trial_id = t.trial_id),"
            " (select param_value from trial_params p"
            "  where p.trial_id = t.trial_id and p.param_name = 'n_epochs') "
            "from trials t order by t.number"
        ).fetchall()
    return [
        {
            "number": n,
            "state": state,
            "checkpoint": json.loads(ckpt) if ckpt else None,
            "epochs": epochs,
            "n_epochs": ne,
        }
        for n, state, ckpt, epochs, ne in rows
    ]


def dropped_models(db: Path) -> set[str]:
    """The trials whose ``model.pt`` the lean run folder deleted, as the study records them."""
    from caetune.search._attrs import DROPPED_ATTR

    with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=10) as conn:
        rows = conn.execute(
            "select value_json from study_user_attributes where key = ?", (DROPPED_ATTR,)
        ).fetchall()
    return {trial_id for (value,) in rows for trial_id in json.loads(value)}


def safe_study(db: Path) -> list[dict]:
    """:func:`study_trials`, or ``[]`` while the file is missing or mid-write."""
    try:
        return study_trials(db)
    except sqlite3.Error:
        return []


def local_study(storage: Storage, name: str, tmp_path: Path) -> Path:
    """The study file a search with :func:`search_env` writes: in the run folder or its S3 cache."""
    from caetune._study import StudySync

    return StudySync(storage, name, cache_dir=tmp_path / "cache" / "caetune").local_path


def started_ids(log_text: str) -> list[str]:
    """Trial ids in the order their ``start`` progress lines appear (a restart repeats an id)."""
    return _START_LINE.findall(log_text)


@dataclass
class FaultSearch:
    """A search the fault tests hurt: its flags, environment, run folder and local study file."""

    flags: list[str]
    env: dict[str, str]
    cwd: Path
    storage_url: str
    run: Storage
    db: Path
    name: str = "exp"

    def start(self, log: Path) -> subprocess.Popen:
        """The search in its own process group (:func:`start_search`), output to ``log``."""
        return start_search(self.flags, self.env, self.cwd, log)

    @contextmanager
    def running(self, log: Path) -> Iterator[subprocess.Popen]:
        """The search started (:meth:`start`); its group SIGKILLed on the way out if it runs."""
        proc = self.start(log)
        try:
            yield proc
        finally:
            kill_group(proc)

    def finish(self, proc: subprocess.Popen, log: Path) -> str:
        """Waits for the search to end; asserts it exited 0 and returns its output."""
        try:
            proc.wait(RUN_TIMEOUT_S)
        finally:
            kill_group(proc)
        text = log.read_text()
        assert proc.returncode == 0, f"exit {proc.returncode}\n{text[-4000:]}"
        return text

    def kill_at(self, moment: Callable[[subprocess.Popen, Path], T]) -> T:
        """Starts the search, waits for ``moment(proc, log)``, then SIGKILLs its whole group.

        Returns:
            What ``moment`` returned (what it saw just before the kill).
        """
        log = self.cwd / "first.log"
        with self.running(log) as proc:
            seen = moment(proc, log)
        assert proc.returncode == -signal.SIGKILL
        return seen

    def resume(self) -> subprocess.CompletedProcess:
        """``caetune search --resume`` of the run, to its end; asserts it said it resumed."""
        done = run_search_cli(
            ["--run-root", self.storage_url, "--resume", self.name], self.env, self.cwd
        )
        assert "resuming:" in done.stderr
        return done


def fault_search(
    tmp_path: Path,
    storage_url: str,
    *,
    seed: int,
    num_samples: int,
    subset: int,
    epochs: tuple[int, int],
    base_env: dict[str, str] | None = None,
) -> FaultSearch:
    """Run ``exp`` of a tiny space through the CLI, one trial at a time, no ASHA stop."""
    space = write_space(tmp_path, subset=subset, epochs=epochs)
    storage = parse_storage(storage_url)
    flags = [
        "--space", str(space), "--run-root", storage_url, "--name", "exp",
        "--num-samples", str(num_samples), "--max-concurrent", "1",
        "--grace-period", str(NO_ASHA_STOP), "--seed", str(seed),
    ]  # fmt: skip
    return FaultSearch(
        flags=flags,
        env=search_env(tmp_path, base_env),
        cwd=tmp_path,
        storage_url=storage_url,
        run=storage.child("exp"),
        db=local_study(storage, "exp", tmp_path),
    )


def fault_settings(space: str | Path, run_root: str | Path, **fields: Any):
    """The same search in this process: :class:`SearchSettings` of run ``exp``, no ASHA stop.

    Args:
        space: The space file (:func:`write_space`).
        run_root: Where the run ``exp`` lives.
        **fields: The rest (``num_samples``, ``seed``, ``max_concurrent`` ...).
    """
    from caetune.search import SearchSettings

    chosen = {"name": "exp", "max_concurrent": 1, "grace_period": NO_ASHA_STOP, **QUICK, **fields}
    return SearchSettings(space=str(space), run_root=str(run_root), **chosen)
