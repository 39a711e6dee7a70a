"""A lean run folder (caetune.search._lean): the best trials keep models, the promotable state.

Session one runs six configs (n_maps 2..7) for one epoch each, one at a
time, ASHA's rungs at epochs 1 and 3 (reduction factor 3). ASHA would
promote the best two of six at rung 1 to Ne 3: their trials keep their
whole ``model.pt``. Of the best three complete trials (what the report and
export read), the one not promoted keeps its weights alone; the other three
lose their ``model.pt``. Session two, resumed with a larger budget, runs the
a dropped config and the stripped one to Ne 2 (from scratch: no warm start
picks them), then the best config to Ne 3 (it continues the kept state).
"""

from __future__ import annotations

import io

import optuna
import pandas as pd
import pytest
import torch
import yaml

from caetune._runs import (
    MODEL_DROPPED,
    RESULTS_CSV,
    STUDY_FILE,
    TRIAL_MODEL,
    TRIAL_MODEL_DROPPED,
    TRIALS_DIR,
    rank_trials,
)
from caetune._storage import exists, parse_storage, read_bytes, write_bytes
from caetune.cli import main
from caetune.models import TrainConfig, Trainer, load_data, read_checkpoint
from caetune.search import SearchSettings, export_run, run_search
from caetune.search._attrs import DROPPED_ATTR, WEIGHTS_ONLY_ATTR
from caetune.search._lean import make_lean
from caetune.search._results import RunFiles
from caetune.search._warm import find_warm_start
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

FIXED = {
    "dataset": "mnist-10k",
    "subset": 120,
    "image_size": 12,
    "n_neurons": 8,
    "batch_size": 32,
}
MAPS = [2, 3, 4, 5, 6, 7]
SPACE = {
    "description": "six configs, Ne 1..3",
    "fixed": FIXED,
    "params": {"n_maps": MAPS, "n_epochs": {"low": 1, "high": 3}},
    "start": [{"n_maps": m, "n_epochs": 1} for m in MAPS],
}


def settings(folder, **changes) -> SearchSettings:
    base = {
        "space": str(folder / "space.yaml"),
        "run_root": str(folder / "runs"),
        "name": "lean",
        "num_samples": 6,
        "max_epochs": 3,
        "grace_period": 1,
        "reduction_factor": 3,  # rungs 1, 3: the best 6 / 3 = 2 at rung 1 would go on to Ne 3
        "max_concurrent": 1,
        "confirm_seeds": 0,
        "top_k": 1,  # the readers' default (caetune report's 3) still keeps three
        "util_images": 16,
        "report": False,
    }
    return SearchSettings(**{**base, **changes})


def model_file(run, trial_id: str):
    return run / TRIALS_DIR / trial_id / TRIAL_MODEL


def load_study(run):
    return optuna.load_study(study_name="lean", storage=f"sqlite:///{run / STUDY_FILE}")


def what_is_kept(run) -> dict[str, str]:
    """``trial_id -> whole | weights | dropped``, from the files."""
    kept = {}
    for folder in sorted((run / TRIALS_DIR).iterdir()):
        if not (folder / TRIAL_MODEL).is_file():
            assert (folder / TRIAL_MODEL_DROPPED).read_text().strip() == MODEL_DROPPED
            kept[folder.name] = "dropped"
        else:
            state = read_checkpoint(folder / TRIAL_MODEL)["optimizer"]["state"]
            kept[folder.name] = "whole" if state else "weights"
    return kept


def expected(run, *, promoted: set[str]) -> dict[str, str]:
    """The rule, restated: promoted trials whole, the best three others weights, the rest none."""
    best = {r.trial_id for r in rank_trials(pd.read_csv(run / RESULTS_CSV))[:3]}
    rows = pd.read_csv(run / RESULTS_CSV, dtype={"trial_id": str})
    return {
        t: "whole" if t in promoted else "weights" if t in best else "dropped"
        for t in rows["trial_id"]
    }


def best_at_rung_one(trials, n: int) -> list[str]:
    """Of one trial per config, the ``n`` with the best objective after epoch 1."""
    first = sorted(trials, key=lambda t: t.intermediate_values[1])
    return [t.user_attrs["trial_id"] for t in first[:n]]


@pytest.fixture(scope="module")
def sessions(ray_local, tmp_path_factory):
    """What session one left, and the run after session two."""
    folder = tmp_path_factory.mktemp("lean")
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    run = folder / "runs" / "lean"
    first_err = io.StringIO()
    run_search(settings(folder), stream=first_err, out=io.StringIO())
    study = load_study(run)
    promoted = best_at_rung_one(study.trials, 2)
    first = {
        "kept": what_is_kept(run),
        "expected": expected(run, promoted=set(promoted)),
        "promoted": promoted,
        "weights_only": study.user_attrs.get(WEIGHTS_ONLY_ATTR),
        "dropped": study.user_attrs.get(DROPPED_ATTR),
        "err": first_err.getvalue(),
        "checkpoints": list(run.glob("tune/*/checkpoint_*")),
        "best": [r.trial_id for r in rank_trials(pd.read_csv(run / RESULTS_CSV))[:3]],
    }
    first["models"] = {t: read_checkpoint(model_file(run, t))["model"] for t in first["best"]}
    export = folder / "export"
    first["export"] = export_run(run, top=3, to=export)
    first["export_dir"] = export
    kept = first["kept"]
    stripped = next(t for t, what in kept.items() if what == "weights")
    dropped = next(t for t, what in kept.items() if what == "dropped")
    params = {t.user_attrs["trial_id"]: t.params for t in study.trials}
    first["continued"], first["stripped"], first["dropped_one"] = promoted[0], stripped, dropped
    # The worse first: ASHA (rung 1, this session's own) stops none of them then.
    for trial_id, n_epochs in ((dropped, 2), (stripped, 2), (promoted[0], 3)):
        study.enqueue_trial({**params[trial_id], "n_epochs": n_epochs})
    second_err = io.StringIO()
    run_search(settings(folder, num_samples=9, resume=True), stream=second_err, out=io.StringIO())
    return {"run": run, "first": first, "err": second_err.getvalue()}


def test_the_promotable_keep_their_state_the_best_their_weights_the_others_nothing(sessions):
    first = sessions["first"]
    assert first["kept"] == first["expected"]
    assert sorted(first["kept"].values()) == ["dropped"] * 3 + ["weights"] + ["whole"] * 2
    assert first["weights_only"] == [first["stripped"]]
    assert first["dropped"] == sorted(t for t, k in first["kept"].items() if k == "dropped")
    assert "dropped 3 models and the optimizer state of 1" in first["err"]
    assert f"promotion: {', '.join(sorted(first['promoted']))}" in first["err"]
    assert not first["checkpoints"]


def test_export_reads_the_best_models(sessions):
    first = sessions["first"]
    exported = sorted(p.name for p in first["export_dir"].iterdir() if p.is_dir())
    assert [e.split("-", 1)[1] for e in exported] == first["best"]
    for entry in first["export_dir"].iterdir():
        if entry.is_dir():
            weights = torch.load(entry / "model.pt", weights_only=True)
            trial_id = entry.name.split("-", 1)[1]
            saved = first["models"][trial_id]
            assert all(torch.equal(weights[k], saved[k]) for k in saved), trial_id


@pytest.mark.parametrize("command", ["export", "report"])
def test_a_dropped_model_is_one_line_naming_the_trial(sessions, command, tmp_path, capsys):
    run = sessions["run"]
    ranked = [r.trial_id for r in rank_trials(pd.read_csv(run / RESULTS_CSV))]
    gone = next(t for t in ranked if not model_file(run, t).is_file())
    argv = [command, str(run), "--top-k", str(len(ranked))]
    argv += ["--to", str(tmp_path / "ex")] if command == "export" else ["--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{TRIALS_DIR}/{gone}" in err
    assert "dropped by the lean run folder" in err and "--keep-all-state" in err
    assert not (tmp_path / "ex").exists() and not (tmp_path / "index.html").exists()


def test_a_stripped_model_still_loads_and_evaluates_as_recorded(sessions):
    run = sessions["run"]
    stripped = next(t for t, kept in what_is_kept(run).items() if kept == "weights")
    rows = pd.read_csv(run / RESULTS_CSV).set_index("trial_id")
    config = TrainConfig.from_yaml(run / TRIALS_DIR / stripped / "config.yaml")
    trainer = Trainer(config, load_data(config))
    trainer.load_checkpoint(model_file(run, stripped))
    assert trainer.epoch == rows.loc[stripped, "epochs_run"]
    assert trainer.evaluate() == pytest.approx(rows.loc[stripped, "val_mse"], rel=1e-5)


def test_a_resume_continues_the_kept_state_and_never_a_stripped_or_dropped_trial(sessions):
    run, first = sessions["run"], sessions["first"]
    rows = pd.read_csv(run / RESULTS_CSV, dtype={"trial_id": str}).set_index("trial_id")
    assert list(rows["status"]) == ["complete"] * 9
    assert rows["warm_start"].fillna("").tolist()[6:] == ["", "", first["continued"]]
    assert rows["epochs_trained"].tolist()[6:] == [2, 2, 2]
    assert rows["epochs_run"].tolist()[6:] == [2, 2, 3]
    assert f"continues {first['continued']} after epoch 1" in sessions["err"]


def test_after_the_resume_the_rule_holds_again(sessions):
    run = sessions["run"]
    study = load_study(run)
    # Rung 1's best two: the first ran Ne 3 now (nothing to promote), the second still waits.
    promoted = {best_at_rung_one([t for t in study.trials if t.number < 6], 2)[1]}
    assert what_is_kept(run) == expected(run, promoted=promoted)
    recorded = set(study.user_attrs[WEIGHTS_ONLY_ATTR]) | set(study.user_attrs[DROPPED_ATTR])
    assert recorded == {t for t, k in what_is_kept(run).items() if k != "whole"}


def test_keep_all_state_keeps_every_model_whole(ray_local, tmp_path):
    space = {**SPACE, "start": SPACE["start"][:2]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    err = io.StringIO()
    run_search(
        settings(tmp_path, num_samples=2, keep_all_state=True), stream=err, out=io.StringIO()
    )
    run = tmp_path / "runs" / "lean"
    assert what_is_kept(run) == {"t0000": "whole", "t0001": "whole"}
    assert not {WEIGHTS_ONLY_ATTR, DROPPED_ATTR} & set(load_study(run).user_attrs)
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


# (trial_id, n_maps, objective after epoch 1, state): six configs measured at rung 1 of (1, 3);
# the best two (t0000, t0001) would be promoted, t0002 is third best; t0006 failed.
TRIALS = [(f"t{n:04d}", n + 2, 0.1 * (n + 1), "COMPLETE") for n in range(6)]
TRIALS.append(("t0006", 8, None, "FAIL"))


def lean_study(files: RunFiles):
    """A study of :data:`TRIALS`, their model files written, and its results table."""
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study()
    space = {
        "n_maps": CategoricalDistribution(list(range(2, 9))),
        "n_epochs": IntDistribution(1, 3),
    }
    for trial_id, n_maps, value, state in TRIALS:
        study.add_trial(
            create_trial(
                params={"n_maps": n_maps, "n_epochs": 1},
                distributions=space,
                value=value,
                intermediate_values={1: value} if value is not None else {},
                state=TrialState[state],
                user_attrs={"trial_id": trial_id, "epochs_run": 1 if value else 0},
            )
        )
        if value is not None:
            write_bytes(files.storage, f"trials/{trial_id}/model.pt", _checkpoint(1))
    results = pd.DataFrame(
        {
            "trial_id": [t[0] for t in TRIALS],
            "status": ["complete"] * 6 + ["failed"],
            "objective": [t[2] for t in TRIALS],
        }
    )
    return study, results


@pytest.mark.parametrize("where", ["local", "s3"])
def test_make_lean_keeps_what_is_read_and_records_it_first(where, tmp_path, request):
    root = f"s3://{request.getfixturevalue('s3_bucket')}/runs" if where == "s3" else str(tmp_path)
    files = RunFiles(parse_storage(root).child("run"))
    study, results = lean_study(files)
    write_bytes(files.storage, "tune/t0001-abc/checkpoint_000001/model.pt", b"x")
    write_bytes(files.storage, "tune/t0001-abc/result.json", b"{}")
    # An older confirmation ranks t0005 first: its model stays too.
    write_bytes(files.storage, "confirm.csv", b"rank,trial_id\n1,t0005\n")
    pushed = []

    def lean():
        return make_lean(
            study,
            files,
            results=results,
            top_k=1,
            rungs=(1, 3),
            reduction_factor=3,
            n_epochs_dist=optuna.distributions.IntDistribution(1, 3),
            on_study_change=lambda: pushed.append(1),
        )

    outcome = lean()

    assert outcome.whole == ("t0000", "t0001") and outcome.weights == ("t0002", "t0005")
    assert outcome.stripped == ("t0002", "t0005") and outcome.dropped == ("t0003", "t0004")
    assert not outcome.skipped and outcome.checkpoints_deleted == 1 and pushed == [1]
    assert study.user_attrs[WEIGHTS_ONLY_ATTR] == ["t0002", "t0005"]
    assert study.user_attrs[DROPPED_ATTR] == ["t0003", "t0004"]
    for trial_id in ("t0000", "t0001", "t0002", "t0005"):
        data = read_bytes(files.storage, f"trials/{trial_id}/model.pt")
        state = torch.load(io.BytesIO(data), weights_only=True)
        assert torch.equal(state["model"]["w"], torch.arange(6.0)) and state["epoch"] == 1
        assert state["optimizer"]["param_groups"] == [{"lr": 1e-3, "params": [0]}]
        assert bool(state["optimizer"]["state"]) == (trial_id in outcome.whole), trial_id
    for trial_id in ("t0003", "t0004"):
        assert not exists(files.storage, f"trials/{trial_id}/model.pt")
        note = read_bytes(files.storage, f"trials/{trial_id}/{TRIAL_MODEL_DROPPED}")
        assert note.decode().strip() == MODEL_DROPPED
    assert not exists(files.storage, "tune/t0001-abc/checkpoint_000001")
    assert exists(files.storage, "tune/t0001-abc/result.json")
    # Again: nothing left to do, and the study is not written again.
    again = lean()
    assert again.stripped == again.dropped == () and pushed == [1]


def test_a_warm_start_never_picks_a_stripped_or_dropped_trial(tmp_path):
    files = RunFiles(parse_storage(str(tmp_path)).child("run"))
    study, _ = lean_study(files)
    # Both files still there: the study's record alone keeps them from being continued.
    study.set_user_attr(WEIGHTS_ONLY_ATTR, ["t0002"])
    study.set_user_attr(DROPPED_ATTR, ["t0003"])
    saved = lambda trial_id: trial_id  # noqa: E731 -- every model "is there"
    picks = {
        n_maps: find_warm_start(study, {"n_maps": n_maps}, 3, saved_model_of=saved)
        for n_maps in (3, 4, 5)
    }
    assert picks[3] is not None and picks[3].trial_id == "t0001"
    assert picks[4] is None and picks[5] is None
