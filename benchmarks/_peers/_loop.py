"""W simulated workers driving an ask/tell method over a table, in simulated time.

Each epoch of a run costs its table seconds (the curve's own CPU seconds); a
run continued from an earlier one (caetune's warm starts) trains only the
epochs after. Every epoch a run reports is an evaluation of (config, Ne =
that epoch), recorded as ``(trial-epochs so far, simulated seconds, the
table's true objective of it)``. The search ends once ``budget``
trial-epochs are spent: the runs still going stop at their next epoch.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

FAILED_VALUE = 1.0e3  # what a library is told for a diverged epoch (some refuse inf)


@dataclass
class Run:
    """One trial: a config (the table's index), its seed, its Ne, the epochs its model has."""

    config: int
    seed: int
    n_epochs: int
    epoch: int = 0
    handle: Any = None  # the library's own trial object


class Method(Protocol):
    def start(self) -> Run | None: ...

    def result(self, run: Run, epoch: int, value: float) -> bool: ...

    def end(self, run: Run, value: float) -> None: ...


def simulate(method: Method, table, *, budget: int, workers: int) -> np.ndarray:
    """Runs ``method`` until ``budget`` trial-epochs: ``[n, 3]`` events (epochs, seconds, true)."""
    running: list[tuple[float, int, Run]] = []
    events: list[tuple[int, float, float]] = []
    used, count = 0, 0

    def cost(run: Run) -> float:
        return (
            float(table.seconds[run.config, run.seed, run.epoch])
            if run.epoch < run.n_epochs
            else 0.0
        )

    def launch(now: float) -> None:
        nonlocal count
        run = method.start()
        if run is not None:
            count += 1
            heapq.heappush(running, (now + cost(run), count, run))

    for _ in range(workers):
        launch(0.0)
    while running:
        now, n, run = heapq.heappop(running)
        if run.epoch < run.n_epochs:
            run.epoch += 1
            used += 1
        value = float(table.values[run.config, run.seed, run.epoch - 1])
        events.append((used, now, float(table.true[run.config, run.epoch - 1])))
        told = value if math.isfinite(value) else FAILED_VALUE
        go_on = method.result(run, run.epoch, told) and run.epoch < run.n_epochs
        if go_on and used < budget:
            heapq.heappush(running, (now + cost(run), n, run))
            continue
        method.end(run, told)
        if used < budget:
            launch(now)
    return np.array(events, dtype=float).reshape(-1, 3)


def wallclock(trials: list[list[tuple[int, int, int]]], table, *, workers: int) -> list[float]:
    """Simulated end time of every epoch of trials run in this order on ``workers`` workers.

    For libraries whose own loop runs the trials (Ray Tune): each trial
    (a list of ``(config, seed, epoch)``, one per epoch it trained) takes the
    next free worker. Returns the times in the trials' epoch order, flattened.
    """
    free = [0.0] * workers
    times = []
    for trial in trials:
        now = heapq.heappop(free)
        for config, seed, epoch in trial:
            now += float(table.seconds[config, seed, epoch - 1])
            times.append(now)
        heapq.heappush(free, now)
    return times
