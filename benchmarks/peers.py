"""caetune's search against its peers on a tabulated benchmark (``build_table.py``).

Each method runs its own library's real code; only training is a lookup in
the table: an evaluated config draws one of the table's seeds and reads its
curve. Time is counted in trial-epochs (epochs trained; a warm start does not
retrain the epochs it continues) and in simulated wall-clock with
``--workers`` workers, each epoch costing its table seconds, or one second
with ``--equal-epochs``. Ray Tune's methods run in their own loop, in real
time, where a lookup takes no time: every epoch costs that loop the same, so
their trial order is the ``--equal-epochs`` time model either way, and only
there are they compared like for like (on the cifar10test table the best
config's epochs cost 6.7x the mean: while it trains, the harness's other
workers spend about six times the trial-epochs Ray's do). A method's
anytime curve is the best true objective (the table's mean over seeds, at
the evaluated Ne) among everything it has evaluated so far.

Usage::

    .venv/bin/python benchmarks/peers.py --table benchmarks/tables/mnist10k.jsonl --reps 20 \\
        --json benchmarks/results/peers_mnist10k.json --png benchmarks/results/peers_mnist10k.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` as a package

from benchmarks._peers._asktell import Caetune, Dehb, OptunaPruned, RandomAsha  # noqa: E402
from benchmarks._peers._libraries import run_ray, run_syne  # noqa: E402
from benchmarks._peers._loop import simulate  # noqa: E402
from benchmarks._peers._table import Table  # noqa: E402

FLOOR = 1e-3  # where the anytime figure draws a gap of 0
HORIZON = 800  # trial-epochs: twice the paper's 20-point grid of Ne <= 20

# Their own loop runs the trials in real time, and a lookup takes none: every epoch costs it the
# same, whatever the table says. Their trial-epochs follow that order even without --equal-epochs,
# so their rows say so; --equal-epochs puts every method in that time model.
REAL_TIME = frozenset({"ray-optuna-asha", "ray-bohb"})

Runner = Callable[..., np.ndarray]  # (table, seed, budget=, workers=) -> [n, 3] events


def _loop(make) -> Runner:
    def run(table, seed, *, budget, workers):
        return simulate(make(table, seed), table, budget=budget, workers=workers)

    return run


METHODS: dict[str, Runner] = {
    "caetune": _loop(Caetune),
    "caetune-no-neighbours": _loop(lambda t, s: Caetune(t, s, neighbours=False)),
    "caetune-no-promote": _loop(lambda t, s: Caetune(t, s, promote=False)),
    "caetune-no-explore": _loop(lambda t, s: Caetune(t, s, explore=False)),
    "caetune-ne-budget": _loop(lambda t, s: Caetune(t, s, ne_budget=True)),
    "optuna-tpe-hyperband": _loop(lambda t, s: OptunaPruned(t, s, pruner="hyperband")),
    "optuna-tpe-sha": _loop(lambda t, s: OptunaPruned(t, s, pruner="sha")),
    "random-asha": _loop(RandomAsha),
    "dehb": _loop(Dehb),
    "ray-optuna-asha": lambda t, s, **kw: run_ray(t, s, method="ray-optuna-asha", **kw),
    "ray-bohb": lambda t, s, **kw: run_ray(t, s, method="ray-bohb", **kw),
    "syne-asha": lambda t, s, **kw: run_syne(t, s, method="syne-asha", **kw),
    "syne-bohb": lambda t, s, **kw: run_syne(t, s, method="syne-bohb", **kw),
}


def time_to(events: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """Trial-epochs and simulated seconds at which the best true objective first is <= threshold.

    Events are in the order they happened; ``None`` when it never got there.
    """
    hit = np.flatnonzero(events[:, 2] <= threshold) if len(events) else np.array([], dtype=int)
    if not len(hit):
        return None, None
    return float(events[hit[0], 0]), float(events[hit, 1].min())


def summarise(name: str, runs: list[np.ndarray], table: Table) -> dict:
    """One method's row of the JSON: medians over reps (an unreached rep counts as never)."""
    row: dict = {"method": name, "reps": len(runs)}
    for pct, within in (("5pct", 0.05), ("1pct", 0.01)):
        hits = [time_to(r, table.threshold(within)) for r in runs]
        epochs = [h[0] if h[0] is not None else np.inf for h in hits]
        walls = [h[1] if h[1] is not None else np.inf for h in hits]
        row[f"median_epochs_to_{pct}"] = _finite(np.median(epochs))
        row[f"median_wallclock_to_{pct}"] = _finite(np.median(walls))
        row[f"reached_{pct}"] = sum(e <= HORIZON for e in epochs) / len(runs)
    if name in REAL_TIME:
        row["trial_order"] = "real time: every epoch costs its loop the same"
    return row


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def anytime(runs: list[np.ndarray], grid: np.ndarray, column: int) -> np.ndarray:
    """Quartiles ``[3, len(grid)]`` over reps of the best true objective by time (0: epochs)."""
    curves = []
    for events in runs:
        order = np.argsort(events[:, column], kind="stable")
        times, best = events[order, column], np.minimum.accumulate(events[order, 2])
        at = np.searchsorted(times, grid, side="right") - 1
        curves.append(np.where(at >= 0, best[np.maximum(at, 0)], np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # before any rep's first evaluation
        return np.nanpercentile(np.array(curves), [25, 50, 75], axis=0)


def plot(results: dict[str, list[np.ndarray]], table: Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, column, label in ((axes[0], 0, "trial-epochs"), (axes[1], 1, "simulated seconds")):
        end = max(float(r[:, column].max()) for runs in results.values() for r in runs if len(r))
        grid = np.linspace(0, end, 200)
        for name, runs in results.items():
            gap = anytime([r for r in runs if len(r)], grid, column) / table.best - 1
            q = np.maximum(gap, FLOOR)  # the best itself (gap 0) shows on the log axis
            (line,) = ax.plot(grid, q[1], label=name, lw=2.5 if name == "caetune" else 1.2)
            ax.fill_between(grid, q[0], q[2], color=line.get_color(), alpha=0.12)
        ax.axhline(0.05, color="grey", ls=":", lw=1)
        ax.axhline(0.01, color="grey", ls=":", lw=1)
        ax.set(
            xlabel=label,
            ylabel=f"best true objective / table's best - 1 ({FLOOR:g}: the best)",
            yscale="log",
            title=f"{table.name}: median and quartiles over reps",
        )
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(name: str, table: Table, rep: int, args) -> np.ndarray:
    """One rep's events, read from ``--cache`` when an earlier run kept them."""
    if not args.cache:
        return METHODS[name](table, rep, budget=args.budget, workers=args.workers)
    digest = hashlib.sha256(Path(args.table).read_bytes()).hexdigest()[:12]  # a rebuilt table
    setting = f"{args.objective}_w{args.workers}_b{args.budget}" + (
        "_equal" if args.equal_epochs else ""
    )
    folder = Path(args.cache) / f"{table.name}-{digest}_{setting}"
    path = folder / f"{name}_{rep}.npy"
    if path.exists():
        return np.load(path)
    events = METHODS[name](table, rep, budget=args.budget, workers=args.workers)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npy")
    np.save(partial, events)
    partial.replace(path)  # a kill never leaves half a rep
    return events


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True, help="a build_table.py table (JSON lines)")
    parser.add_argument("--reps", type=int, default=20, help="repetitions (seeds) per method")
    parser.add_argument("--json", help="default benchmarks/results/peers_<table>.json")
    parser.add_argument("--png", help="the anytime curves (default: --json's path, .png)")
    parser.add_argument("--workers", type=int, default=4, help="simulated parallel workers")
    parser.add_argument("--budget", type=int, default=1000, help="trial-epochs per search")
    parser.add_argument("--objective", choices=("mse", "combined"), default="mse")
    parser.add_argument(
        "--equal-epochs",
        action="store_true",
        help="every epoch costs one second, not its table seconds: the time model Ray Tune's "
        "methods run in (their loop runs in real time, and a lookup takes none)",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument(
        "--reps-for",
        action="append",
        default=[],
        metavar="METHOD=N",
        help="another number of reps for one method (the JSON says each method's reps)",
    )
    parser.add_argument(
        "--cache",
        help="a folder keeping each (method, rep)'s events: a run continues where a killed one "
        "stopped, and several runs with other --methods share the work",
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    for flag, bad in (
        ("--reps", args.reps < 1),
        ("--workers", args.workers < 1),
        ("--budget", args.budget < 1),
    ):
        if bad:
            parser.exit(2, f"{flag}: expected an integer >= 1\n")
    if unknown:
        parser.exit(2, f"--methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}\n")
    reps = dict.fromkeys(methods, args.reps)
    for item in args.reps_for:
        name, _, count = item.partition("=")
        if name not in reps or not count.isdigit() or int(count) < 1:
            parser.exit(2, f"--reps-for: expected METHOD=N, N >= 1, of a chosen method: {item}\n")
        reps[name] = int(count)
    try:
        table = Table(args.table, objective=args.objective, equal_epochs=args.equal_epochs)
    except (OSError, ValueError, KeyError) as err:
        parser.exit(2, f"--table: {err}\n")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Path(args.json or Path(__file__).parent / "results" / f"peers_{table.name}.json")
    results: dict[str, list[np.ndarray]] = {}
    rows = []
    for name in methods:
        start = time.perf_counter()
        results[name] = [_run(name, table, rep, args) for rep in range(reps[name])]
        rows.append(
            {
                **summarise(name, results[name], table),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "table": table.name,
        "objective": args.objective,
        "workers": args.workers,
        "budget": args.budget,
        "epoch_seconds": "equal" if args.equal_epochs else "table",
        "best": table.best,
        "methods": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    plot(results, table, Path(args.png) if args.png else out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()
