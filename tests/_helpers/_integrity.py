"""Shared helpers of the fault tests: start a search, watch it, hurt it, then check what it left.

The search helpers (a tiny space, the CLI in a subprocess, the study read with
plain SQL) come from :mod:`tests.search.test_resume_kill`; this module adds
what every fault test ends with, :func:`check_integrity`: every finished
trial's result row (its ``layer3_*``/``layer4_*`` metrics included), files
and Optuna record are intact and agree, and no trial finished before the
fault ran again after it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from caetune._runs import TRIAL_CONFIG, TRIAL_METRICS, TRIAL_MODEL, TRIALS_DIR
from caetune._storage import Storage, read_bytes
from tests.search.test_resume_kill import (  # noqa: F401  (re-exported for the fault tests)
    FINISHED,
    RUN_TIMEOUT_S,
    fault_search,
    kill_group,
    local_study,
    results,
    run_search_cli,
    search_command,
    search_env,
    study_trials,
    trial_metrics,
    write_space,
)

# Optuna's state of a trial for each status of results.csv.
STUDY_STATE = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}
_START_LINE = re.compile(r"^\s+(t\d{4}) start\b", re.MULTILINE)


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
    """Polls ``ready()`` until it holds; fails the test if the search ends or the time runs out first."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            pytest.fail(
                f"the search ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-4000:]}"
            )
        time.sleep(poll_s)
    pytest.fail(f"no {what} within {RUN_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def safe_study(db: Path) -> list[dict]:
    """:func:`study_trials`, or ``[]`` while the file is missing or mid-write."""
    import sqlite3

    try:
        return study_trials(db)
    except sqlite3.Error:
        return []


def started_ids(log_text: str) -> list[str]:
    """Trial ids in the order their ``start`` progress lines appear (a restart repeats an id)."""
    return _START_LINE.findall(log_text)


def finished_files(run: Storage, table) -> dict[str, bytes]:
    """``metrics.json`` of every trial the results table says has finished, byte for byte."""
    done = table[table["status"].isin(FINISHED)]["trial_id"].tolist()
    return {tid: trial_metrics(run, tid) for tid in done}


def check_integrity(
    run: Storage, db: Path, *, num_samples: int, before: dict[str, bytes] | None = None
) -> None:
    """Asserts the run is whole: table == study == ``num_samples`` trials, files load, ``before`` untouched.

    Args:
        run: The run folder.
        db: The local Optuna SQLite file of the run.
        num_samples: Trials the search was asked for.
        before: ``metrics.json`` of trials finished before a fault; each must
            be byte-identical now (a re-run trial rewrites it: new timings).
    """
    from caetune.analysis import model_utilisation
    from caetune.models import TrainConfig, Trainer
    from caetune.models._data import load_data

    table = results(run)
    ids = table["trial_id"].tolist()
    assert len(ids) == len(set(ids)), f"a trial id appears twice in results.csv: {sorted(ids)}"
    assert sorted(ids) == [f"t{i:04d}" for i in range(num_samples)], ids
    assert set(table["status"]) <= set(FINISHED), table[["trial_id", "status", "error"]]

    study = study_trials(db)
    assert [t["number"] for t in study] == list(range(num_samples)), study
    rows = table.set_index("trial_id")
    for trial in study:
        status = rows.loc[f"t{trial['number']:04d}", "status"]
        assert trial["state"] == STUDY_STATE[status], (trial, status)
        assert trial["checkpoint"] is None, (
            f"finished trial {trial['number']} still points at a checkpoint"
        )

    data = None
    util_images = int(_yaml(read_bytes(run, "experiment.yaml"))["settings"]["util_images"])
    layer_columns = sorted(c for c in rows.columns if c.startswith(("layer3_", "layer4_")))
    for tid, row in rows.iterrows():
        folder = f"{TRIALS_DIR}/{tid}"
        metrics = json.loads(read_bytes(run, f"{folder}/{TRIAL_METRICS}"))
        assert metrics["trial_id"] == tid and metrics["status"] == row["status"]
        if row["status"] == "failed":
            assert isinstance(row["error"], str) and row["error"], f"{tid} failed without a reason"
            continue
        assert len(metrics["history"]) == metrics["epochs_run"] == row["epochs_run"]
        config = TrainConfig.from_dict(_yaml(read_bytes(run, f"{folder}/{TRIAL_CONFIG}")))
        data = data or load_data(config)  # every trial of a search trains on the same images
        trainer = Trainer(config, data)
        model = (
            run.local_path / folder / TRIAL_MODEL
            if run.local_path is not None
            else _local_copy(run, folder)
        )
        trainer.load_checkpoint(model)
        assert trainer.epoch == row["epochs_run"], tid
        assert trainer.evaluate() == pytest.approx(row["val_mse"], rel=1e-5), tid
        # Every layer metric of the results row is the one of the trial's final model.
        util = model_utilisation(trainer.model, trainer.x_val, n_images=util_images)
        layers = {k: v for k, v in util.items() if k.startswith(("layer3_", "layer4_"))}
        assert sorted(layers) == layer_columns, (tid, sorted(layers), layer_columns)
        expected = [layers[k] for k in layer_columns]
        assert row[layer_columns].astype(float).tolist() == pytest.approx(expected, rel=1e-5), tid

    for tid, metrics in (before or {}).items():
        assert trial_metrics(run, tid) == metrics, (
            f"{tid} finished before the fault and was written again after it"
        )


def _yaml(data: bytes) -> dict:
    import yaml

    return yaml.safe_load(data.decode("utf-8"))


def _local_copy(run: Storage, folder: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="caetune-fault-")) / TRIAL_MODEL
    path.write_bytes(read_bytes(run, f"{folder}/{TRIAL_MODEL}"))
    return path
