"""A lean run folder (caetune.search._lean): optimizer state only where a later trial may continue.

The space has two configs (n_maps 2 or 3) and Ne 1..3; enqueued points run
one at a time, so which trial continues which is known in advance. Session
one: t0000 (A, Ne 1), t0001 (A, Ne 2, continues t0000), t0002 (B, Ne 3).
Only t0001 may be continued (A's longest, below Ne 3); t0002 ran the largest
Ne. Session two, resumed with a larger budget: t0003 (A, Ne 3) continues
t0001's kept state; t0004 (A, Ne 1) would have continued t0000, whose state
is gone, so it trains from scratch.
"""

from __future__ import annotations

import io

import optuna
import pandas as pd
import pytest
import torch
import yaml

from caetune._runs import RESULTS_CSV, STUDY_FILE, TRIAL_MODEL, TRIALS_DIR
from caetune._storage import exists, parse_storage, read_bytes, write_bytes
from caetune.analysis import write_report
from caetune.models import TrainConfig, Trainer, load_data, read_checkpoint
from caetune.search import SearchSettings, export_run, run_search
from caetune.search._lean import WEIGHTS_ONLY_ATTR, continuable_trials, make_lean
from caetune.search._results import RunFiles
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

FIXED = {
    "dataset": "mnist-10k",
    "subset": 120,
    "image_size": 12,
    "n_neurons": 8,
    "batch_size": 32,
}
SPACE = {
    "description": "two configs, Ne 1..3",
    "fixed": FIXED,
    "params": {"n_maps": [2, 3], "n_epochs": {"low": 1, "high": 3}},
    "start": [
        {"n_maps": 2, "n_epochs": 1},
        {"n_maps": 2, "n_epochs": 2},
        {"n_maps": 3, "n_epochs": 3},
    ],
}


def settings(folder, **changes) -> SearchSettings:
    base = {
        "space": str(folder / "space.yaml"),
        "run_root": str(folder / "runs"),
        "name": "lean",
        "num_samples": 3,
        "max_epochs": 3,
        "grace_period": 3,  # ASHA judges only at Ne 3: no trial stops early
        "max_concurrent": 1,
        "confirm_seeds": 0,
        "util_images": 16,
        "report": False,
    }
    return SearchSettings(**{**base, **changes})


def optimizer_state(run, trial_id: str) -> dict:
    return read_checkpoint(run / TRIALS_DIR / trial_id / TRIAL_MODEL)["optimizer"]["state"]


def load_study(run):
    return optuna.load_study(study_name="lean", storage=f"sqlite:///{run / STUDY_FILE}")


@pytest.fixture(scope="module")
def sessions(ray_local, tmp_path_factory):
    """The run after session one (a copy of its files) and after session two."""
    folder = tmp_path_factory.mktemp("lean")
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    run = folder / "runs" / "lean"
    first_err = io.StringIO()
    run_search(settings(folder), stream=first_err, out=io.StringIO())
    first = {
        "sizes": {p.parent.name: p.stat().st_size for p in run.glob(f"{TRIALS_DIR}/*/model.pt")},
        "state": {t: bool(optimizer_state(run, t)) for t in ("t0000", "t0001", "t0002")},
        "weights_only": load_study(run).user_attrs.get(WEIGHTS_ONLY_ATTR),
        "kept_model": read_checkpoint(run / TRIALS_DIR / "t0001" / TRIAL_MODEL),
        "err": first_err.getvalue(),
        "checkpoints": list(run.glob("tune/*/checkpoint_*")),
    }
    export = folder / "export"
    first["export"] = export_run(run, top=3, to=export)
    first["report"] = write_report(run, top=3)
    first["export_dir"] = export
    study = load_study(run)
    study.enqueue_trial({"n_maps": 2, "n_epochs": 3})
    study.enqueue_trial({"n_maps": 2, "n_epochs": 1})
    second_err = io.StringIO()
    run_search(settings(folder, num_samples=5, resume=True), stream=second_err, out=io.StringIO())
    return {"run": run, "first": first, "err": second_err.getvalue()}


def test_only_the_trial_a_later_one_may_continue_keeps_its_optimizer_state(sessions):
    first = sessions["first"]
    assert first["state"] == {"t0000": False, "t0001": True, "t0002": False}
    assert first["weights_only"] == ["t0000", "t0002"]
    assert "optimizer state of 2 trials" in first["err"] and "continue: t0001" in first["err"]
    # Same model: the stripped file is smaller by Adam's two moments per weight.
    weights = sum(v.numel() * v.element_size() for v in first["kept_model"]["model"].values())
    assert first["sizes"]["t0001"] - first["sizes"]["t0000"] >= 2 * weights
    assert not first["checkpoints"]


def test_report_and_export_read_the_lean_folder(sessions):
    first, run = sessions["first"], sessions["run"]
    assert (run / "report" / "index.html").is_file() and first["report"] is not None
    exported = sorted(p.name for p in first["export_dir"].iterdir() if p.is_dir())
    assert len(exported) == 3 and {e.rsplit("-", 1)[1] for e in exported} == {
        "t0000",
        "t0001",
        "t0002",
    }
    for entry in first["export_dir"].iterdir():
        if entry.is_dir():
            weights = torch.load(entry / "model.pt", weights_only=True)
            trial_id = entry.name.split("-", 1)[1]
            saved = read_checkpoint(run / TRIALS_DIR / trial_id / TRIAL_MODEL)["model"]
            assert all(torch.equal(weights[k], saved[k]) for k in saved), trial_id


def test_a_stripped_model_still_loads_and_evaluates_as_recorded(sessions):
    run = sessions["run"]
    rows = pd.read_csv(run / RESULTS_CSV).set_index("trial_id")
    config = TrainConfig.from_yaml(run / TRIALS_DIR / "t0002" / "config.yaml")
    trainer = Trainer(config, load_data(config))
    trainer.load_checkpoint(run / TRIALS_DIR / "t0002" / TRIAL_MODEL)
    assert trainer.epoch == rows.loc["t0002", "epochs_run"] == 3
    assert trainer.evaluate() == pytest.approx(rows.loc["t0002", "val_mse"], rel=1e-5)


def test_a_resume_with_a_larger_budget_continues_the_kept_state(sessions):
    run = sessions["run"]
    rows = pd.read_csv(run / RESULTS_CSV).set_index("trial_id")
    assert list(rows["status"]) == ["complete"] * 5
    assert rows["warm_start"].fillna("").tolist() == ["", "t0000", "", "t0001", ""]
    assert rows["epochs_trained"].tolist() == [1, 1, 3, 1, 1]
    assert rows["epochs_run"].tolist() == [1, 2, 3, 3, 1]
    # t0004 trained t0000's epoch again from scratch: the same model, bit for bit on CPU.
    assert rows.loc["t0004", "objective"] == rows.loc["t0000", "objective"]
    assert "t0003 start" in sessions["err"] and "continues t0001 after epoch 2" in sessions["err"]


def test_after_the_resume_the_continued_state_goes_too(sessions):
    run = sessions["run"]
    study = load_study(run)
    # A's longest trial ran Ne 3 now, B's too: no trial may be continued.
    assert continuable_trials(study, max_epochs=3) == set()
    assert study.user_attrs[WEIGHTS_ONLY_ATTR] == [f"t{n:04d}" for n in range(5)]
    assert not any(optimizer_state(run, f"t{n:04d}") for n in range(5))


def test_keep_all_state_keeps_every_optimizer_state(ray_local, tmp_path):
    # B at Ne 3 first: the one trial no later trial may continue.
    space = {**SPACE, "start": [SPACE["start"][2]]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    err = io.StringIO()
    run_search(
        settings(tmp_path, num_samples=1, keep_all_state=True), stream=err, out=io.StringIO()
    )
    run = tmp_path / "runs" / "lean"
    assert optimizer_state(run, "t0000")
    assert WEIGHTS_ONLY_ATTR not in load_study(run).user_attrs
    assert "lean run folder" not in err.getvalue()


# -- make_lean alone: a study and checkpoint files, locally and on S3 (no Ray) ----------------


def _checkpoint(epochs: int) -> bytes:
    weights = torch.arange(6.0)
    state = {
        "config": {"n_epochs": epochs},
        "model": {"w": weights},
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": weights, "exp_avg_sq": weights}},
            "param_groups": [{"lr": 1e-3, "params": [0]}],
        },
        "epoch": epochs,
        "history": [{"epoch": e} for e in range(1, epochs + 1)],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# (trial_id, n_maps, epochs_run, state): A's longest below Ne 3 is t0001, B ran Ne 3.
TRIALS = [
    ("t0000", 2, 1, "COMPLETE"),
    ("t0001", 2, 2, "PRUNED"),
    ("t0002", 3, 3, "COMPLETE"),
    ("t0003", 3, 0, "FAIL"),
]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_make_lean_rewrites_the_others_and_records_them_first(where, tmp_path, request):
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    root = f"s3://{request.getfixturevalue('s3_bucket')}/runs" if where == "s3" else str(tmp_path)
    files = RunFiles(parse_storage(root).child("run"))
    study = optuna.create_study()
    for trial_id, n_maps, epochs, state in TRIALS:
        study.add_trial(
            create_trial(
                params={"n_maps": n_maps},
                distributions={"n_maps": CategoricalDistribution([2, 3])},
                value=0.1 if state == "COMPLETE" else None,
                state=TrialState[state],
                user_attrs={"trial_id": trial_id, "epochs_run": epochs},
            )
        )
        if epochs:
            write_bytes(files.storage, f"trials/{trial_id}/model.pt", _checkpoint(epochs))
    write_bytes(files.storage, "tune/t0001-abc/checkpoint_000001/model.pt", b"x")
    write_bytes(files.storage, "tune/t0001-abc/result.json", b"{}")
    pushed = []

    outcome = make_lean(study, files, max_epochs=3, on_study_change=lambda: pushed.append(1))

    assert outcome.kept == ("t0001",) and outcome.stripped == ("t0000", "t0002")
    assert not outcome.skipped and outcome.checkpoints_deleted == 1 and pushed == [1]
    assert study.user_attrs[WEIGHTS_ONLY_ATTR] == ["t0000", "t0002"]
    for trial_id, _, epochs, _ in TRIALS[:3]:
        data = read_bytes(files.storage, f"trials/{trial_id}/model.pt")
        state = torch.load(io.BytesIO(data), weights_only=True)
        assert torch.equal(state["model"]["w"], torch.arange(6.0)) and state["epoch"] == epochs
        assert state["optimizer"]["param_groups"] == [{"lr": 1e-3, "params": [0]}]
        assert bool(state["optimizer"]["state"]) == (trial_id == "t0001"), trial_id
    assert not exists(files.storage, "tune/t0001-abc/checkpoint_000001")
    assert exists(files.storage, "tune/t0001-abc/result.json")
    # Again: nothing left to do, and the study is not written again.
    again = make_lean(study, files, max_epochs=3, on_study_change=lambda: pushed.append(1))
    assert again.stripped == () and pushed == [1]
