"""SIGKILL a running ``caetune search`` (its whole process group, Ray included), then resume it.

The search runs as the user runs it, in a subprocess with its own local Ray.
Once a trial has finished and the next one has a checkpoint, the process
group is killed; ``caetune search --resume`` must then finish the study with
exactly ``--num-samples`` trials, leave finished trials untouched (their
``metrics.json`` byte for byte) and continue the cut-off trial from its
checkpoint (its history up to the checkpoint is the one trained before the
kill, timings included). Runs on a local folder and on S3 (moto).

The helpers at the top are shared with the other search tests of this folder.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caetune._storage import Storage, parse_storage, read_bytes
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

FINISHED = ("complete", "pruned", "failed")
RUN_TIMEOUT_S = 240

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


def write_space(folder: Path, *, subset: int = 300, epochs: tuple[int, int] = (2, 3)) -> Path:
    """A tiny search space file in ``folder``."""
    path = folder / "tiny.yaml"
    path.write_text(TINY_SPACE.format(subset=subset, low_epochs=epochs[0], high_epochs=epochs[1]))
    return path


def search_command(*flags: str) -> list[str]:
    """``caetune search`` with the given flags, quiet and quick (no confirmation, no report)."""
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


def results(run: Storage):
    """The run's results.csv as a DataFrame (read through the storage: local or S3)."""
    import pandas as pd

    return pd.read_csv(io.BytesIO(read_bytes(run, "results.csv")))


def trial_metrics(run: Storage, trial_id: str) -> bytes:
    return read_bytes(run, f"trials/{trial_id}/metrics.json")


def study_trials(db: Path) -> list[dict]:
    """Every trial of an Optuna SQLite file: ``number``, ``state``, ``checkpoint``, ``epochs`` done, ``n_epochs``.

    Plain SQL on Optuna's long-stable schema, read-only: safe while the search
    writes, with no Optuna storage (and its schema checks) per poll. ``epochs``
    counts the intermediate values (one per epoch).
    """
    uri = db.resolve().as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as conn:
        rows = conn.execute(
            "select t.number, t.state, "
            " (select value_json from trial_user_attributes a where a.trial_id = t.trial_id and a.key = 'checkpoint'),"
            " (select count(*) from trial_intermediate_values v where v.trial_id = t.trial_id),"
            " (select param_value from trial_params p where p.trial_id = t.trial_id and p.param_name = 'n_epochs') "
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


def local_study(storage: Storage, name: str, tmp_path: Path) -> Path:
    """The study file a search driver with :func:`search_env` writes: in the run folder, or its S3 cache."""
    from caetune._study import StudySync

    return StudySync(storage, name, cache_dir=tmp_path / "cache" / "caetune").local_path


def fault_search(
    tmp_path: Path,
    storage_url: str,
    *,
    seed: int,
    num_samples: int,
    subset: int,
    epochs: tuple[int, int],
    base_env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str], Storage, Path]:
    """The search the fault tests hurt: run ``exp`` of a tiny space, one trial at a time, no ASHA stop.

    Returns:
        The ``caetune search`` flags, its environment (:func:`search_env`), the
        run folder and the local study file.
    """
    space = write_space(tmp_path, subset=subset, epochs=epochs)
    storage = parse_storage(storage_url)
    flags = [
        "--space", str(space), "--storage", storage_url, "--name", "exp", "--num-samples", str(num_samples),
        "--max-concurrent", "1", "--grace-period", "10", "--seed", str(seed),
    ]  # fmt: skip
    return (
        flags,
        search_env(tmp_path, base_env),
        storage.child("exp"),
        local_study(storage, "exp", tmp_path),
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (Ray's raylet, GCS and workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


# -- the test ------------------------------------------------------------------------


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
    flags, env, run, db = fault_search(
        tmp_path, storage_url, seed=3, num_samples=num_samples, subset=1500, epochs=(4, 5)
    )

    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            search_command(*flags),
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_finished_and_checkpointed(proc, db, log)
    finally:
        kill_group(proc)
    assert proc.returncode == -signal.SIGKILL

    table = results(run)
    finished = table[table["status"].isin(FINISHED)]["trial_id"].tolist()
    assert finished, table
    before = {tid: trial_metrics(run, tid) for tid in finished}
    # The cut-off trial's last checkpoint (a path relative to the run folder) and what it had trained.
    [cut] = [t for t in study_trials(db) if t["state"] == "RUNNING" and t["checkpoint"]]
    number, checkpoint = cut["number"], cut["checkpoint"]
    trained = json.loads(read_bytes(run, f"{checkpoint}/metrics.json"))["history"]
    assert trained, "a checkpoint holds at least one epoch"

    done = run_search_cli(["--storage", storage_url, "--resume", "exp"], env, tmp_path)
    assert "resuming:" in done.stderr

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
    """Polls until a trial has finished and a running one has a checkpoint and two epochs to go.

    Two epochs to go keep the running trial running for the moment the kill takes.
    """
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"the search ended (exit {proc.returncode}) before it could be killed:\n{log.read_text()[-4000:]}"
            )
        try:
            trials = study_trials(db)
        except sqlite3.Error:  # not created yet, or mid-write
            trials = []
        cut = [
            t
            for t in trials
            if t["state"] == "RUNNING" and t["checkpoint"] and t["epochs"] <= t["n_epochs"] - 2
        ]
        # The study hears of a trial's end last, after its files and results.csv are written.
        if cut and any(t["state"] in ("COMPLETE", "PRUNED", "FAIL") for t in trials):
            return
        time.sleep(0.1)
    pytest.fail(
        f"no finished trial and checkpointed running trial within {RUN_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
    )
