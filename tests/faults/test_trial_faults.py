"""Faults of one trial while the search goes on, and a second ``caetune search`` on the same run.

The trial's worker is killed by the OS, its checkpoints cut short, or its
final checkpoint damaged after it ended.

The trial's worker is found the way an operator would: the process of the
search's process group whose title is Ray's for the function trainable
(``ray::ImplicitFunc``); with one trial at a time there is one.

The final checkpoint is damaged from inside the search's driver, by a Ray Tune
callback the test hands to ``run_search`` (in-process, on the shared local
Ray): Tune calls ``on_checkpoint`` once Ray has stored the trial's last
checkpoint, and only after that ``on_trial_complete``, where the recorder
reads it; the callback cuts the stored ``model.pt`` in half (or breaks its
``metrics.json``) in between, every time, at exactly that moment.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from ray.tune import Callback

from caetune._storage import parse_storage
from caetune.search import run_search
from caetune.search._recorder import MAX_RERUNS
from tests._helpers import (
    FINISHED,
    RUN_TIMEOUT_S,
    check_integrity,
    fault_search,
    fault_settings,
    kill_group,
    local_study,
    results,
    run_search_cli,
    safe_study,
    search_command,
    search_env,
    wait_until,
    write_space,
)

NUM_SAMPLES = 2


def _setup(tmp_path, *, num_samples: int = NUM_SAMPLES, epochs=(4, 5), subset: int = 600):
    return fault_search(
        tmp_path,
        str(tmp_path / "runs"),
        seed=7,
        num_samples=num_samples,
        subset=subset,
        epochs=epochs,
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


def _worker_once(proc: subprocess.Popen, log: Path, ready, what: str) -> psutil.Process:
    """The trial's worker, once ``ready()`` holds and the worker is there."""
    wait_until(proc, log, lambda: ready() and _trial_worker(proc) is not None, what)
    return _trial_worker(proc)


def _checkpointed_running(db, *, epochs_left: int = 2, done: int = 1):
    """The running trial once ``done`` epochs are checkpointed and ``epochs_left`` are to train."""
    for t in safe_study(db):
        if (
            t["state"] == "RUNNING"
            and t["checkpoint"]
            and done <= t["epochs"] <= t["n_epochs"] - epochs_left
        ):
            return t
    return None


def _study_attr(db, number: int, key: str):
    """A user attribute of the study's trial ``number`` (plain SQL, read-only)."""
    import sqlite3

    with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True, timeout=10) as conn:
        found = conn.execute(
            "select a.value_json from trial_user_attributes a"
            " join trials t on a.trial_id = t.trial_id "
            "where t.number = ? and a.key = ?",
            (number, key),
        ).fetchone()
    return json.loads(found[0]) if found else None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_worker_killed_by_the_os_is_restarted_from_its_checkpoint(tmp_path):
    search = _setup(tmp_path)
    run, db = search.run, search.db
    log = tmp_path / "search.log"
    with search.running(log) as proc:
        worker = _worker_once(
            proc, log, lambda: _checkpointed_running(db) is not None, "a checkpointed running trial"
        )
        victim = _checkpointed_running(db)
        worker.send_signal(signal.SIGKILL)
        text = search.finish(proc, log)

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
    """The worker frozen, its latest (or every) checkpoint's model cut, then killed: Ray restores.

    With the latest damaged the trial goes on from the older one Ray kept
    beside it; with every one damaged it starts again from epoch 0. Either way
    it completes, each epoch once in its history, and says what happened.
    """
    search = _setup(tmp_path)
    run, db = search.run, search.db
    log = tmp_path / "search.log"
    with search.running(log) as proc:
        # Two epochs done (two checkpoints kept) and at least two to go.
        worker = _worker_once(
            proc,
            log,
            lambda: _checkpointed_running(db, done=2) is not None,
            "a running trial with two checkpoints",
        )
        worker.send_signal(signal.SIGSTOP)
        time.sleep(1.0)  # a checkpoint the worker had handed over reaches the study
        victim = _checkpointed_running(db, epochs_left=1, done=2)
        latest = run.local_path / victim["checkpoint"]
        # Ray's layout: a trial's checkpoints are sibling folders checkpoint_NNNNNN in its folder.
        kept = sorted(p for p in latest.parent.iterdir() if re.fullmatch(r"checkpoint_\d+", p.name))
        assert latest in kept and len(kept) >= 2, kept
        cut = [latest] if damaged == "latest" else kept
        for folder in cut:
            model = folder / "model.pt"
            with open(model, "r+b") as f:
                f.truncate(model.stat().st_size // 2)
        worker.send_signal(signal.SIGKILL)
        text = search.finish(proc, log)

    tid = f"t{victim['number']:04d}"
    table = results(run)
    row = table.set_index("trial_id").loc[tid]
    metrics = json.loads((run.local_path / "trials" / tid / "metrics.json").read_text())
    print(f"{damaged} checkpoint of {tid} damaged: {row['status']}; recovery: {row['recovery']}")
    assert f"{tid} restart" in text and f"{tid} recovered" in text, text[-3000:]
    assert row["status"] == "complete", row
    recovery = row["recovery"]
    assert metrics["recovery"] == recovery == _study_attr(db, victim["number"], "recovery"), (
        metrics,
        recovery,
    )
    for folder in cut:
        assert f"{folder.parent.name}/{folder.name} unreadable (" in recovery, recovery
    if damaged == "latest":
        older = kept[kept.index(latest) - 1]
        assert f"resumed from {older.parent.name}/{older.name} (epoch " in recovery, recovery
    else:
        assert recovery.endswith("restarted from epoch 0"), recovery
    # Each epoch once (a fallback continues, a restart starts the history anew), the last's model.
    assert [m["epoch"] for m in metrics["history"]] == list(range(1, int(row["n_epochs"]) + 1)), (
        metrics["history"]
    )
    # The other trials are unaffected, and nothing else reports a recovery.
    others = table[table["trial_id"] != tid]
    assert set(others["status"]) == {"complete"} and others["recovery"].isna().all(), others
    check_integrity(
        run, db, num_samples=NUM_SAMPLES
    )  # the trial's model.pt loads and gives its val_mse


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_search_on_the_same_run_is_refused(tmp_path):
    search = _setup(tmp_path, num_samples=3, epochs=(3, 4))
    run, db = search.run, search.db
    log = tmp_path / "first.log"
    with search.running(log) as proc:
        lock = run.local_path / ".lock"
        worker = _worker_once(proc, log, lock.exists, "the run's lock and a trial running")
        # The first search's trial is paused (not its driver, which holds the lock) while the second
        # starts its own Ray, so on a busy machine the first cannot end before the second looks.
        worker.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(
                search_command(*search.flags), env=search.env, cwd=tmp_path, capture_output=True,
                text=True, timeout=RUN_TIMEOUT_S,
            )  # fmt: skip
        finally:
            worker.send_signal(signal.SIGCONT)
        assert proc.poll() is None, (
            f"the first search ended before the second one looked:\n{second.stderr[-2000:]}"
        )
        text = search.finish(proc, log)

    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by process" in lines[0] and str(proc.pid) in lines[0], (
        second.stderr
    )
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
    flags = [
        "--space",
        str(space),
        "--run-root",
        storage_url,
        "--name",
        "bad",
        "--num-samples",
        "5",
        "--seed",
        "3",
    ]
    done = run_search_cli(flags, search_env(tmp_path), tmp_path)

    table = results(run).set_index("trial_id")
    print(table[["status", "error"]].to_string())
    for tid, reason in EXPECTED_FAILURES.items():
        assert table.loc[tid, "status"] == "failed", table.loc[tid]
        assert reason in table.loc[tid, "error"].lower(), table.loc[tid, "error"]
        assert f"{tid} failed" in done.stderr
    # The rest of the search is unaffected: the good start points (one config twice) complete.
    assert table.loc[["t0000", "t0004"], "status"].tolist() == ["complete", "complete"]
    check_integrity(run, db, num_samples=5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_searches_started_together_run_once(tmp_path):
    """Both start at one moment: one runs the search, the other refuses; nothing interleaves."""
    search = _setup(tmp_path, num_samples=3, epochs=(3, 4))
    run, db = search.run, search.db
    procs = [search.start(tmp_path / f"{n}.log") for n in "ab"]
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


class DamageFinalCheckpoint(Callback):
    """Damages ``trial_id``'s final checkpoint (up to ``times`` times) once stored, before read.

    Between Ray storing it and the recorder reading it.

    The recorder comes first in the search's callbacks, so it has noted the
    checkpoint (the study's ``checkpoint``) when this one damages it.
    ``damaged`` keeps each folder damaged and its ``metrics.json`` as written.
    """

    def __init__(self, trial_id: str, how: str, times: int = 1) -> None:
        self.trial_id, self.how, self.times = trial_id, how, times
        self.damaged: list[tuple[Path, dict]] = []

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        config = trial.config
        last = trial.last_result.get("epoch") == config["n_epochs"]
        if config["trial_id"] != self.trial_id or not last or len(self.damaged) >= self.times:
            return
        folder = Path(checkpoint.path)
        written = json.loads((folder / "metrics.json").read_text())
        if self.how == "model":
            model = folder / "model.pt"
            with open(model, "r+b") as f:
                f.truncate(model.stat().st_size // 2)
        else:
            (folder / "metrics.json").write_text(json.dumps(written)[:40])
        self.damaged.append((folder, written))


class InterruptAfterTrialEnd(Callback):
    """SIGUSR1 (Tune's stop signal, as Ctrl-C) once ``trial_id`` ended and the recorder saw it."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.config["trial_id"] == self.trial_id:
            os.kill(os.getpid(), signal.SIGUSR1)


def _final_search(tmp_path, callbacks: list):
    """Two 3-epoch trials, one at a time, no ASHA stop, here: outcome, progress, run, db."""
    chosen = fault_settings(
        write_space(tmp_path, epochs=(3, 3)), tmp_path / "runs", num_samples=NUM_SAMPLES, seed=7
    )
    progress = io.StringIO()
    outcome = run_search(chosen, stream=progress, out=io.StringIO(), callbacks=callbacks)
    run = parse_storage(str(tmp_path / "runs")).child("exp")
    return outcome, progress.getvalue(), run, run.local_path / "study.db"


def _tune_folders(run, tid: str) -> list[Path]:
    return sorted(
        p
        for p in (run.local_path / "tune").iterdir()
        if p.is_dir() and p.name.startswith(f"{tid}-")
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["model", "metrics"])
def test_a_final_checkpoint_damaged_after_the_trial_ended_is_run_again(ray_local, tmp_path, how):
    """The trial runs again from the older checkpoint, in the same session, to the same model."""
    damage = DamageFinalCheckpoint("t0000", how)
    outcome, text, run, db = _final_search(tmp_path, [damage])

    assert not outcome.interrupted, text[-3000:]
    ((folder, written),) = damage.damaged
    table = results(run)
    row = table.set_index("trial_id").loc["t0000"]
    metrics = json.loads((run.local_path / "trials" / "t0000" / "metrics.json").read_text())
    print(f"final checkpoint {how} damaged: {row['status']}; recovery: {row['recovery']}")
    assert row["status"] == "complete", row
    name = f"{folder.parent.name}/{folder.name}"
    recovery = row["recovery"]
    assert metrics["recovery"] == recovery == _study_attr(db, 0, "recovery"), (
        metrics["recovery"],
        recovery,
    )
    assert recovery.startswith(f"final checkpoint {name} "), recovery
    assert f": run again (1 of at most {MAX_RERUNS}); {name} unreadable (" in recovery, recovery
    epochs = int(row["n_epochs"])
    assert recovery.endswith(
        f"resumed from {folder.parent.name}/checkpoint_{epochs - 2:06d} (epoch {epochs - 1})"
    )
    assert "t0000 rerun" in text and "t0000 recovered" in text and "t0000 failed" not in text, text[
        -3000:
    ]
    assert _study_attr(db, 0, "reruns") == 1 and len(_tune_folders(run, "t0000")) == 2
    # Deterministic training: the model of the re-run is the damaged one, bit for bit.
    assert [m["epoch"] for m in metrics["history"]] == list(range(1, epochs + 1)), metrics[
        "history"
    ]
    assert [m["val_mse"] for m in metrics["history"]] == [m["val_mse"] for m in written["history"]]
    assert row["val_mse"] == written["val_mse"] and row["objective"] == written["objective"]
    other = table.set_index("trial_id").loc["t0001"]
    assert other["status"] == "complete" and other.isna()["recovery"], other
    check_integrity(
        run, db, num_samples=NUM_SAMPLES
    )  # t0000's model.pt loads and gives its val_mse
    assert not list((run.local_path / "tune").glob("*/checkpoint_*"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_final_checkpoint_damaged_every_time_fails_after_the_bound(ray_local, tmp_path):
    damage = DamageFinalCheckpoint("t0000", "model", times=MAX_RERUNS + 5)
    outcome, text, run, db = _final_search(tmp_path, [damage])

    assert not outcome.interrupted, text[-3000:]
    assert (
        len(damage.damaged) == MAX_RERUNS + 1
    )  # run once, then MAX_RERUNS times again; never more
    table = results(run).set_index("trial_id")
    row = table.loc["t0000"]
    print(f"final checkpoint damaged every time: {row['status']}; error: {row['error']}")
    print(f"  recovery: {row['recovery']}")
    assert row["status"] == "failed", row
    last = damage.damaged[-1][0]
    assert row["error"].startswith(f"final checkpoint {last.parent.name}/{last.name} has a "), row[
        "error"
    ]
    assert row["error"].endswith(f"; gave up after {MAX_RERUNS} re-runs; no model kept"), row[
        "error"
    ]
    assert (
        _study_attr(db, 0, "failed_reason") == row["error"]
        and _study_attr(db, 0, "reruns") == MAX_RERUNS
    )
    # Every run's damage is in its recovery, oldest first.
    notes = [f"final checkpoint {f.parent.name}/{f.name} has a " for f, _ in damage.damaged[:-1]]
    assert [row["recovery"].index(n) for n in notes] == sorted(
        row["recovery"].index(n) for n in notes
    ), row
    assert (
        text.count("t0000 rerun") == MAX_RERUNS and text.count("t0000 start") == MAX_RERUNS + 1
    ), text[-3000:]
    assert not (run.local_path / "trials" / "t0000" / "model.pt").exists()
    assert table.loc["t0001", "status"] == "complete"
    check_integrity(run, db, num_samples=NUM_SAMPLES)
    assert not list((run.local_path / "tune").glob("*/checkpoint_*"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_search_interrupted_before_the_rerun_resumes_it(ray_local, tmp_path):
    damage = DamageFinalCheckpoint("t0000", "model")
    first, _, run, db = _final_search(tmp_path, [damage, InterruptAfterTrialEnd("t0000")])

    assert first.interrupted
    ((folder, written),) = damage.damaged
    (trial,) = [t for t in safe_study(db) if t["number"] == 0]
    # Still running in the study, its damaged checkpoint kept for the resumed search.
    assert trial["state"] == "RUNNING" and _study_attr(db, 0, "reruns") == 1, trial
    assert trial["checkpoint"] and folder.is_dir(), trial
    assert _study_attr(db, 0, "recovery").startswith(
        f"final checkpoint {folder.parent.name}/{folder.name} has a "
    )

    second, text, run, db = _final_search(tmp_path, [])
    assert not second.interrupted, text[-3000:]
    row = results(run).set_index("trial_id").loc["t0000"]
    assert row["status"] == "complete", row
    assert row["recovery"].startswith(
        f"final checkpoint {folder.parent.name}/{folder.name} has a "
    ), row["recovery"]
    assert f"{folder.parent.name}/{folder.name} unreadable (" in row["recovery"], row["recovery"]
    assert row["val_mse"] == written["val_mse"]
    check_integrity(run, db, num_samples=NUM_SAMPLES)
