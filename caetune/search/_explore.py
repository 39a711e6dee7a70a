"""Spend no trial on a point the search measured, or is measuring: promote or explore instead.

On small spaces (a few choices of Nn and Nm, Ne up to 20) TPE settles on the
configs it likes and proposes them again and again. Since training does not
depend on Ne (:mod:`caetune.search._warm`), a proposal ``(config, Ne)`` is
already *measured* when a finished trial of the same config ran at least Ne
epochs: the objective after epoch Ne was reported then. Running it again
teaches the sampler nothing (and, with a warm start, trains nothing), while
a slow starter that ASHA stopped early may never be proposed past its rung.
A proposal of a config that a running trial is training is no better: it
cannot continue an unfinished trial, so it trains the same epochs again,
from scratch, beside it.

:class:`ExploringSampler` wraps the search's sampler. When the sampler
proposes such a point, the trial goes instead, in this order, to

1. **a promotion**, ASHA's own rule (Li et al., "A System for Massively
   Parallel Hyperparameter Tuning", 2020) applied to whole configs: from the
   highest rung down, a config among the best ``1 / reduction_factor`` of the
   configs measured at that rung, whose trials all stopped before the next
   rung, gets Ne = the next rung (a warm start trains just the epochs
   between). Ray's ASHA only *stops* trials, so without this a config it
   stopped early, however well it ranked, runs again only if the sampler
   happens to propose it;
2. **the proposed config's next epoch** (one more than the most any of its
   trials ran; ASHA judges it at its rung), unless a trial is training it;
3. **a neighbour** of the proposal (``neighbours``, on by default): one step
   along one param (the adjacent choice, or an eighth of a numeric range)
   to a config no trial has trained, drawn with the study's seed. TPE keeps
   proposing the good configs it has measured; the better ones are usually
   next to them (on the mnist10k table of ``benchmarks/peers.py`` the best
   config is one step from the next three, and this step took the search
   from 60% to 90% of repetitions finding it, README *caetune against its
   peers*);
4. **a random point** that no trial has trained, drawn with the study's seed.

Steps 3 and 4 pass over configs a trial has trained, even ones ASHA stopped
before the proposal's Ne: such a config goes on through a promotion (step 1,
ASHA's rule) or when the sampler proposes it, not by chance. Drawn again, it
would only train to its next rung for ASHA to stop it there again; on the
cifar10test table of ``benchmarks/peers.py`` that spent most of the budget,
and new configs took caetune from 15% to 40% of repetitions finding the best
one. Once every config has been trained (a small space), they take any point
that is not measured and not in training.

Only the sampler's model-based proposals are checked (its start-up trials are
random already); enqueued points (the presets' start points) run as given.
Promotions need the objective after each epoch (Optuna's intermediate values,
single-objective searches) and a searched Ne.

``benchmarks/search_sim.py`` replays this with Optuna's real TPE and Ray's
ASHA rule on the search benchmark's grids, with and without each step; the
README's *Search efficiency and overhead* section has its figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection

from caetune.search._warm import config_key, finished_runs

DRAWS = 256  # random draws per repeat before giving up (a space every point of which is measured)


class ExploringSampler(BaseSampler):
    """Turns a proposal of a measured point, or of a config in training, into another point.

    Args:
        inner: The sampler that proposes (TPE).
        n_epochs_of: ``params -> Ne`` (searched, or fixed by the space).
        seed: Seeds the random draws.
        rungs: ASHA's rungs in epochs, ascending, ending with the largest Ne
            (:meth:`~caetune.search._asha.AshaSettings.rungs`); empty: no promotions.
        reduction_factor: ASHA's: the best ``1 / reduction_factor`` of a
            rung's configs are promoted.
        neighbours: Before the random point, a neighbour of the proposal (step 3);
            ``False`` skips that step.
    """

    def __init__(
        self,
        inner: BaseSampler,
        *,
        n_epochs_of: Callable[[dict[str, Any]], int],
        seed: int | None,
        rungs: Sequence[int] = (),
        reduction_factor: float = 2.0,
        neighbours: bool = True,
    ):
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        self._inner = inner
        self._n_epochs_of = n_epochs_of
        self._random = RandomSampler(seed=seed)
        self._rungs = tuple(rungs)
        self._reduction_factor = reduction_factor
        self._neighbours = neighbours
        self._pick = np.random.default_rng(seed)  # which neighbour
        self.explored = 0  # proposals replaced, for tests and logs
        self.promoted = 0  # ... of which promotions

    def infer_relative_search_space(self, study, trial) -> dict:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space: dict) -> dict[str, Any]:
        params = self._inner.sample_relative(study, trial, search_space)
        if not params or set(params) != set(search_space):
            return params  # start-up (random) or a partial proposal: nothing to judge
        ran = epochs_measured(study)
        training = configs_in_training(study, but=trial.number)
        measured = lambda p: ran.get(config_key(p), 0) >= self._n_epochs_of(p)  # noqa: E731
        key = config_key(params)
        if key not in training and not measured(params):
            return params
        promotion = self._promotion(study, training, search_space.get("n_epochs"))
        if promotion is not None:
            self.explored += 1
            self.promoted += 1
            return promotion
        more = _more_epochs(search_space.get("n_epochs"), ran.get(key, 0))
        if key not in training and more is not None:
            self.explored += 1
            return {**params, "n_epochs": more}

        def untrained(p: dict[str, Any]) -> bool:
            return config_key(p) not in training and config_key(p) not in ran

        def unmeasured(p: dict[str, Any]) -> bool:
            return config_key(p) not in training and not measured(p)

        for usable in (untrained, unmeasured):  # the second once every config was trained
            point = self._new_point(study, trial, params, search_space, usable=usable)
            if point is not None:
                self.explored += 1
                return point
        # Every point drawn is measured or in training: the space is (nearly) exhausted.
        return params

    def _new_point(self, study, trial, params, search_space, *, usable) -> dict[str, Any] | None:
        """Steps 3 and 4: a usable neighbour of ``params``, else a usable random point."""
        if self._neighbours:
            near = [p for p in _neighbours(params, search_space) if usable(p)]
            if near:
                return near[int(self._pick.integers(len(near)))]
        for _ in range(DRAWS):
            other = {
                name: self._random.sample_independent(study, trial, name, dist)
                for name, dist in search_space.items()
            }
            if usable(other):
                return other
        return None

    def _promotion(self, study, training: set[tuple], n_epochs_dist) -> dict[str, Any] | None:
        """ASHA's promotion of configs: top rung first, a best one not in training."""
        for key, n_epochs in promotions(
            study,
            rungs=self._rungs,
            reduction_factor=self._reduction_factor,
            n_epochs_dist=n_epochs_dist,
        ):
            if key not in training:
                return {**dict(key), "n_epochs": n_epochs}
        return None

    def sample_independent(self, study, trial, param_name: str, param_distribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
        self._random.reseed_rng()


def promotions(
    study, *, rungs: Sequence[int], reduction_factor: float, n_epochs_dist
) -> list[tuple[tuple, int]]:
    """ASHA's promotions of whole configs, top rung first: ``(config_key, Ne to run)``.

    At each rung, from the highest down, the best ``1 / reduction_factor`` of
    the configs measured there whose trials all stopped before the next rung
    go on to the next rung (the smallest Ne the distribution allows at or past
    it). A config is promoted at most once: from its highest rung.

    Args:
        study: The search's study (single-objective; with several, none).
        rungs: ASHA's rungs in epochs, ascending, ending with the largest Ne.
        reduction_factor: ASHA's.
        n_epochs_dist: Ne's distribution (``None``: Ne is not searched, no promotion).
    """
    if n_epochs_dist is None or len(rungs) < 2 or len(study.directions) != 1:
        return []
    ran = epochs_measured(study)
    curves = objective_curves(study)
    sign = 1.0 if study.direction == StudyDirection.MINIMIZE else -1.0
    found = []
    for rung, above in reversed(list(zip(rungs, rungs[1:], strict=False))):
        n_epochs = _more_epochs(n_epochs_dist, above - 1)
        if n_epochs is None:
            continue  # the distribution allows no Ne at or past the next rung
        at_rung = {key: sign * curve[rung] for key, curve in curves.items() if rung in curve}
        best = sorted(at_rung, key=at_rung.__getitem__)[: int(len(at_rung) / reduction_factor)]
        found += [(key, n_epochs) for key in best if ran.get(key, 0) < above]
    return found


def _neighbours(params: dict[str, Any], search_space: dict) -> list[dict[str, Any]]:
    """The points one step from ``params`` along one param (Ne excepted), in a fixed order.

    A step is to the next or previous choice of a categorical param, or an
    eighth of a numeric param's range (of its logarithm for a log one).
    """
    found = []
    for name, dist in search_space.items():
        if name == "n_epochs" or name not in params:
            continue
        steps: list[Any]
        if isinstance(dist, CategoricalDistribution):
            at = dist.choices.index(params[name])
            steps = [dist.choices[i] for i in (at - 1, at + 1) if 0 <= i < len(dist.choices)]
        elif isinstance(dist, (IntDistribution, FloatDistribution)):
            steps = _numeric_steps(dist, params[name])
        else:
            continue
        found += [{**params, name: value} for value in steps if value != params[name]]
    return found


def _numeric_steps(dist, value: float) -> list[Any]:
    """One eighth of the range (in log space for a log param) down and up, on the grid."""
    low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
    at = math.log(value) if dist.log else value
    steps: list[Any] = []
    for moved in (at - (high - low) / 8, at + (high - low) / 8):
        moved = min(max(moved, low), high)
        out = math.exp(moved) if dist.log else moved
        if isinstance(dist, IntDistribution):
            out = (
                int(round(out))
                if dist.log or dist.step == 1
                else int(dist.low + round((out - dist.low) / dist.step) * dist.step)
            )
            out = min(max(out, dist.low), dist.high)
        steps.append(out)
    return steps


def _more_epochs(dist, ran: int) -> int | None:
    """The smallest Ne above ``ran`` that a searched Ne's distribution allows.

    ``None``: Ne is not searched, or allows none.
    """
    if isinstance(dist, CategoricalDistribution):
        above = [c for c in dist.choices if isinstance(c, int) and c > ran]
        return min(above) if above else None
    if not isinstance(dist, IntDistribution) or ran >= dist.high:
        return None
    value = max(ran + 1, dist.low)
    if not dist.log and dist.step > 1:
        value = dist.low + -(-(value - dist.low) // dist.step) * dist.step  # up to the next step
    return value if value <= dist.high else None


def objective_curves(study) -> dict[tuple, dict[int, float]]:
    """``config_key -> {epoch: objective}`` over the finished trials of each config.

    A warm start reports only its own epochs; the curve joins them to its source's.
    """
    curves: dict[tuple, dict[int, float]] = {}
    for trial, key, _ in finished_runs(study):
        curves.setdefault(key, {}).update(trial.intermediate_values)
    return curves


def configs_in_training(study, *, but: int) -> set[tuple]:
    """The ``config_key`` of every running trial but number ``but`` (the one being sampled)."""
    import optuna

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return {config_key(t.params) for t in running if t.number != but and t.params}


def epochs_measured(study) -> dict[tuple, int]:
    """``config_key -> the most epochs a finished trial of it ran`` (each one's objective known)."""
    ran: dict[tuple, int] = {}
    for _, key, epochs in finished_runs(study):
        ran[key] = max(ran.get(key, 0), epochs)
    return ran
