"""StudySearcher: a session's trials in a series of Tuner.fit calls of at most ``max_trials``."""

from __future__ import annotations

import pytest
from ray.tune.search import Searcher

from caetune.search._objective import Objective
from caetune.search._searcher import StudySearcher, TrialFactory, open_study
from caetune.search._space import space_from_dict

SPACE = {
    "description": "two params",
    "fixed": {"dataset": "mnist-10k", "subset": 100},
    "params": {"n_maps": {"low": 1, "high": 4}, "n_epochs": {"low": 1, "high": 3}},
}


@pytest.fixture
def searcher(tmp_path):
    space = space_from_dict(SPACE, name="s", source="test")
    objective = Objective("mse", 0.0)
    study = open_study(
        f"sqlite:///{tmp_path / 'study.db'}",
        name="s",
        objective=objective,
        seed=0,
        n_startup_trials=2,
    )
    factory = TrialFactory(
        space=space, objective=objective, seed=0, device="cpu", threads=1, util_images=16
    )
    return StudySearcher(study, factory, num_samples=5)


def test_each_fit_suggests_its_share_then_finishes_once_its_trials_ended(searcher):
    searcher.begin_fit(max_trials=2)
    first = [searcher.suggest(f"a{i}") for i in range(2)]
    assert [c["trial_id"] for c in first] == ["t0000", "t0001"]
    assert searcher.suggest("a2") is None  # its share is out, but a trial may still need a re-run
    searcher.on_trial_complete("a0")
    assert searcher.suggest("a2") is None and not searcher.finished
    searcher.on_trial_complete("a1")
    assert searcher.suggest("a2") == Searcher.FINISHED and searcher.finished
    assert searcher.pending() == 3

    searcher.begin_fit(max_trials=2)
    assert not searcher.finished
    assert [searcher.suggest(f"b{i}")["trial_id"] for i in range(2)] == ["t0002", "t0003"]
    for i in range(2):
        searcher.on_trial_complete(f"b{i}")
    assert searcher.suggest("b2") == Searcher.FINISHED

    searcher.begin_fit(max_trials=2)
    assert searcher.suggest("c0")["trial_id"] == "t0004"
    searcher.on_trial_complete("c0")
    assert searcher.suggest("c1") == Searcher.FINISHED and searcher.pending() == 0


def test_a_rerun_counts_against_the_fits_share(searcher):
    from caetune.search._searcher import Resumable

    searcher.begin_fit(max_trials=1)
    config = searcher.suggest("a0")
    searcher.run_again(Resumable(config["trial_number"], config["params"], None, None, "damaged"))
    assert searcher.suggest("a1") is None
    searcher.on_trial_complete("a0")
    assert searcher.suggest("a1") == Searcher.FINISHED
    searcher.begin_fit(max_trials=1)
    again = searcher.suggest("b0")
    assert again["trial_id"] == config["trial_id"] and again["recovery"] == "damaged"


def test_a_fit_runs_at_least_one_trial(searcher):
    with pytest.raises(ValueError, match="max_trials"):
        searcher.begin_fit(max_trials=0)
