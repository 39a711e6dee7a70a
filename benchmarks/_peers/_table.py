"""A built table as the peers see it: a config's objective and seconds per (seed, epoch).

The search space is the product of the table's axis values. A table that is
a sample of that product answers for a config it lacks with its nearest
config (fewest value steps along the axes, then the first), so every peer
can propose freely.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from build_table import read_table  # noqa: E402 -- benchmarks/ is not a package


class Table:
    """Learning curves of every config, and the true objective (the mean over seeds).

    Args:
        path: A ``build_table.py`` table (JSON lines).
        objective: ``mse`` or ``combined`` (the search's objective, evaluated per epoch).
        weight: The combined objective's ``utilisation_weight``.
        equal_epochs: Every epoch costs one second instead of its table seconds: the time
            model of a library whose own loop runs the trials in real time (Ray Tune's, where a
            lookup takes no time, so every epoch costs its loop the same).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        objective: str = "mse",
        weight: float = 0.5,
        equal_epochs: bool = False,
    ):
        from caetune.search._objective import Objective

        header, curves = read_table(path)
        self.name = Path(path).stem
        self.header = header
        self.axes: list[str] = header["axes"]
        self.n_epochs: int = header["n_epochs"]
        self.seeds: list[int] = header["seeds"]
        rule = Objective(objective, weight)
        n_configs, n_seeds = len(header["configs"]), len(self.seeds)
        values = np.full((n_configs, n_seeds, self.n_epochs), np.nan)
        seconds = np.full((n_configs, n_seeds, self.n_epochs), np.nan)
        for curve in curves:
            s = self.seeds.index(curve["seed"])
            for e, mse in enumerate(curve["val_mse"]):
                util = {k: v[e] for k, v in curve.items() if isinstance(v, list) and "util" in k}
                values[curve["config"], s, e] = rule.evaluate(
                    math.inf if mse is None else mse, util
                )
                seconds[curve["config"], s, e] = curve["cpu_seconds"][e]
        complete = ~np.isnan(seconds[:, :, 0]).any(axis=1)  # every seed has a curve
        if not complete.any():
            raise ValueError(f"{path}: no config has a curve yet")
        # A diverged curve stops early: its later epochs stay diverged (inf) and cost one epoch
        # each at the curve's mean speed (a real run would have stopped; the lookup must not fail).
        diverged = np.isnan(values) & ~np.isnan(seconds[:, :, :1])
        values[diverged] = math.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a missing seed's all-NaN curve
            per_epoch = np.nanmean(seconds, axis=2, keepdims=True)
        self.values = values
        self.seconds = np.where(np.isnan(seconds), per_epoch, seconds)
        if equal_epochs:
            self.seconds = np.ones_like(self.seconds)
        # A config still missing a seed (a build in progress) is left out of the search.
        self.true = values.mean(axis=1)
        self.true[~complete] = np.inf
        self.best = float(np.min(self.true))
        self.values_of_axis = {
            a: sorted({c[a] for c in header["configs"]}, key=_order) for a in self.axes
        }
        self._index = {
            _key(c, self.axes): i for i, c in enumerate(header["configs"]) if complete[i]
        }
        self._seeds_of = {
            i: [s for s in range(n_seeds) if not np.isnan(values[i, s, 0])]
            for i in self._index.values()
        }

    def space_product(self) -> list[dict[str, Any]]:
        """Every config of the search space (the axes' product), in a fixed order."""
        axes = [self.values_of_axis[a] for a in self.axes]
        return [dict(zip(self.axes, v, strict=True)) for v in itertools.product(*axes)]

    def index(self, params: dict[str, Any]) -> int:
        """The table's config for these params (its nearest, for a sampled table)."""
        key = _key(params, self.axes)
        found = self._index.get(key)
        if found is not None:
            return found
        ranks = [self.values_of_axis[a].index(params[a]) for a in self.axes]

        def distance(item: tuple[tuple, int]) -> tuple[int, int]:
            other = [
                self.values_of_axis[a].index(v) for a, v in zip(self.axes, item[0], strict=True)
            ]
            return sum(abs(x - y) for x, y in zip(ranks, other, strict=True)), item[1]

        nearest = min(self._index.items(), key=distance)[1]
        self._index[key] = nearest
        return nearest

    def draw_seed(self, config: int, rng: np.random.Generator) -> int:
        """One of the config's seeds, as a real run of it would train with."""
        seeds = self._seeds_of[config]
        return int(seeds[rng.integers(len(seeds))])

    def threshold(self, within: float) -> float:
        """The true objective within ``within`` (0.05: 5%) of the table's best."""
        return self.best * (1 + within) if self.best >= 0 else self.best * (1 - within)


def _order(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _key(params: dict[str, Any], axes: list[str]) -> tuple:
    return tuple(params[a] for a in axes)
