"""Warm starts: a proposal continues its config's earlier trial, with the model a scratch run gets.

The space fixes everything but Ne and enqueues four proposals (Ne 1, 2, 2, 1),
run one at a time, so which trial continues which is known in advance.
"""

from __future__ import annotations

import io

import optuna
import pandas as pd
import pytest
import torch
import yaml

from caetune._runs import RESULTS_CSV, STUDY_FILE, TRIAL_MODEL, TRIALS_DIR
from caetune.models import Trainer, load_data, read_checkpoint
from caetune.models._precision import SCREENING
from caetune.search import SearchSettings, run_search
from caetune.search._attrs import WARM_ATTR, WARM_EPOCHS_ATTR
from caetune.search._objective import Objective
from caetune.search._space import space_from_dict
from caetune.search._trainable import epoch_metrics
from caetune.search._warm import config_key

FIXED = {
    "dataset": "mnist-10k",
    "subset": 120,
    "image_size": 12,
    "n_neurons": 8,
    "n_maps": 2,
    "batch_size": 32,
}
SPACE = {
    "description": "only Ne varies",
    "fixed": FIXED,
    "params": {"n_epochs": {"low": 1, "high": 2}},
    "start": [{"n_epochs": 1}, {"n_epochs": 2}, {"n_epochs": 2}, {"n_epochs": 1}],
}
UTIL_IMAGES = 16


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    folder = tmp_path_factory.mktemp("warm")
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    settings = SearchSettings(
        space=str(folder / "space.yaml"),
        run_root=str(folder / "runs"),
        name="warm",
        num_samples=4,
        max_epochs=2,
        max_concurrent=1,
        confirm_seeds=0,
        util_images=UTIL_IMAGES,
        report=False,
        objective="combined",
    )
    err = io.StringIO()
    outcome = run_search(settings, stream=err, out=io.StringIO())
    return {"folder": folder / "runs" / "warm", "outcome": outcome, "err": err.getvalue()}


def scratch(n_epochs: int) -> dict:
    """The same config trained from scratch for ``n_epochs``: its objective and final weights."""
    space = space_from_dict(SPACE, name="warm", source="test")
    config = space.train_config({"n_epochs": n_epochs}, seed=0, device="cpu")
    torch.set_num_threads(1)  # as a trial with one CPU
    # As a search trial: `precision: auto` is bf16 for screening where the CPU has it natively.
    trainer = Trainer(config, load_data(config), use=SCREENING)
    trainer.fit()
    metrics = epoch_metrics(trainer, Objective("combined"), util_images=UTIL_IMAGES)
    return {"objective": metrics["objective"], "state": trainer.model.state_dict()}


def test_each_trial_continues_the_longest_earlier_run_of_its_config(run):
    rows = pd.read_csv(run["folder"] / RESULTS_CSV).set_index("trial_id")
    assert list(rows["status"]) == ["complete"] * 4
    assert list(rows["n_epochs"]) == [1, 2, 2, 1]
    # t0001 continues t0000 after epoch 1; t0002 is t0001 again; t0003 is t0000 again.
    assert rows["warm_start"].fillna("").tolist() == ["", "t0000", "t0001", "t0000"]
    assert rows["epochs_trained"].tolist() == [1, 1, 0, 0]
    assert rows["epochs_run"].tolist() == [1, 2, 2, 1]
    assert rows.loc["t0002", "objective"] == rows.loc["t0001", "objective"]
    assert rows.loc["t0003", "objective"] == rows.loc["t0000", "objective"]
    assert "t0001 start" in run["err"] and "continues t0000 after epoch 1" in run["err"]

    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{run['folder'] / STUDY_FILE}")
    attrs = [
        (t.user_attrs.get(WARM_ATTR), t.user_attrs.get(WARM_EPOCHS_ATTR)) for t in study.trials
    ]
    assert attrs == [(None, None), ("t0000", 1), ("t0001", 2), ("t0000", 1)]
    assert [t.user_attrs["epochs_trained"] for t in study.trials] == [1, 1, 0, 0]


@pytest.mark.parametrize("trial_id, n_epochs", [("t0000", 1), ("t0001", 2)])
def test_a_continued_model_is_the_model_a_scratch_run_trains(run, trial_id, n_epochs):
    """Bit for bit on CPU: the objective and every weight of the saved model."""
    reference = scratch(n_epochs)
    rows = pd.read_csv(run["folder"] / RESULTS_CSV).set_index("trial_id")
    assert rows.loc[trial_id, "objective"] == pytest.approx(reference["objective"], rel=0, abs=0)
    saved = read_checkpoint(run["folder"] / TRIALS_DIR / trial_id / TRIAL_MODEL)["model"]
    for name, tensor in reference["state"].items():
        assert torch.equal(saved[name], tensor), name


def test_config_key_ignores_only_n_epochs():
    a = {"n_neurons": 8, "n_maps": 2, "n_epochs": 3, "lr": 1e-3}
    assert (
        config_key(a)
        == config_key({**a, "n_epochs": 7})
        == config_key(dict(reversed(list(a.items()))))
    )
    assert config_key(a) != config_key({**a, "lr": 2e-3})
