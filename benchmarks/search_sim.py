"""Simulate ``caetune search`` on the grids of ``search_bench.py``: many sampler seeds in seconds.

One real benchmark run is one draw: which trials ASHA stops depends on the
order results arrive in, and a lucky start-up trial can land on the best
config at once. This replays the search on a grid's table of objectives (the
grid *is* the search's ground truth: every trial of a real run matched its
grid point exactly) with the search's real parts: Optuna's TPE sampler with
caetune's settings (seeded, multivariate, constant liar, 10 start-up
trials), caetune's :class:`~caetune.search._explore.ExploringSampler` around
it (``--no-explore`` leaves it out, ``--no-promote`` its promotions), Ray's
own ASHA bracket (grace period, reduction factor) deciding on each epoch's
objective, and warm starts (a proposal continues the same config's longest
finished trial up to its Ne, and trains only the epochs after). Time is
counted in epochs: every epoch takes one unit, ``--concurrency`` trials run
at once. The cost of a run is the same as the benchmark's: epochs trained,
in trial order, up to the first complete trial within 5% of the grid's best;
a run that never gets there counts as 100%.

Usage::

    .venv/bin/python benchmarks/search_bench.py --grids-only --json grids.json
    .venv/bin/python benchmarks/search_sim.py grids.json --runs 24
"""

from __future__ import annotations

import argparse
import heapq
import json

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from caetune.search._asha import AshaSettings
from caetune.search._attrs import EPOCHS_RUN_ATTR
from caetune.search._defaults import DEFAULTS
from caetune.search._explore import ExploringSampler
from caetune.search._searcher import default_startup_trials

WITHIN = 0.05


class _Trial:  # what ASHA's bracket needs of a Tune trial
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def simulate(
    grid: dict,
    seed: int,
    *,
    num_samples: int,
    explore: bool,
    promote: bool,
    grace: int,
    rf: float,
    concurrency: int,
) -> dict:
    """One search on one grid: whether it came within 5%, and at what share of the grid's
    trial-epochs.
    """
    table = {(c["n_neurons"], c["n_maps"]): c["objective"] for c in grid["configs"]}
    max_t = len(next(iter(table.values())))
    threshold = grid["best"]["objective"] * (1 + WITHIN)
    space = {
        "n_neurons": CategoricalDistribution(sorted({k[0] for k in table})),
        "n_maps": CategoricalDistribution(sorted({k[1] for k in table})),
        "n_epochs": IntDistribution(1, max_t),
    }
    sampler = optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        constant_liar=True,
        n_startup_trials=default_startup_trials(num_samples),
    )
    asha = AshaSettings(grace_period=grace, reduction_factor=rf, max_t=max_t)
    if explore:
        rungs = asha.rungs() if promote else ()
        sampler = ExploringSampler(
            sampler,
            n_epochs_of=lambda p: p["n_epochs"],
            seed=seed,
            rungs=rungs,
            reduction_factor=rf,
        )
    study = optuna.create_study(sampler=sampler)
    bracket = asha.scheduler(metric="objective")._brackets[0]  # the one Ray's ASHA judges with
    finished: dict[tuple, list[int]] = {}  # config -> epochs run by its finished trials
    trials, running = [], []  # running: a heap of (time of its next epoch's end, number, trial)

    def start(now: float) -> None:
        ask = study.ask(space)
        key, n_epochs = (ask.params["n_neurons"], ask.params["n_maps"]), ask.params["n_epochs"]
        warm = max((e for e in finished.get(key, []) if e <= n_epochs), default=0)
        trial = {
            "ask": ask,
            "key": key,
            "n_epochs": n_epochs,
            "epoch": warm,
            "trained": 0,
            "n": len(trials),
        }
        trials.append(trial)
        heapq.heappush(running, (now + (1 if warm < n_epochs else 0), trial["n"], trial))

    for _ in range(min(concurrency, num_samples)):
        start(0.0)
    while running:
        now, _, trial = heapq.heappop(running)
        if trial["epoch"] < trial["n_epochs"]:
            trial["epoch"] += 1
            trial["trained"] += 1
        epoch, value = trial["epoch"], table[trial["key"]][trial["epoch"] - 1]
        trial["ask"].report(value, epoch)
        stop = bracket.on_result(_Trial(str(trial["n"])), epoch, -value) == "STOP"
        if epoch < trial["n_epochs"] and not stop:
            heapq.heappush(running, (now + 1, trial["n"], trial))
            continue
        trial["ask"].set_user_attr(EPOCHS_RUN_ATTR, epoch)
        trial["complete"], trial["value"] = epoch >= trial["n_epochs"], value
        if trial["complete"]:
            study.tell(trial["ask"], value)
        else:
            study.tell(trial["ask"], state=optuna.trial.TrialState.PRUNED)
        finished.setdefault(trial["key"], []).append(epoch)
        if len(trials) < num_samples:
            start(now)
    used = 0
    for trial in trials:
        used += trial["trained"]
        if trial["complete"] and trial["value"] <= threshold:
            return {"reached": True, "ratio": used / (len(table) * max_t)}
    return {"reached": False, "ratio": 1.0}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", help="a search_bench.py --json file (its grids are used)")
    parser.add_argument("--runs", type=int, default=24, help="sampler seeds per grid")
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument(
        "--no-explore", dest="explore", action="store_false", help="TPE's proposals as they are"
    )
    parser.add_argument(
        "--no-promote",
        dest="promote",
        action="store_false",
        help="the ExploringSampler without promotions",
    )
    parser.add_argument("--grace-period", type=int, default=DEFAULTS["grace_period"])
    parser.add_argument("--reduction-factor", type=float, default=DEFAULTS["reduction_factor"])
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    grids = json.loads(open(args.grids).read())["grids"]
    summary = {}
    for name, grid in sorted(grids.items()):
        runs = [
            simulate(
                grid,
                seed,
                num_samples=args.num_samples,
                explore=args.explore,
                promote=args.promote,
                grace=args.grace_period,
                rf=args.reduction_factor,
                concurrency=args.concurrency,
            )
            for seed in range(args.runs)
        ]
        summary[name] = {
            "reached": sum(r["reached"] for r in runs),
            "mean_ratio": float(np.mean([r["ratio"] for r in runs])),
        }
        print(
            f"grid {name}: within 5% in {summary[name]['reached']}/{args.runs} runs, mean cost "
            f"{summary[name]['mean_ratio']:.1%}"
        )
    mean = float(np.mean([s["mean_ratio"] for s in summary.values()]))
    print(
        "all grids: within 5% in "
        f"{sum(s['reached'] for s in summary.values())}/{args.runs * len(summary)} runs, "
        f"mean cost {mean:.1%} (an unreached run counts 100%)"
    )
    return {"grids": summary, "mean_ratio": mean}


if __name__ == "__main__":
    main()
