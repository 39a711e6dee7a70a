"""Faults of one trial while the search goes on: its worker killed by the OS, its checkpoints cut short,
and a second ``caetune search`` on the same run.

The trial's worker is found the way an operator would: the process of the
search's process group whose title is Ray's for the function trainable
(``ray::ImplicitFunc``); with one trial at a time there is one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import psutil
import pytest

from caetune._storage import parse_storage
from tests.faults._tools import (
    FINISHED,
    RUN_TIMEOUT_S,
    check_integrity,
    fault_search,
    kill_group,
    local_study,
    results,
    run_search_cli,
    safe_study,
    search_command,
    search_env,
    start_search,
    wait_until,
)

NUM_SAMPLES = 2


def _setup(tmp_path, *, num_samples: int = NUM_SAMPLES, epochs=(4, 5), subset: int = 600):
    return fault_search(
        tmp_path, str(tmp_path / "runs"), seed=7, num_samples=num_samples, subset=subset, epochs=epochs
    )


def _trial_worker(proc: subprocess.Popen) -> psutil.Process | None:
    """The Ray worker running the trial: in the search's session, titled ``ray::ImplicitFunc``."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(p.pid) == proc.pid and "ImplicitFunc" in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return found[0] if len(found) == 1 else None


def _checkpointed_running(db, *, epochs_left: int = 2, done: int = 1):
    """The running trial once it has ``done`` epochs checkpointed and ``epochs_left`` epochs still to train."""
    for t in safe_study(db):
        if t["state"] == "RUNNING" and t["checkpoint"] and done <= t["epochs"] <= t["n_epochs"] - epochs_left:
            return t
    return None


def _study_attr(db, number: int, key: str):
    """A user attribute of the study's trial ``number`` (plain SQL, read-only)."""
    import sqlite3

    with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=10) as conn:
        found = conn.execute(
            "select a.value_json from trial_user_attributes a join trials t on a.trial_id = t.trial_id "
            "where t.number = ? and a.key = ?",
            (number, key),
        ).fetchone()
    return json.loads(found[0]) if found else None


def _finish(proc, log) -> str:
    try:
        proc.wait(RUN_TIMEOUT_S)
    finally:
        kill_group(proc)
    text = log.read_text()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{text[-4000:]}"
    return text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_worker_killed_by_the_os_is_restarted_from_its_checkpoint(tmp_path):
    flags, env, run, db = _setup(tmp_path)
    log = tmp_path / "search.log"
    proc = start_search(flags, env, tmp_path, log)
    try:
        wait_until(proc, log, lambda: _checkpointed_running(db) is not None and _trial_worker(proc) is not None,
                   "a checkpointed running trial")  # fmt: skip
        victim = _checkpointed_running(db)
        _trial_worker(proc).send_signal(signal.SIGKILL)
        text = _finish(proc, log)
    finally:
        kill_group(proc)

    tid = f"t{victim['number']:04d}"
    assert f"{tid} restart" in text, text[-3000:]
    row = results(run).set_index("trial_id").loc[tid]
    assert row["status"] == "complete", row
    history = json.loads((run.local_path / "trials" / tid / "metrics.json").read_text())["history"]
    # Continued from its checkpoint: one entry per epoch, none trained twice.
    assert [m["epoch"] for m in history] == list(range(1, int(row["n_epochs"]) + 1)), history
    check_integrity(run, db, num_samples=NUM_SAMPLES)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("damaged", ["latest", "every"])
def test_a_damaged_checkpoint_is_passed_over_with_the_reason(tmp_path, damaged):
    """The worker is frozen, its latest (or every) checkpoint's model cut in half, then killed: Ray must restore.

    With the latest damaged the trial goes on from the older one Ray kept
    beside it; with every one damaged it starts again from epoch 0. Either way
    it completes, each epoch once in its history, and says what happened.
    """
    flags, env, run, db = _setup(tmp_path)
    log = tmp_path / "search.log"
    proc = start_search(flags, env, tmp_path, log)
    try:
        # Two epochs done (two checkpoints kept) and at least two to go.
        wait_until(proc, log, lambda: _checkpointed_running(db, done=2) is not None and _trial_worker(proc) is not None,
                   "a running trial with two checkpoints")  # fmt: skip
        worker = _trial_worker(proc)
        worker.send_signal(signal.SIGSTOP)
        time.sleep(1.0)  # a checkpoint the worker had handed over reaches the study
        victim = _checkpointed_running(db, epochs_left=1, done=2)
        latest = run.local_path / victim["checkpoint"]
        # Ray's layout: the trial's checkpoints are sibling folders checkpoint_NNNNNN of its trial folder.
        kept = sorted(p for p in latest.parent.iterdir() if re.fullmatch(r"checkpoint_\d+", p.name))
        assert latest in kept and len(kept) >= 2, kept
        cut = [latest] if damaged == "latest" else kept
        for folder in cut:
            model = folder / "model.pt"
            with open(model, "r+b") as f:
                f.truncate(model.stat().st_size // 2)
        worker.send_signal(signal.SIGKILL)
        text = _finish(proc, log)
    finally:
        kill_group(proc)

    tid = f"t{victim['number']:04d}"
    table = results(run)
    row = table.set_index("trial_id").loc[tid]
    metrics = json.loads((run.local_path / "trials" / tid / "metrics.json").read_text())
    print(f"{damaged} checkpoint of {tid} damaged: {row['status']}; recovery: {row['recovery']}")
    assert f"{tid} restart" in text and f"{tid} recovered" in text, text[-3000:]
    assert row["status"] == "complete", row
    recovery = row["recovery"]
    assert metrics["recovery"] == recovery == _study_attr(db, victim["number"], "recovery"), (metrics, recovery)
    for folder in cut:
        assert f"{folder.parent.name}/{folder.name} unreadable (" in recovery, recovery
    if damaged == "latest":
        older = kept[kept.index(latest) - 1]
        assert f"resumed from {older.parent.name}/{older.name} (epoch " in recovery, recovery
    else:
        assert recovery.endswith("restarted from epoch 0"), recovery
    # Each epoch once (a fallback continues, a restart starts the history again), the model the last epoch's.
    assert [m["epoch"] for m in metrics["history"]] == list(range(1, int(row["n_epochs"]) + 1)), metrics["history"]
    # The other trials are unaffected, and nothing else reports a recovery.
    others = table[table["trial_id"] != tid]
    assert set(others["status"]) == {"complete"} and others["recovery"].isna().all(), others
    check_integrity(run, db, num_samples=NUM_SAMPLES)  # the trial's model.pt loads and gives its val_mse


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_search_on_the_same_run_is_refused(tmp_path):
    flags, env, run, db = _setup(tmp_path, num_samples=3, epochs=(3, 4))
    log = tmp_path / "first.log"
    proc = start_search(flags, env, tmp_path, log)
    try:
        wait_until(proc, log, lambda: (run.local_path / ".lock").exists() and _trial_worker(proc) is not None,
                   "the run's lock and a trial running")  # fmt: skip
        # The first search's trial is paused (not its driver, which holds the lock) while the second
        # starts its own Ray, so on a busy machine the first cannot end before the second looks.
        worker = _trial_worker(proc)
        worker.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(search_command(*flags), env=env, cwd=tmp_path, capture_output=True, text=True,
                                    timeout=RUN_TIMEOUT_S)  # fmt: skip
        finally:
            worker.send_signal(signal.SIGCONT)
        assert proc.poll() is None, f"the first search ended before the second one looked:\n{second.stderr[-2000:]}"
        text = _finish(proc, log)
    finally:
        kill_group(proc)

    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by process" in lines[0] and str(proc.pid) in lines[0], second.stderr
    assert "start" not in second.stdout + second.stderr
    assert set(results(run)["status"]) <= set(FINISHED) and "interrupted" not in text
    check_integrity(run, db, num_samples=3)


BAD_TRIALS_SPACE = """\
description: good trials beside ones that raise, diverge to NaN, and exceed the memory cap
fixed:
  dataset: mnist-10k
  subset: 300
  image_size: 12
  n_epochs: 2
params:
  n_neurons: [8, 200000000000]
  lr: [0.001, 1.0e+30]
  model: [model1, model2]
start:
  - {n_neurons: 8, lr: 0.001, model: model1}
  - {n_neurons: 8, lr: 0.001, model: model2}
  - {n_neurons: 8, lr: 1.0e+30, model: model1}
  - {n_neurons: 200000000000, lr: 0.001, model: model1}
  - {n_neurons: 8, lr: 0.001, model: model1}
"""
# What each start point's failure must say: a config the images cannot take, NaN, the memory cap.
EXPECTED_FAILURES = {"t0001": "too small", "t0002": "diverged", "t0003": "memory"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trials_that_raise_diverge_or_exceed_memory_fail_with_the_reason(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text(BAD_TRIALS_SPACE)
    storage_url = str(tmp_path / "runs")
    storage = parse_storage(storage_url)
    run, db = storage.child("bad"), local_study(storage, "bad", tmp_path)
    flags = ["--space", str(space), "--storage", storage_url, "--name", "bad", "--num-samples", "5", "--seed", "3"]
    done = run_search_cli(flags, search_env(tmp_path), tmp_path)

    table = results(run).set_index("trial_id")
    print(table[["status", "error"]].to_string())
    for tid, reason in EXPECTED_FAILURES.items():
        assert table.loc[tid, "status"] == "failed", table.loc[tid]
        assert reason in table.loc[tid, "error"].lower(), table.loc[tid, "error"]
        assert f"{tid} failed" in done.stderr
    # The rest of the search is unaffected: the good start points complete (the same config twice, each once).
    assert table.loc[["t0000", "t0004"], "status"].tolist() == ["complete", "complete"]
    check_integrity(run, db, num_samples=5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_searches_started_together_run_once(tmp_path):
    """Both start at the same moment: one runs the search, the other refuses, nothing interleaves."""
    flags, env, run, db = _setup(tmp_path, num_samples=3, epochs=(3, 4))
    procs = [start_search(flags, env, tmp_path, tmp_path / f"{n}.log") for n in "ab"]
    try:
        for proc in procs:
            proc.wait(RUN_TIMEOUT_S)
    finally:
        for proc in procs:
            kill_group(proc)
    logs = [(tmp_path / f"{n}.log").read_text() for n in "ab"]
    assert sorted(p.returncode for p in procs) == [0, 2], logs
    refused = logs[[p.returncode for p in procs].index(2)]
    assert len(refused.strip().splitlines()) == 1 and "in use by process" in refused, refused
    check_integrity(run, db, num_samples=3)
