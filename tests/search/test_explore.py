"""ExploringSampler: a proposal the search measured, or is measuring, becomes another point.

That is a promotion, the config's next epoch, or a new point.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState, create_trial

from caetune.search._explore import ExploringSampler, _more_epochs, _neighbours, epochs_measured

SPACE = {"n_maps": CategoricalDistribution([8, 16]), "n_epochs": IntDistribution(1, 4)}


class Proposes(BaseSampler):
    """Always proposes ``params`` (a stand-in for TPE that has settled on one point)."""

    def __init__(self, params: dict, space: dict = SPACE):
        self.params, self.space = params, space

    def infer_relative_search_space(self, study, trial):
        return dict(self.space)

    def sample_relative(self, study, trial, search_space):
        return dict(self.params)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.params[param_name]


def study_with(
    *finished: tuple[dict, TrialState, int],
    proposes: dict,
    n_epochs_of=lambda p: p["n_epochs"],
    space=SPACE,
    curve=lambda params, epoch: 0.1,
    seed=0,
    **options,
):
    sampler = ExploringSampler(
        Proposes(proposes, space), n_epochs_of=n_epochs_of, seed=seed, **options
    )
    study = optuna.create_study(sampler=sampler)
    for params, state, ran in finished:
        values = {e: curve(params, e) for e in range(1, ran + 1)}
        study.add_trial(
            create_trial(
                params=params,
                distributions=space,
                state=state,
                value=values[ran] if state == TrialState.COMPLETE else None,
                intermediate_values=values,
                user_attrs={"epochs_run": ran},
            )
        )
    return study, sampler


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED])
@pytest.mark.parametrize("n_epochs", [1, 2])
def test_a_measured_proposal_gets_the_configs_next_epoch(state, n_epochs):
    # A trial of Nm=8 that ran 2 epochs (complete, or pruned before its own Ne of 4) measured Ne 1
    # and 2.
    study, sampler = study_with(
        ({"n_maps": 8, "n_epochs": 4 if state == TrialState.PRUNED else 2}, state, 2),
        proposes={"n_maps": 8, "n_epochs": n_epochs},
    )
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 3}
    assert sampler.explored == 1


def test_a_config_measured_to_the_largest_ne_gives_way_to_an_unmeasured_point():
    study, sampler = study_with(
        ({"n_maps": 8, "n_epochs": 4}, TrialState.COMPLETE, 4),
        proposes={"n_maps": 8, "n_epochs": 2},
    )
    assert study.ask(SPACE).params["n_maps"] == 16
    assert sampler.explored == 1


@pytest.mark.parametrize(
    ("dist", "ran", "more"),
    [
        (IntDistribution(1, 20), 7, 8),
        (IntDistribution(1, 20), 20, None),
        (IntDistribution(2, 20, step=3), 5, 8),  # 2, 5, 8 ...
        (IntDistribution(1, 19, step=3), 17, 19),  # 1, 4, ... 19
        (IntDistribution(1, 19, step=3), 19, None),
        (IntDistribution(1, 400, log=True), 30, 31),
        (CategoricalDistribution([10, 5, 20]), 5, 10),
        (CategoricalDistribution([10, 5, 20]), 20, None),
        (None, 3, None),  # Ne not searched
    ],
)
def test_the_next_epoch_is_one_the_distribution_allows(dist, ran, more):
    assert _more_epochs(dist, ran) == more


def test_a_proposal_beyond_what_was_measured_is_kept():
    study, sampler = study_with(
        ({"n_maps": 8, "n_epochs": 2}, TrialState.COMPLETE, 2),
        proposes={"n_maps": 8, "n_epochs": 3},
    )
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 3}
    assert sampler.explored == 0


def test_failed_trials_measure_nothing():
    study, sampler = study_with(
        ({"n_maps": 8, "n_epochs": 2}, TrialState.FAIL, 2), proposes={"n_maps": 8, "n_epochs": 2}
    )
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 2}
    assert sampler.explored == 0


def test_a_config_in_training_gives_way_to_another():
    # A second trial of Nm=8 beside a running one could not continue it: it would train the same
    # epochs again.
    study, sampler = study_with(proposes={"n_maps": 8, "n_epochs": 3})
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 3}  # runs, and stays RUNNING
    assert study.ask(SPACE).params["n_maps"] == 16
    assert sampler.explored == 1


def test_an_exhausted_space_gets_the_samplers_proposal():
    everything = [
        ({"n_maps": m, "n_epochs": 4}, TrialState.COMPLETE, 4) for m in (8, 16)
    ]  # every point measured
    study, sampler = study_with(*everything, proposes={"n_maps": 16, "n_epochs": 3})
    assert study.ask(SPACE).params == {"n_maps": 16, "n_epochs": 3}
    assert sampler.explored == 0


def test_a_fixed_ne_counts_against_the_epochs_run():
    # Ne fixed by the space at 4: a trial pruned at epoch 2 has not measured the config.
    space = {"n_maps": SPACE["n_maps"]}
    sampler = ExploringSampler(Proposes({"n_maps": 8}), n_epochs_of=lambda p: 4, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.add_trial(
        create_trial(
            params={"n_maps": 8},
            distributions=space,
            state=TrialState.PRUNED,
            intermediate_values={1: 0.2, 2: 0.1},
            user_attrs={"epochs_run": 2},
        )
    )
    assert epochs_measured(study) == {(("n_maps", 8),): 2}
    assert study.ask(space).params == {"n_maps": 8} and sampler.explored == 0


def test_enqueued_points_are_run_as_given():
    study, sampler = study_with(
        ({"n_maps": 8, "n_epochs": 2}, TrialState.COMPLETE, 2),
        proposes={"n_maps": 16, "n_epochs": 4},
    )
    study.enqueue_trial({"n_maps": 8, "n_epochs": 2})
    assert study.ask(SPACE).params == {"n_maps": 8, "n_epochs": 2}


MAPS = {
    "n_maps": CategoricalDistribution([8, 16, 24, 32, 40, 48]),
    "n_epochs": IntDistribution(1, 8),
}


def ranked(params: dict, epoch: int) -> float:
    """Nm=8 is the best config at every epoch, then 16, 24 ...; every config improves each epoch."""
    return params["n_maps"] / 100 + 1 / epoch


def test_a_measured_proposal_becomes_ashas_promotion_from_the_highest_rung():
    # Rungs 1, 2, 4, 8 (reduction factor 2). Six configs were stopped at rung 1; the best two of
    # them went on: Nm=8 to epoch 3 (rung 2), Nm=16 to epoch 2. At rung 2 (two configs) the best
    # half is Nm=8: it goes to 4.
    finished = [({"n_maps": m, "n_epochs": 8}, TrialState.PRUNED, 1) for m in (24, 32, 40, 48)]
    finished += [
        ({"n_maps": 8, "n_epochs": 8}, TrialState.PRUNED, 3),
        ({"n_maps": 16, "n_epochs": 8}, TrialState.PRUNED, 2),
    ]
    study, sampler = study_with(
        *finished,
        proposes={"n_maps": 40, "n_epochs": 1},
        space=MAPS,
        curve=ranked,
        rungs=(1, 2, 4, 8),
        reduction_factor=2.0,
    )
    assert study.ask(MAPS).params == {"n_maps": 8, "n_epochs": 4}
    # Nm=8 is now training: the next measured proposal promotes from rung 1, where the best 3 of 6
    # are 8, 16 and 24; 8 is in training and 16 ran past rung 2, so Nm=24 goes to rung 2.
    assert study.ask(MAPS).params == {"n_maps": 24, "n_epochs": 2}
    assert sampler.promoted == 2


def test_a_new_proposal_runs_as_given_even_when_a_promotion_waits():
    finished = [({"n_maps": m, "n_epochs": 8}, TrialState.PRUNED, 1) for m in (8, 16, 24, 32)]
    study, sampler = study_with(
        *finished,
        proposes={"n_maps": 48, "n_epochs": 5},
        space=MAPS,
        curve=ranked,
        rungs=(1, 2, 4, 8),
        reduction_factor=2.0,
    )
    assert study.ask(MAPS).params == {"n_maps": 48, "n_epochs": 5} and sampler.explored == 0


def test_without_rungs_or_with_several_objectives_nothing_is_promoted():
    finished = [({"n_maps": m, "n_epochs": 8}, TrialState.PRUNED, 1) for m in (8, 16, 24, 32)]
    study, sampler = study_with(
        *finished, proposes={"n_maps": 32, "n_epochs": 1}, space=MAPS, curve=ranked
    )
    assert study.ask(MAPS).params == {
        "n_maps": 32,
        "n_epochs": 2,
    }  # the proposed config's next epoch
    sampler = ExploringSampler(
        Proposes({"n_maps": 8, "n_epochs": 1}, MAPS),
        n_epochs_of=lambda p: p["n_epochs"],
        seed=0,
        rungs=(1, 2, 4, 8),
    )
    pareto = optuna.create_study(sampler=sampler, directions=["minimize", "maximize"])
    for m in (8, 16, 24, 32):
        pareto.add_trial(
            create_trial(
                params={"n_maps": m, "n_epochs": 1},
                distributions=MAPS,
                values=[0.1, 0.5],
                user_attrs={"epochs_run": 1},
            )
        )
    assert pareto.ask(MAPS).params == {"n_maps": 8, "n_epochs": 2} and sampler.promoted == 0


def test_a_reduction_factor_of_one_is_refused():
    with pytest.raises(ValueError, match="reduction_factor"):
        ExploringSampler(Proposes({}), n_epochs_of=lambda p: 1, seed=0, reduction_factor=1.0)


NEAR = {
    "n_maps": CategoricalDistribution([8, 16, 24]),
    "lr": CategoricalDistribution([1e-4, 1e-3, 1e-2]),
}


def measured_study(sampler, *points: dict, space: dict = NEAR):
    study = optuna.create_study(sampler=sampler)
    for params in points:
        study.add_trial(
            create_trial(
                params=params,
                distributions=space,
                value=0.1,
                intermediate_values={1: 0.1},
                user_attrs={"epochs_run": 1},
            )
        )
    return study


def test_a_measured_proposal_goes_to_an_unmeasured_neighbour():
    # Nm=16, lr=1e-3 is measured; of its four neighbours, three are measured too.
    sampler = ExploringSampler(
        Proposes({"n_maps": 16, "lr": 1e-3}, NEAR), n_epochs_of=lambda p: 1, seed=0, neighbours=True
    )
    study = measured_study(
        sampler,
        {"n_maps": 16, "lr": 1e-3},
        {"n_maps": 8, "lr": 1e-3},
        {"n_maps": 24, "lr": 1e-3},
        {"n_maps": 16, "lr": 1e-4},
    )
    assert study.ask(NEAR).params == {"n_maps": 16, "lr": 1e-2}
    assert sampler.explored == 1


def test_neighbours_step_along_one_param_and_never_along_ne():
    space = {
        "n_neurons": IntDistribution(40, 4096, log=True),
        "lr": FloatDistribution(1e-4, 1e-2, log=True),
        "n_maps": IntDistribution(8, 64, step=8),
        "model": CategoricalDistribution(["model1", "model2"]),
        "n_epochs": IntDistribution(1, 20),
    }
    params = {"n_neurons": 40, "lr": 1e-3, "n_maps": 32, "model": "model1", "n_epochs": 5}
    near = _neighbours(params, space)
    assert all(p["n_epochs"] == 5 for p in near)
    assert all(sum(p[k] != params[k] for k in params) == 1 for p in near)
    changed = {k: sorted(p[k] for p in near if p[k] != params[k]) for k in params}
    assert changed["n_neurons"] == [71]  # 40 * (4096 / 40) ** (1 / 8); none below the low end
    assert changed["lr"] == pytest.approx([1e-3 / 10**0.25, 1e-3 * 10**0.25])
    assert changed["n_maps"] == [24, 40]  # 32 -+ 7, on the step of 8
    assert changed["model"] == ["model2"] and changed["n_epochs"] == []


NEAR_NE = {**NEAR, "n_epochs": IntDistribution(1, 4)}
CONFIG = {"n_maps": 16, "lr": 1e-3}
PROPOSAL = {**CONFIG, "n_epochs": 4}
STOPPED = [{"n_maps": 8, "lr": 1e-3}, {"n_maps": 24, "lr": 1e-3}, {"n_maps": 16, "lr": 1e-4}]


@pytest.mark.parametrize("seed", range(6))
def test_a_neighbour_step_passes_over_configs_asha_stopped(seed):
    # Three of the proposal's four neighbours ran one epoch and were stopped: not measured at
    # Ne=4, but trained. Only the fourth, never trained, is a step to take.
    study, _ = study_with(
        (PROPOSAL, TrialState.COMPLETE, 4),
        *[({**p, "n_epochs": 4}, TrialState.PRUNED, 1) for p in STOPPED],
        proposes=PROPOSAL,
        space=NEAR_NE,
        seed=seed,
    )
    assert study.ask(NEAR_NE).params == {"n_maps": 16, "lr": 1e-2, "n_epochs": 4}


def test_once_every_config_was_trained_a_stopped_one_is_taken():
    others = [{"n_maps": m, "lr": lr} for m in (8, 16, 24) for lr in (1e-4, 1e-3, 1e-2)]
    study, sampler = study_with(
        (PROPOSAL, TrialState.COMPLETE, 4),
        *[({**p, "n_epochs": 4}, TrialState.PRUNED, 1) for p in others if p != CONFIG],
        proposes=PROPOSAL,
        space=NEAR_NE,
    )
    params = study.ask(NEAR_NE).params
    assert params["n_epochs"] == 4 and (params["n_maps"], params["lr"]) != (16, 1e-3)
    assert sampler.explored == 1
