"""SIGKILL a running ``caetune search`` (its whole process group, Ray included), then resume it.

The search runs as the user runs it, in a subprocess with its own local Ray.
Once a trial has finished and the next one has a checkpoint, the process
group is killed; ``caetune search --resume`` must then finish the study with
exactly ``--num-samples`` trials, leave finished trials untouched (their
``metrics.json`` byte for byte) and continue the cut-off trial from its
checkpoint (its history up to the checkpoint is the one trained before the
kill, timings included). Runs on a local folder and on S3 (moto).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caetune._storage import read_bytes
from tests._helpers import (
    DONE_STATES,
    FINISHED,
    fault_search,
    finished_files,
    results,
    safe_study,
    study_trials,
    trial_metrics,
    wait_until,
)
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path):
    """Where the killed search lives: a local folder, or a fresh bucket on moto."""
    if request.param == "local":
        return str(tmp_path / "runs")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_then_resume_runs_each_trial_once(storage_url, tmp_path):
    num_samples = 4
    # 600 images, as the trial fault tests wait for the same moment (a checkpointed trial with two
    # epochs to go): two epochs leave the kill time enough.
    search = fault_search(
        tmp_path, storage_url, seed=3, num_samples=num_samples, subset=600, epochs=(4, 5)
    )
    run, db = search.run, search.db
    search.kill_at(lambda proc, log: _wait_for_finished_and_checkpointed(proc, db, log))

    table = results(run)
    before = finished_files(run, table)
    assert before, table
    # The cut-off trial's last checkpoint (a path relative to the run folder), what it had trained.
    [cut] = [
        t for t in study_trials(db, writer_dead=True) if t["state"] == "RUNNING" and t["checkpoint"]
    ]
    number, checkpoint = cut["number"], cut["checkpoint"]
    trained = json.loads(read_bytes(run, f"{checkpoint}/metrics.json"))["history"]
    assert trained, "a checkpoint holds at least one epoch"

    search.resume()

    table = results(run)
    assert sorted(table["trial_id"]) == [f"t{i:04d}" for i in range(num_samples)], table
    assert set(table["status"]) <= set(FINISHED), table[["trial_id", "status", "error"]]
    # Finished trials were not run again: their files are exactly as before the kill.
    for tid, metrics in before.items():
        assert trial_metrics(run, tid) == metrics, f"{tid} was re-run after the resume"
    # The cut-off trial went on from its checkpoint instead of starting over.
    final = json.loads(trial_metrics(run, f"t{number:04d}"))
    assert final["history"][: len(trained)] == trained
    assert len(final["history"]) == final["epochs_run"] >= len(trained)

    states = [t["state"] for t in study_trials(db)]
    assert len(states) == num_samples and "RUNNING" not in states, states
    if run.is_s3:
        # The study on S3 is the final one too (a fresh machine would resume from it).
        copy = tmp_path / "from-s3.db"
        copy.write_bytes(read_bytes(run, "study.db"))
        assert [t["state"] for t in study_trials(copy)] == states


def _wait_for_finished_and_checkpointed(proc, db: Path, log: Path) -> None:
    """Until a trial has finished and a running one has a checkpoint and two epochs to go.

    Two epochs to go keep the running trial running for the moment the kill takes.
    """

    def ready() -> bool:
        trials = safe_study(db)
        cut = [
            t
            for t in trials
            if t["state"] == "RUNNING" and t["checkpoint"] and t["epochs"] <= t["n_epochs"] - 2
        ]
        # The study hears of a trial's end last, after its files and results.csv are written.
        return bool(cut) and any(t["state"] in DONE_STATES for t in trials)

    wait_until(proc, log, ready, "finished trial and checkpointed running trial", poll_s=0.1)
