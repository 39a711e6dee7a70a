"""ExploringSampler: a proposal the search has already measured becomes an unmeasured one."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState, create_trial

from caetune.search._explore import ExploringSampler, epochs_measured

SPACE = {"n_maps": CategoricalDistribution([8, 16]), "n_epochs": IntDistribution(1, 4)}


class Proposes(BaseSampler):
    """Always proposes ``params`` (a stand-in for TPE that has settled on one point)."""

    def __init__(self, params: dict):
        self.params = params

    def infer_relative_search_space(self, study, trial):
        return dict(SPACE)

    def sample_relative(self, study, trial, search_space):
        return dict(self.params)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.params[param_name]


def study_with(*finished: tuple[dict, TrialState, int], proposes: dict, n_epochs_of=lambda p: p["n_epochs"]):
    sampler = ExploringSampler(Proposes(proposes), n_epochs_of=n_epochs_of, seed=0)
    study = optuna.create_study(sampler=sampler)
    for params, state, ran in finished:
        study.add_trial(create_trial(
            params=params, distributions=SPACE, state=state, value=0.1 if state == TrialState.COMPLETE else None,
            intermediate_values={e: 0.1 for e in range(1, ran + 1)}, user_attrs={"epochs_run": ran},
        ))
    return study, sampler


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED])
@pytest.mark.parametrize("n_epochs", [1, 2])
def test_a_measured_proposal_is_replaced_by_an_unmeasured_point(state, n_epochs):
    # A trial of Nm=8 that ran 2 epochs (complete, or pruned before its own Ne of 4) measured Ne 1 and 2.
    study, sampler = study_with(({"n_maps": 8, "n_epochs": 4 if state == TrialState.PRUNED else 2}, state, 2),
                                proposes={"n_maps": 8, "n_epochs": n_epochs})
    params = study.ask(SPACE).params
    assert sampler.explored == 1
    assert not (params["n_maps"] == 8 and params["n_epochs"] <= 2), params


def test_a_proposal_beyond_what_was_measured_is_kept():
    study, sampler = study_with(({"n_maps": 8, "n_epochs": 2}, TrialState.COMPLETE, 2), proposes={"n_maps": 8, "n_epochs": 3})
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 3}
    assert sampler.explored == 0


def test_failed_and_running_trials_measure_nothing():
    study, sampler = study_with(({"n_maps": 8, "n_epochs": 2}, TrialState.FAIL, 2), proposes={"n_maps": 8, "n_epochs": 2})
    study.ask(SPACE)  # now RUNNING with the same point
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 2}
    assert sampler.explored == 0


def test_an_exhausted_space_gets_the_samplers_proposal():
    everything = [({"n_maps": m, "n_epochs": 4}, TrialState.COMPLETE, 4) for m in (8, 16)]
    study, sampler = study_with(*everything, proposes={"n_maps": 16, "n_epochs": 3})
    assert study.ask(SPACE).params == {"n_maps": 16, "n_epochs": 3}
    assert sampler.explored == 0


def test_a_fixed_ne_counts_against_the_epochs_run():
    # Ne fixed by the space at 4: a trial pruned at epoch 2 has not measured the config.
    space = {"n_maps": SPACE["n_maps"]}
    sampler = ExploringSampler(Proposes({"n_maps": 8}), n_epochs_of=lambda p: 4, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.add_trial(create_trial(params={"n_maps": 8}, distributions=space, state=TrialState.PRUNED,
                                 intermediate_values={1: 0.2, 2: 0.1}, user_attrs={"epochs_run": 2}))
    assert epochs_measured(study) == {(("n_maps", 8),): 2}
    assert study.ask(space).params == {"n_maps": 8} and sampler.explored == 0


def test_enqueued_points_are_run_as_given():
    study, sampler = study_with(({"n_maps": 8, "n_epochs": 2}, TrialState.COMPLETE, 2), proposes={"n_maps": 16, "n_epochs": 4})
    study.enqueue_trial({"n_maps": 8, "n_epochs": 2})
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 2}
