"""The search driver's memory over many short trials: fits of ``TRIALS_PER_FIT`` against one
``Tuner.fit``.

Each variant runs in its own process (its own Ray, imports and heap): a real
``run_search`` on mnist-10k (100 images, Nn 4-16, Nm 1-4, one epoch, two
trials at a time, no seed confirmation), with a Ray Tune callback sampling
the driver as each trial ends: RSS (all of it anonymous memory here),
glibc's main heap (``mallinfo2``: in use, and its size) and Python's count
of allocated blocks. Reported per variant: the least-squares slope of each
over the trials after the first ``--warm-up``, and over the second half of
the trials, in KiB per trial; then the ratio of the one-fit slopes to the
fitted ones.

Usage::

    # 1200 trials each, ~6 min on 2 cores
    .venv/bin/python benchmarks/driver_memory.py
    .venv/bin/python benchmarks/driver_memory.py --trials 300 --json memory.json
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACE = Path(__file__).with_name(
    "one_epoch_space.yaml"
)  # the load test's trials (tests/faults/test_load.py)
SERIES = ("rss", "heap_in_use", "heap_size", "py_blocks")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2


def _sample() -> tuple[float, ...]:
    """(RSS, glibc main heap in use, its size incl. mmapped blocks, Python's allocated blocks)."""
    import psutil

    info = _mallinfo2()()
    return (
        psutil.Process().memory_info().rss,
        info.uordblks,
        info.arena + info.hblkhd,
        sys.getallocatedblocks(),
    )


def run_one(trials: int, per_fit: int, seed: int) -> dict:
    """One search in this process; the samples as each trial ended."""
    from ray.tune import Callback

    from caetune.search import SearchSettings, _run, run_search

    class Sampler(Callback):
        # Tuner pickles its RunConfig, this class by value: it must name no ctypes global.
        def __init__(self, sample) -> None:
            self.sample, self.rows = sample, []

        def __getstate__(self) -> dict:
            return {}

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.rows.append((len(self.rows) + 1, *self.sample()))

    _run.TRIALS_PER_FIT = per_fit
    sampler = Sampler(_sample)
    with tempfile.TemporaryDirectory(prefix="caetune-memory-") as folder:
        settings = SearchSettings(
            space=str(SPACE),
            run_root=str(Path(folder) / "runs"),
            name="memory",
            num_samples=trials,
            max_concurrent=2,
            grace_period=10,
            seed=seed,
            confirm_seeds=0,
            report=False,
        )
        started = time.monotonic()
        run_search(settings, stream=io.StringIO(), out=io.StringIO(), callbacks=[sampler])
        wall = time.monotonic() - started
    return {"per_fit": per_fit, "wall_s": wall, "rows": sampler.rows}


def summarise(run: dict, *, warm_up: int) -> dict:
    rows = np.array(run["rows"], dtype=float)
    half = rows[:, 0].max() / 2
    out = {"per_fit": run["per_fit"], "wall_s": round(run["wall_s"], 1), "trials": len(rows)}
    for i, name in enumerate(SERIES, start=1):
        unit = 1 if name == "py_blocks" else 1024
        for label, keep in (
            ("after_warm_up", rows[:, 0] >= warm_up),
            ("second_half", rows[:, 0] > half),
        ):
            out[f"{name}_{label}"] = round(
                float(np.polyfit(rows[keep, 0], rows[keep, i], 1)[0]) / unit, 1
            )
    out["rss_mib_first_last"] = [round(rows[0, 1] / 2**20), round(rows[-1, 1] / 2**20)]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1200, help="trials per variant")
    parser.add_argument(
        "--per-fit", type=int, default=None, help="trials per Tuner.fit (default: caetune's)"
    )
    parser.add_argument("--warm-up", type=int, default=30, help="trials before the slope is taken")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", help="write the summary (and every sample) here")
    parser.add_argument(
        "--one", type=int, help=argparse.SUPPRESS
    )  # a child: run this per_fit, print JSON
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.trials, args.one, args.seed)))
        return {}

    from caetune.search._run import TRIALS_PER_FIT

    per_fit = args.per_fit or TRIALS_PER_FIT
    runs = []
    for variant in (per_fit, args.trials):  # fitted, then one fit
        child = [
            sys.executable,
            __file__,
            "--one",
            str(variant),
            "--trials",
            str(args.trials),
            "--seed",
            str(args.seed),
        ]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = [summarise(run, warm_up=args.warm_up) for run in runs]
    print(
        f"driver memory over {args.trials} one-epoch trials, KiB per trial (py_blocks: blocks per "
        "trial)"
    )
    print(
        f"{'trials per fit':>16} {'wall s':>7} "
        + " ".join(f"{s + ' all / 2nd half':>30}" for s in SERIES)
    )
    for s in summary:
        cells = " ".join(
            f"{s[name + '_after_warm_up']:>14} / {s[name + '_second_half']:<13}" for name in SERIES
        )
        print(f"{s['per_fit']:>16} {s['wall_s']:>7} {cells}")
    fitted, whole = summary
    ratio = {
        k: round(whole[k] / fitted[k], 2)
        for k in ("rss_after_warm_up", "rss_second_half")
        if fitted[k] > 0
    }
    print(
        f"one fit / fits of {per_fit}: RSS slope x{ratio.get('rss_after_warm_up')}, second half "
        f"x{ratio.get('rss_second_half')}; "
        f"wall x{whole['wall_s'] / fitted['wall_s']:.2f}"
    )
    result = {
        "trials": args.trials,
        "warm_up": args.warm_up,
        "variants": summary,
        "ratio_one_fit_to_fitted": ratio,
    }
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {**result, "samples": {str(r["per_fit"]): r["rows"] for r in runs}}, indent=1
            )
        )
    return result


if __name__ == "__main__":
    main()
