"""Spend no trial on a point the search has already measured: explore instead.

On small spaces (a few choices of Nn and Nm, Ne up to 20) TPE settles on the
configs it likes and proposes them again and again. Since training does not
depend on Ne (:mod:`caetune.search._warm`), a proposal ``(config, Ne)`` is
already *measured* when a finished trial of the same config ran at least Ne
epochs: the objective after epoch Ne was reported then. Running it again
teaches the sampler nothing (and, with a warm start, trains nothing). Seen in
the search benchmark: 86 of 200 trials were such repeats, while the only
config within 5% of the grid's best, a slow starter that ASHA had stopped
early, was proposed four times.

:class:`ExploringSampler` wraps the search's sampler: when the sampler's
proposal is already measured, it draws random points of the same space
instead and proposes the first that is not (uniformly, with the study's
seed), so the trial explores. Only the sampler's model-based proposals are
checked (its random start-up trials are random already), and enqueued points
(the presets' start points) are left as they are.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.samplers import BaseSampler, RandomSampler

from caetune.search._warm import config_key

DRAWS = 256  # random draws per repeat before giving up (a space every point of which is measured)


class ExploringSampler(BaseSampler):
    """A sampler that replaces proposals of already-measured points by unmeasured random ones.

    Args:
        inner: The sampler that proposes (TPE).
        n_epochs_of: ``params -> Ne`` (searched, or fixed by the space).
        seed: Seeds the random draws.
    """

    def __init__(self, inner: BaseSampler, *, n_epochs_of: Callable[[dict[str, Any]], int], seed: int | None):
        self._inner = inner
        self._n_epochs_of = n_epochs_of
        self._random = RandomSampler(seed=seed)
        self.explored = 0  # proposals replaced, for tests and logs

    def infer_relative_search_space(self, study, trial) -> dict:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space: dict) -> dict[str, Any]:
        params = self._inner.sample_relative(study, trial, search_space)
        if not params or set(params) != set(search_space):
            return params  # start-up (random) or a partial proposal: nothing to judge
        ran = epochs_measured(study)
        measured = lambda p: ran.get(config_key(p), 0) >= self._n_epochs_of(p)  # noqa: E731
        if not measured(params):
            return params
        for _ in range(DRAWS):
            other = {name: self._random.sample_independent(study, trial, name, dist) for name, dist in search_space.items()}
            if not measured(other):
                self.explored += 1
                return other
        return params  # every point drawn is measured: the space is (nearly) exhausted

    def sample_independent(self, study, trial, param_name: str, param_distribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
        self._random.reseed_rng()


def epochs_measured(study) -> dict[tuple, int]:
    """``config_key -> the most epochs a finished trial of that config ran`` (its objective after each is known)."""
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ran: dict[tuple, int] = {}
    for trial in study.get_trials(deepcopy=False, states=finished):
        key = config_key(trial.params)
        ran[key] = max(ran.get(key, 0), int(trial.user_attrs.get("epochs_run") or 0))
    return ran
