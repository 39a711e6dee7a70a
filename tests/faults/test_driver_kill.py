"""SIGKILL the search driver (its whole process group, Ray included) at three moments, then resume.

``tests/search/test_resume_kill.py`` kills once a trial has finished and the
next has a checkpoint. These are the other moments:

- ``first_trial``: the first trial has started and nothing has finished
  (no results row, trial folder or study record of a finished trial yet).
- ``between_trials``: one trial at a time; killed the moment the first
  trial's end line is printed, which the recorder does after its last step
  (files, results.csv, study, checkpoint cleanup), before the next trial
  has trained an epoch.
- ``while_recording``: the recorder is caught between its first write of a
  finished trial (``trials/<id>/model.pt`` appears) and telling the study:
  the test polls for that file every 2 ms, freezes the driver with SIGSTOP
  at once, checks the study still says RUNNING for that trial (else the
  window was missed: SIGCONT and wait for the next trial), then SIGKILLs
  the group. The trial's files and results.csv may then be half-way
  through being written.

After each, ``caetune search --resume`` must finish with every trial once:
results.csv == study == num-samples, every finished trial's files load and
agree with its row, trials finished before the kill are neither started nor
written again, and a trial caught mid-record is not trained again.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from caetune._storage import read_bytes
from tests._helpers import (
    DONE_STATES,
    FINISHED,
    RUN_TIMEOUT_S,
    check_integrity,
    fault_search,
    finished_files,
    results,
    safe_study,
    started_ids,
    study_trials,
    wait_until,
)

NUM_SAMPLES = 3


def _first_trial(proc, log, db, run) -> dict:
    def ready() -> bool:
        trials = safe_study(db)
        return (
            bool(started_ids(log.read_text()))
            and any(t["state"] == "RUNNING" for t in trials)
            and not any(t["state"] in DONE_STATES for t in trials)
        )

    wait_until(proc, log, ready, "a first trial running")
    return {}


def _between_trials(proc, log, db, run) -> dict:
    def ready() -> bool:
        return any(
            line.split()[1:2] in (["complete"], ["pruned"], ["failed"])
            for line in log.read_text().splitlines()
        )

    wait_until(proc, log, ready, "a first trial's end line", poll_s=0.01)
    return {}


def _while_recording(proc, log, db, run) -> dict:
    """Freezes the driver inside the recorder's record of a trial; returns it and its checkpoint."""
    trials_dir = run.local_path / "trials"
    for number in range(NUM_SAMPLES):
        model = trials_dir / f"t{number:04d}" / "model.pt"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not model.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the search ended or stalled before t{number:04d} was recorded:\n"
                    f"{log.read_text()[-4000:]}"
                )
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGSTOP)
        [trial] = [t for t in safe_study(db) if t["number"] == number] or [None]
        if trial is not None and trial["state"] == "RUNNING" and trial["checkpoint"]:
            history = json.loads(read_bytes(run, f"{trial['checkpoint']}/metrics.json"))["history"]
            return {"caught": f"t{number:04d}", "history": history}
        os.kill(proc.pid, signal.SIGCONT)  # the record was already complete: try the next trial
    pytest.fail("the recorder was never caught between its first write and the study's record")


MOMENTS = {
    "first_trial": _first_trial,
    "between_trials": _between_trials,
    "while_recording": _while_recording,
}


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_driver_sigkill_then_resume_runs_each_trial_once(moment, tmp_path):
    search = fault_search(
        tmp_path, str(tmp_path / "runs"), seed=5, num_samples=NUM_SAMPLES, subset=300, epochs=(2, 3)
    )
    run, db = search.run, search.db
    caught = search.kill_at(lambda proc, log: MOMENTS[moment](proc, log, db, run))

    study = study_trials(db, writer_dead=True)
    done_in_study = {f"t{t['number']:04d}" for t in study if t["state"] in DONE_STATES}
    table = results(run) if (run.local_path / "results.csv").exists() else None
    before = finished_files(run, table) if table is not None else {}
    # What the study calls finished is final; results.csv may also hold the trial caught mid-record.
    assert done_in_study <= set(before), (done_in_study, before.keys())
    before = {tid: before[tid] for tid in done_in_study}
    if moment == "first_trial":
        assert not done_in_study, study
    elif moment == "between_trials":
        assert done_in_study, f"nothing finished before the kill between trials: {study}"

    done = search.resume()

    check_integrity(run, db, num_samples=NUM_SAMPLES, before=before)
    rerun = set(started_ids(done.stderr)) & set(before)
    assert not rerun, (
        f"trials finished before the kill started again: {sorted(rerun)}\n{done.stderr[-3000:]}"
    )
    if "caught" in caught:
        # Its final checkpoint is reported again, not trained again.
        final = json.loads(read_bytes(run, f"trials/{caught['caught']}/metrics.json"))
        assert final["history"] == caught["history"], (
            "the trial caught mid-record was trained again"
        )
        assert results(run).set_index("trial_id").loc[caught["caught"], "status"] in FINISHED
