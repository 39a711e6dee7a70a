"""Damaged checkpoints, in-process: how a trial restores past them, and what the recorder keeps.

Real checkpoints of a real Trainer in Ray's layout (sibling folders
``checkpoint_NNNNNN`` of one trial folder), damaged the ways storage damages
files: cut short, overwritten with junk, replaced by a pickle that runs code.
The end-to-end cases (a real search, the worker killed after the damage) are
in ``test_trial_faults.py``.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import torch
from ray import tune

from caetune._storage import parse_storage
from caetune.models import TrainConfig, Trainer, load_dataset
from caetune.search._objective import Objective
from caetune.search._recorder import Recorder
from caetune.search._results import RunFiles
from caetune.search._trainable import MODEL_BYTES, _restore

TINY = dict(n_maps=2, n_neurons=8, batch_size=32, lr=3e-3, device="cpu", seed=5)
EPOCHS = 3


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist-10k", subset=120, seed=0)


def _fresh(data):
    return lambda: Trainer(TrainConfig(**TINY), data)


def _trial_folder(tmp_path: Path, data) -> list[Path]:
    """Three epochs' checkpoints (model.pt, metrics.json, as the trainable writes), oldest first."""
    trainer = _fresh(data)()
    folders = []
    for _ in range(EPOCHS):
        trainer.run_epoch()
        folder = tmp_path / "t0000-abc_00000" / f"checkpoint_{trainer.epoch - 1:06d}"
        folder.mkdir(parents=True)
        model = trainer.save_checkpoint(folder / "model.pt")
        metrics = {
            "epoch": trainer.epoch,
            "seconds": float(trainer.epoch),
            MODEL_BYTES: model.stat().st_size,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
        folders.append(folder)
    return folders


class _RunsCode:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _damage(folder: Path, how: str) -> None:
    model = folder / "model.pt"
    if how == "cut":
        with open(model, "r+b") as f:
            f.truncate(model.stat().st_size // 2)
    elif how == "junk":
        model.write_bytes(os.urandom(model.stat().st_size))
    elif how == "metrics":
        (folder / "metrics.json").write_text('{"epoch": 3, "sec')
    elif how == "code":
        payload = _RunsCode()
        payload.marker = folder / "ran"
        torch.save({"model": payload}, model)


def _ckpt(folder: Path):
    return tune.Checkpoint(str(folder))


@pytest.mark.parametrize("how", ["cut", "junk", "metrics", "code"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_older_one(tmp_path, data, how):
    folders = _trial_folder(tmp_path, data)
    _damage(folders[-1], how)

    trainer, before, note = _restore(_fresh(data), [_ckpt(folders[-1]), None])

    assert trainer.epoch == EPOCHS - 1 and [m.epoch for m in trainer.history] == [1, 2]
    assert before["epoch"] == EPOCHS - 1
    assert (
        note.startswith("t0000-abc_00000/checkpoint_000002 unreadable (")
        and note.count("unreadable") == 1
    )
    assert note.endswith("resumed from t0000-abc_00000/checkpoint_000001 (epoch 2)"), note
    assert "\n" not in note and len(note) < 300, note
    assert not (
        folders[-1] / "ran"
    ).exists()  # the safe reader refused the pickle without running it


def test_every_checkpoint_damaged_restarts_from_epoch_0(tmp_path, data):
    folders = _trial_folder(tmp_path, data)
    for folder, how in zip(folders, ["cut", "junk", "code"], strict=True):
        _damage(folder, how)
    untouched = _fresh(data)()

    trainer, before, note = _restore(_fresh(data), [_ckpt(folders[-1])])

    assert before is None and trainer.epoch == 0 and trainer.history == []
    # A fresh trainer: the same start as a trial that never ran (no half-loaded state).
    for a, b in zip(trainer.model.parameters(), untouched.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [n.split(" unreadable")[0] for n in note.split("; ")[:-1]] == [
        f"t0000-abc_00000/{f.name}" for f in reversed(folders)
    ], note
    assert note.endswith("; restarted from epoch 0"), note


def test_an_earlier_sessions_checkpoint_is_tried_after_this_sessions(tmp_path, data):
    """Ray's restore point first, then the earlier session's (``resume_from``), older siblings."""
    earlier = _trial_folder(tmp_path / "earlier", data)
    now = _trial_folder(tmp_path / "now", data)
    for folder in now:
        _damage(folder, "cut")
    _damage(earlier[-1], "junk")

    trainer, _, note = _restore(_fresh(data), [_ckpt(now[-1]), _ckpt(earlier[-1])])

    assert trainer.epoch == EPOCHS - 1
    assert note.count("unreadable") == EPOCHS + 1 and note.endswith(
        "checkpoint_000001 (epoch 2)"
    ), note


def test_nothing_damaged_says_nothing(tmp_path, data):
    folders = _trial_folder(tmp_path, data)
    trainer, before, note = _restore(_fresh(data), [None, _ckpt(folders[-1])])
    assert trainer.epoch == EPOCHS and before["epoch"] == EPOCHS and note is None
    trainer, before, note = _restore(_fresh(data), [None, None])
    assert trainer.epoch == 0 and before is None and note is None


@pytest.mark.parametrize("how", ["cut", "metrics", None])
def test_the_recorder_never_keeps_a_damaged_final_model(tmp_path, data, how):
    """The trial's last checkpoint damaged after the trial wrote it: no model.pt in trials/<id>/.

    (The trial runs again.)
    """
    folders = _trial_folder(tmp_path / "tune", data)
    if how:
        _damage(folders[-1], how)
    files = RunFiles(parse_storage(str(tmp_path)).child("run"))
    recorder = Recorder(
        study=None,
        objective=Objective("mse", 0.0),
        files=files,
        table=None,
        scheduler=None,
        searcher=None,
        total=1,
    )
    trial = types.SimpleNamespace(checkpoint=_ckpt(folders[-1]), config={"trial_id": "t0000"})

    metrics, damage = recorder._collect_metrics(trial)

    kept = tmp_path / "run" / "trials" / "t0000" / "model.pt"
    if how is None:
        assert damage is None and metrics["epoch"] == EPOCHS and kept.exists()
        Trainer(TrainConfig(**TINY), data).load_checkpoint(kept)
    else:
        assert not kept.exists(), "a damaged model.pt was kept as the trial's model"
        assert damage.startswith("final checkpoint t0000-abc_00000/checkpoint_000002 "), damage
