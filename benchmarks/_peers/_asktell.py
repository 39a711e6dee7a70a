"""The methods driven by :func:`~._loop.simulate`: caetune, Optuna alone, random + ASHA, DEHB.

Each holds its library's real objects (Optuna's samplers and pruners, Ray's
ASHA bracket, caetune's ExploringSampler, DEHB's ask/tell) and only answers
the loop's three calls.
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from benchmarks._peers._loop import Run


class _Trial:  # what Ray's ASHA bracket needs of a Tune trial
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def _space(table) -> dict[str, Any]:
    return {a: CategoricalDistribution(v) for a, v in table.values_of_axis.items()}


class Caetune:
    """caetune's default search: its TPE settings, ExploringSampler, Ray's ASHA, warm starts.

    As :mod:`caetune.search` runs it: Ne is searched (1..the table's epochs);
    a proposal of a config a finished trial trained continues that trial's
    model (and its seed) up to the new Ne. ``ne_budget``: Ne is not searched
    but fixed at the table's epochs, ASHA's budget (a space with a fixed Ne).
    """

    def __init__(
        self,
        table,
        seed: int,
        *,
        explore: bool = True,
        promote: bool = True,
        ne_budget: bool = False,
        neighbours: bool = True,
        num_samples: int = 200,
    ):
        from caetune.search._asha import AshaSettings
        from caetune.search._defaults import DEFAULTS
        from caetune.search._searcher import default_startup_trials, search_sampler

        self.table, self.rng = table, np.random.default_rng(seed)
        self.space = _space(table)
        if not ne_budget:
            self.space["n_epochs"] = IntDistribution(1, table.n_epochs)
        asha = AshaSettings(
            grace_period=DEFAULTS["grace_period"],
            reduction_factor=DEFAULTS["reduction_factor"],
            max_t=table.n_epochs,
        )
        sampler = search_sampler(
            seed=seed,
            n_startup_trials=default_startup_trials(num_samples),
            n_epochs_of=(lambda p: p.get("n_epochs", table.n_epochs)) if explore else None,
            rungs=asha.rungs() if promote else (),
            reduction_factor=asha.reduction_factor,
            neighbours=neighbours,
        )
        self.study = optuna.create_study(sampler=sampler)
        self.bracket = asha.scheduler(metric="objective")._brackets[0]  # the one Ray's ASHA uses
        self.finished: dict[int, list[tuple[int, int]]] = {}  # config -> (epochs, seed) of its runs

    def start(self) -> Run:
        ask = self.study.ask(self.space)
        config = self.table.index(ask.params)
        n_epochs = ask.params.get("n_epochs", self.table.n_epochs)
        warm = max((r for r in self.finished.get(config, []) if r[0] <= n_epochs), default=None)
        if warm is None:
            return Run(config, self.table.draw_seed(config, self.rng), n_epochs, 0, ask)
        return Run(config, warm[1], n_epochs, warm[0], ask)

    def result(self, run: Run, epoch: int, value: float) -> bool:
        run.handle.report(value, epoch)
        return self.bracket.on_result(_Trial(str(run.handle.number)), epoch, -value) != "STOP"

    def end(self, run: Run, value: float) -> None:
        from caetune.search._attrs import EPOCHS_RUN_ATTR

        run.handle.set_user_attr(EPOCHS_RUN_ATTR, run.epoch)
        if run.epoch >= run.n_epochs:
            self.study.tell(run.handle, value)
        else:
            self.study.tell(run.handle, state=optuna.trial.TrialState.PRUNED)
        self.finished.setdefault(run.config, []).append((run.epoch, run.seed))


class OptunaPruned:
    """Optuna alone, as its docs write it: a sampler, a pruner, Ne as the trial's steps."""

    def __init__(self, table, seed: int, *, pruner: str, sampler: str = "tpe"):
        self.table, self.rng = table, np.random.default_rng(seed)
        self.space = _space(table)
        if pruner == "hyperband":
            chosen: optuna.pruners.BasePruner = optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=table.n_epochs, reduction_factor=3
            )
        else:
            chosen = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
        samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
        self.study = optuna.create_study(sampler=samplers[sampler](seed=seed), pruner=chosen)

    def start(self) -> Run:
        trial = self.study.ask(self.space)
        config = self.table.index(trial.params)
        return Run(config, self.table.draw_seed(config, self.rng), self.table.n_epochs, 0, trial)

    def result(self, run: Run, epoch: int, value: float) -> bool:
        run.handle.report(value, epoch)
        return not run.handle.should_prune()

    def end(self, run: Run, value: float) -> None:
        if run.epoch >= run.n_epochs:
            self.study.tell(run.handle, value)
        else:
            self.study.tell(run.handle, state=optuna.trial.TrialState.PRUNED)


class RandomAsha(Caetune):
    """Random search + ASHA (Ray's bracket, caetune's grace period and reduction factor)."""

    def __init__(self, table, seed: int):
        super().__init__(table, seed, explore=False)
        self.study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        self.space = _space(table)  # Ne is ASHA's budget, not searched

    def start(self) -> Run:
        ask = self.study.ask(self.space)
        config = self.table.index(ask.params)
        return Run(config, self.table.draw_seed(config, self.rng), self.table.n_epochs, 0, ask)


def config_space(table, seed: int, *, ordinal: bool = True):
    """The table's space as a ConfigSpace: ordinal numbers (DEHB), or all categorical.

    (hpbandster's BOHB, under Ray's TuneBOHB, refuses ordinal parameters.)
    """
    import ConfigSpace as CS

    space = CS.ConfigurationSpace(seed=seed)
    for axis, values in table.values_of_axis.items():
        if ordinal and all(isinstance(v, (int, float)) for v in values):
            space.add(CS.OrdinalHyperparameter(axis, values))
        else:
            space.add(CS.CategoricalHyperparameter(axis, values))
    return space


class Dehb:
    """DEHB's ask/tell: each job trains its config from scratch for its fidelity (epochs)."""

    def __init__(self, table, seed: int):
        from dehb import DEHB
        from loguru import logger

        logger.remove()  # DEHB logs every step to stderr
        self.table, self.rng = table, np.random.default_rng(seed)
        self.folder = tempfile.TemporaryDirectory(prefix="peers-dehb-")  # its state files
        cs = config_space(table, seed)
        self.dehb = DEHB(
            cs=cs,
            dimensions=len(list(cs.values())),
            min_fidelity=1,
            max_fidelity=table.n_epochs,
            eta=3,
            n_workers=1,
            seed=seed,
            output_path=self.folder.name,
            save_freq=None,
        )

    def start(self) -> Run:
        job = self.dehb.ask()
        config = self.table.index(dict(job["config"]))
        n_epochs = max(1, min(self.table.n_epochs, int(round(job["fidelity"]))))
        return Run(config, self.table.draw_seed(config, self.rng), n_epochs, 0, job)

    def result(self, run: Run, epoch: int, value: float) -> bool:
        return True

    def end(self, run: Run, value: float) -> None:
        cost = float(self.table.seconds[run.config, run.seed, : run.epoch].sum())
        self.dehb.tell(run.handle, {"fitness": value, "cost": cost})
