"""End-to-end searches on a real local Ray (2 CPUs), a real SQLite Optuna study and real digits.

Budgets are tiny (300 images at 12x12, Ne <= 3, 4-5 trials) so the module
runs in about two minutes on two cores. The space's second start point asks
for Model 2 on 12x12 images, which has no room for three conv/pool stages:
a deterministic failing trial.
"""

from __future__ import annotations

import io
import os
import signal

import optuna
import pandas as pd
import pytest
import torch
import yaml
from ray.tune import Callback

from caetune import InputError
from caetune._runs import (
    CONFIRM_CSV,
    EXPERIMENT_FILE,
    RESULTS_CSV,
    RESULTS_PARQUET,
    STUDY_FILE,
    TRIAL_CONFIG,
    TRIAL_METRICS,
    TRIAL_MODEL,
    TRIAL_MODEL_DROPPED,
    TRIALS_DIR,
    rank_trials,
)
from caetune.models import read_checkpoint
from caetune.search import SearchSettings, _run, run_search
from tests._helpers import dropped_models

STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}
SPACE = {
    "description": "tiny test space",
    "fixed": {"dataset": "mnist-10k", "subset": 300, "image_size": 12},
    "params": {
        "n_neurons": {"low": 4, "high": 32, "log": True},
        "n_maps": {"low": 2, "high": 4},
        "n_epochs": {"low": 1, "high": 3},
        "model": ["model1", "model2"],
    },
    "start": [
        {"n_neurons": 16, "n_maps": 4, "n_epochs": 3, "model": "model1"},
        {"n_neurons": 8, "n_maps": 2, "n_epochs": 2, "model": "model2"},
    ],
}


def space_file(folder, doc=SPACE, name="tiny.yaml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def settings(folder, **overrides) -> SearchSettings:
    if "space" not in overrides:
        overrides["space"] = space_file(folder)
    values = dict(
        run_root=str(folder / "runs"),
        num_samples=5,
        max_epochs=3,
        confirm_seeds=0,
        util_images=32,
        report=False,
    )
    values.update(overrides)
    return SearchSettings(**values)


def load_study(run):
    return optuna.load_study(study_name=run.name, storage=f"sqlite:///{run / STUDY_FILE}")


def snapshot(run):
    """What a second session must leave alone: each trial file's content and time, Tune's trial
    folders.
    """
    files = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((run / TRIALS_DIR).rglob("*"))
        if p.is_file()
    }
    tune = sorted(p.name for p in (run / "tune").iterdir() if p.is_dir())
    return files, tune


class CountFits(Callback):
    """Counts the Tuner.fit calls of a session (each calls its callbacks' setup once), and what Tune
    kept.
    """

    def __init__(self):
        self.fits = 0
        # per fit, at its end: (trials Tune held, of them still holding result statistics)
        self.kept = []

    def setup(self, **info):
        self.fits += 1

    def on_experiment_end(self, trials, **info):
        self.kept.append((len(trials), sum(bool(t.run_metadata.metric_analysis) for t in trials)))


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    """One finished search with a failing trial and seed confirmation, its 5 trials in fits of 2."""
    folder = tmp_path_factory.mktemp("search")
    chosen = settings(folder, confirm_seeds=1, top_k=1)
    out, err, fits = io.StringIO(), io.StringIO(), CountFits()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_run, "TRIALS_PER_FIT", 2)
        outcome = run_search(chosen, stream=err, out=out, callbacks=[fits])
    return {
        "settings": chosen,
        "outcome": outcome,
        "run": folder / "runs" / "tiny",
        "out": out.getvalue(),
        "err": err.getvalue(),
        "fits": fits.fits,
        "kept": fits.kept,
    }


def test_the_trials_run_in_fits_of_trials_per_fit_each_once(finished):
    run = finished["run"]
    assert finished["fits"] == 3  # 2 + 2 + 1
    # Tune held only each fit's trials, and the recorder had dropped Tune's copy of their results.
    assert finished["kept"] == [(2, 0), (2, 0), (1, 0)]
    tune_dirs = sorted(p.name.split("-")[0] for p in (run / "tune").iterdir() if p.is_dir())
    assert tune_dirs == [f"t{i:04d}" for i in range(5)]


def test_search_writes_the_run_layout(finished):
    run, outcome = finished["run"], finished["outcome"]
    assert not outcome.interrupted and outcome.run == str(run)
    for name in (EXPERIMENT_FILE, STUDY_FILE, RESULTS_CSV, RESULTS_PARQUET, CONFIRM_CSV):
        assert (run / name).is_file(), name
    results = pd.read_csv(run / RESULTS_CSV)
    assert list(results["trial_id"]) == [f"t{i:04d}" for i in range(5)]
    assert set(results["status"]) <= {"complete", "pruned", "failed"}
    for column in (
        "n_neurons",
        "n_maps",
        "n_epochs",
        "model",
        "val_mse",
        "best_val_mse",
        "utilisation",
        "objective",
        "epochs_run",
        "seconds",
        "layer3_dead_fraction",
        "layer4_local_entropy",
    ):
        assert column in results.columns, column
    pd.testing.assert_frame_equal(
        pd.read_parquet(run / RESULTS_PARQUET), results, check_dtype=False
    )
    for row in results.to_dict(orient="records"):
        folder = run / TRIALS_DIR / row["trial_id"]
        config = yaml.safe_load((folder / TRIAL_CONFIG).read_text())
        assert {k: config[k] for k in ("n_neurons", "n_maps", "n_epochs", "model")} == {
            k: row[k] for k in ("n_neurons", "n_maps", "n_epochs", "model")
        }
        metrics = (folder / TRIAL_METRICS).read_text()
        assert row["status"] in metrics
        # Each finished trial's model stays, unless the study records it as dropped (lean).
        dropped = row["trial_id"] in dropped_models(run / STUDY_FILE)
        assert (folder / TRIAL_MODEL).is_file() == (row["status"] != "failed" and not dropped)
        assert (folder / TRIAL_MODEL_DROPPED).is_file() == dropped
    # Tune's checkpoints of finished trials are gone (trials/<id>/model.pt is the record).
    assert not list((run / "tune").glob("*/checkpoint_*"))
    experiment = yaml.safe_load((run / EXPERIMENT_FILE).read_text())
    assert experiment["objective"]["formula"] == "objective = val_mse * (1 + 0.5 * (1 - U))"
    assert experiment["dataset"]["train"] + experiment["dataset"]["val"] == 300


def test_the_start_points_run_first(finished):
    results = pd.read_csv(finished["run"] / RESULTS_CSV).set_index("trial_id")
    first, second = SPACE["start"]
    assert {k: results.loc["t0000", k] for k in first} == first
    assert {k: results.loc["t0001", k] for k in second} == second


def test_a_failing_trial_is_recorded_and_the_search_goes_on(finished):
    results = pd.read_csv(finished["run"] / RESULTS_CSV).set_index("trial_id")
    assert results.loc["t0001", "status"] == "failed"
    assert "too small for 3 conv/pool stages" in results.loc["t0001", "error"]
    assert pd.isna(results.loc["t0001", "objective"])
    assert (results["status"] == "complete").sum() >= 1
    assert "t0001 failed" in finished["err"]


def test_the_study_holds_every_trial_and_how_it_ended(finished):
    run = finished["run"]
    results = pd.read_csv(run / RESULTS_CSV).set_index("trial_id")
    study = load_study(run)
    assert len(study.trials) == len(results) == 5
    for trial in study.trials:
        row = results.loc[trial.user_attrs["trial_id"]]
        assert trial.state.name == STATES[row["status"]]
        assert trial.params == {k: row[k] for k in SPACE["params"]}
        if row["status"] == "failed":
            assert "too small" in trial.user_attrs["failed_reason"]
            continue
        # One intermediate value per epoch run, the last one the reported objective.
        assert sorted(trial.intermediate_values) == list(range(1, row["epochs_run"] + 1))
        assert trial.intermediate_values[row["epochs_run"]] == pytest.approx(row["objective"])
        if row["status"] == "complete":
            assert row["epochs_run"] == row["n_epochs"]
            assert trial.value == pytest.approx(row["objective"])
        else:  # ASHA stopped it before its own Ne
            assert row["epochs_run"] < row["n_epochs"]


def test_objective_is_the_documented_formula(finished):
    results = pd.read_csv(finished["run"] / RESULTS_CSV)
    done = results[results["status"] != "failed"]
    expected = done["val_mse"] * (1 + 0.5 * (1 - done["utilisation"]))
    assert done["objective"].to_numpy() == pytest.approx(expected.to_numpy())
    assert ((done["utilisation"] >= 0) & (done["utilisation"] <= 1)).all()


def test_the_trial_model_reloads(finished):
    from caetune.models import TrainConfig, Trainer
    from caetune.models._data import load_data

    run = finished["run"]
    results = pd.read_csv(run / RESULTS_CSV).set_index("trial_id")
    best = rank_trials(results.reset_index())[0].trial_id  # its model stays in a lean run folder
    config = TrainConfig.from_yaml(run / TRIALS_DIR / best / TRIAL_CONFIG)
    trainer = Trainer(config, load_data(config))
    trainer.load_checkpoint(run / TRIALS_DIR / best / TRIAL_MODEL)
    assert trainer.epoch == results.loc[best, "epochs_run"]
    assert trainer.evaluate() == pytest.approx(results.loc[best, "val_mse"], rel=1e-5)


def test_the_best_config_is_confirmed_with_another_seed(finished):
    run = finished["run"]
    confirm = pd.read_csv(run / CONFIRM_CSV)
    results = pd.read_csv(run / RESULTS_CSV)
    best = results[results["status"] == "complete"].sort_values("objective").iloc[0]
    assert list(confirm["trial_id"]) == [best["trial_id"]] and confirm.loc[0, "rank"] == 1
    assert confirm.loc[0, "seeds"] == "0 1" and confirm.loc[0, "n_seeds"] == 2
    assert confirm.loc[0, "objective_sd"] >= 0
    assert "Top configs" in finished["out"] and best["trial_id"] in finished["out"]


def test_running_a_finished_search_again_reruns_nothing(finished):
    run = finished["run"]
    before = snapshot(run)
    confirm_runs = (run / "confirm_runs.csv").read_text()
    outcome = run_search(finished["settings"], stream=io.StringIO(), out=io.StringIO())
    assert not outcome.interrupted
    assert snapshot(run) == before
    assert (run / "confirm_runs.csv").read_text() == confirm_runs
    assert len(load_study(run).trials) == 5


def test_other_settings_under_the_same_name_are_refused(finished):
    run = finished["run"]
    before = snapshot(run)
    changed = settings(run.parent.parent, seed=3)
    with pytest.raises(InputError, match="seed 0 -> 3"):
        run_search(changed, stream=io.StringIO(), out=io.StringIO())
    assert snapshot(run) == before


class InterruptAfterFirstTrial(Callback):
    """Sends the driver SIGUSR1 (Tune's stop signal, as Ctrl-C) once the first trial has ended."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        os.kill(os.getpid(), signal.SIGUSR1)


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(ray_local, tmp_path):
    doc = {**SPACE, "start": SPACE["start"][:1]}
    space = space_file(tmp_path, doc)
    chosen = settings(tmp_path, space=space, num_samples=4)
    first = run_search(
        chosen, stream=io.StringIO(), out=io.StringIO(), callbacks=[InterruptAfterFirstTrial()]
    )
    assert first.interrupted
    run = tmp_path / "runs" / "tiny"
    study = load_study(run)
    finished = {t.user_attrs["trial_id"] for t in study.trials if t.state.is_finished()}
    assert finished and len(finished) < 4
    files = [p for t in finished for p in (run / TRIALS_DIR / t).iterdir()]
    kept = {p: p.stat().st_mtime_ns for p in files if p.name != TRIAL_MODEL}
    # The lean run folder may rewrite a model.pt without its optimizer state, never its weights,
    # or drop it, as the study records.
    weights = {p: read_checkpoint(p) for p in files if p.name == TRIAL_MODEL}

    second = run_search(chosen, stream=io.StringIO(), out=io.StringIO())
    assert not second.interrupted
    study = load_study(run)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    dropped = dropped_models(run / STUDY_FILE)
    for path, before in weights.items():
        if path.parent.name in dropped:
            assert not path.exists() and (path.parent / TRIAL_MODEL_DROPPED).is_file()
            continue
        after = read_checkpoint(path)
        assert after["epoch"] == before["epoch"]
        assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())
    tune_dirs = [p.name.split("-")[0] for p in (run / "tune").iterdir() if p.is_dir()]
    for trial_id in finished:  # each ran in one Tune trial only
        assert tune_dirs.count(trial_id) == 1
    results = pd.read_csv(run / RESULTS_CSV)
    assert len(results) == 4 and "running" not in set(results["status"])

    # A bigger budget extends the same study.
    third = run_search(
        settings(tmp_path, space=space, num_samples=5), stream=io.StringIO(), out=io.StringIO()
    )
    assert len(third.results) == 5 and len(load_study(run).trials) == 5


class InterruptAtFirstFitEnd(Callback):
    """SIGUSR1 as the first fit ends, its trials all recorded: the session must not start the next
    fit.
    """

    def __init__(self):
        self.sent = False

    def on_experiment_end(self, trials, **info):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_stop_signal_as_a_fit_ends_starts_no_further_fit(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(_run, "TRIALS_PER_FIT", 1)
    doc = {**SPACE, "start": SPACE["start"][:1]}
    chosen = settings(tmp_path, space=space_file(tmp_path, doc), num_samples=2, max_concurrent=1)
    fits = CountFits()
    first = run_search(
        chosen, stream=io.StringIO(), out=io.StringIO(), callbacks=[InterruptAtFirstFitEnd(), fits]
    )
    run = tmp_path / "runs" / "tiny"
    assert first.interrupted and fits.fits == 1
    assert [t.state.is_finished() for t in load_study(run).trials] == [True]
    second = run_search(chosen, stream=io.StringIO(), out=io.StringIO())
    assert not second.interrupted and len(second.results) == 2


class InterruptAtLastEpoch(Callback):
    """SIGUSR1 once a trial's last checkpoint is in: the driver stops before recording the trial's
    end.
    """

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if trial.last_result.get("epoch") == trial.config["n_epochs"]:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_a_trial_cut_off_after_its_last_epoch_only_reports_again(ray_local, tmp_path):
    import json

    doc = {**SPACE, "start": [{"n_neurons": 16, "n_maps": 4, "n_epochs": 2, "model": "model1"}]}
    chosen = settings(tmp_path, space=space_file(tmp_path, doc), num_samples=1)
    first = run_search(
        chosen, stream=io.StringIO(), out=io.StringIO(), callbacks=[InterruptAtLastEpoch()]
    )
    run = tmp_path / "runs" / "tiny"
    (trial,) = load_study(run).trials
    assert first.interrupted and trial.state.name == "RUNNING"
    checkpoint = run / trial.user_attrs["checkpoint"]
    trained = json.loads((checkpoint / "metrics.json").read_text())
    assert trained["epoch"] == 2

    second = run_search(chosen, stream=io.StringIO(), out=io.StringIO())
    assert not second.interrupted
    (trial,) = load_study(run).trials
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2]
    recorded = json.loads((run / TRIALS_DIR / "t0000" / TRIAL_METRICS).read_text())
    # No epoch trained again: the same history and clocks as the cut-off session's last checkpoint.
    assert recorded["history"] == trained["history"]
    assert (recorded["seconds"], recorded["cpu_seconds"]) == (
        trained["seconds"],
        trained["cpu_seconds"],
    )
    assert recorded["val_mse"] == trained["val_mse"] and recorded["status"] == "complete"


def test_a_damaged_checkpoint_is_passed_over_when_a_search_resumes(ray_local, tmp_path):
    doc = {**SPACE, "start": [{"n_neurons": 16, "n_maps": 4, "n_epochs": 2, "model": "model1"}]}
    chosen = settings(tmp_path, space=space_file(tmp_path, doc), num_samples=2, max_concurrent=1)
    first = run_search(
        chosen, stream=io.StringIO(), out=io.StringIO(), callbacks=[InterruptAtLastEpoch()]
    )
    run = tmp_path / "runs" / "tiny"
    (trial,) = [t for t in load_study(run).trials if t.state.name == "RUNNING"]
    assert first.interrupted
    latest = run / trial.user_attrs["checkpoint"]
    model = latest / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # truncated, as a full disk would leave it

    progress = io.StringIO()
    second = run_search(chosen, stream=progress, out=io.StringIO())
    assert not second.interrupted
    results = second.results.set_index("trial_id")
    # The earlier session's older checkpoint (epoch 1) is read instead; the trial completes.
    assert results.loc["t0000", "status"] == "complete", results.loc["t0000"]
    recovery = results.loc["t0000", "recovery"]
    assert f"{latest.parent.name}/{latest.name} unreadable (RuntimeError: " in recovery, recovery
    assert (
        recovery.endswith("/checkpoint_000000 (epoch 1)")
        and "t0000 recovered" in progress.getvalue()
    ), recovery
    assert load_study(run).trials[0].user_attrs["recovery"] == recovery
    assert len(results) == 2 and results.loc["t0001", "status"] != "running"


def test_pareto_search_reports_the_front(ray_local, tmp_path):
    doc = {**SPACE, "start": SPACE["start"][:1]}
    elsewhere = tmp_path / "studies.db"  # --study-storage: any RDB URL instead of RUN/study.db
    chosen = settings(
        tmp_path,
        space=space_file(tmp_path, doc),
        objective="pareto",
        num_samples=3,
        max_epochs=2,
        study_storage=f"sqlite:///{elsewhere}",
    )
    out = io.StringIO()
    outcome = run_search(chosen, stream=io.StringIO(), out=out)
    run = tmp_path / "runs" / "tiny"
    assert elsewhere.is_file() and not (run / STUDY_FILE).exists()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{elsewhere}")
    assert "Pareto front" in out.getvalue()
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    results = outcome.results.set_index("trial_id")
    front = {t.user_attrs["trial_id"] for t in study.best_trials}
    assert front and set(results.index[results["pareto"].astype(bool)]) == front
    for trial in study.trials:
        if trial.state.name == "COMPLETE":
            row = results.loc[trial.user_attrs["trial_id"]]
            assert trial.values == pytest.approx([row["val_mse"], row["utilisation"]])


def test_a_run_in_use_is_refused(ray_local, tmp_path):
    from tests.search.test_run_lock import LockHolder

    run = tmp_path / "runs" / "tiny"
    owner = LockHolder()
    try:
        assert owner.take(run) == "won"
        with pytest.raises(InputError, match=f"in use by process {owner.pid}"):
            run_search(settings(tmp_path), stream=io.StringIO(), out=io.StringIO())
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        owner.close()
