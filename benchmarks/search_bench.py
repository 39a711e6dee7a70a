"""Search efficiency and overhead of ``caetune search``, measured in one run.

The issue's two search benchmarks, at reduced scale:

* **Efficiency**: the paper's grid (Nn in {40, 160, 640, 2560} x Nm in
  {8, 16, 24, 32, 40}, Ne up to ``--max-epochs``, Model 1, mnist-10k with
  ``--subset`` images) is trained in full, every config for the max Ne, with
  the objective recorded after every epoch; since training does not depend on
  the epoch budget (no schedule), epoch e of a max-Ne run *is* the grid point
  Ne = e. The grid costs 20 x Ne trial-epochs; its best objective is the
  minimum over all 20 x Ne points. Then ``run_search`` (ASHA on, the paper's
  start point off, no confirmation) searches the same categorical Nn/Nm values
  with Ne an int range 1..max. Each of ``--seeds`` is one replicate: the grid
  is trained with that seed and the search runs with it (the search's seed
  seeds its trials' training too, so only a same-seed grid is its ground
  truth). A search's cost to come within 5% of the grid's best is the sum of
  ``epochs_trained`` (the epochs a trial trained itself; a trial that
  continued an earlier trial of its config did not train that one's epochs)
  over its trials in proposal order (trial ids), up to and including the
  first *complete* trial whose objective is <= 1.05 x the grid's best (the
  search is stopped there, once every trial proposed before that one has
  ended: the later trials would not count).
  Ratio = that / grid total; a seed that never gets there is flagged and
  charged all its trial-epochs. Target: mean ratio <= 30%.
* **Overhead**: one sequential search (``max_concurrent=1``, tiny configs,
  1-2 epochs); overhead per trial = (wall time of ``run_search`` - the sum of
  the trials' own ``seconds``) / trials. Ray is started before and its
  start-up is reported separately. Target: < 1 s per trial.

The grid uses the search's own code path for the objective
(:func:`caetune.search._trainable.epoch_metrics`, the same ``TrainConfig``
the search builds from the same space with the same seed, one torch thread
like a trial with ``cpus_per_trial=1``), so its objectives are the ones the
search sees; every search's trials are checked against their grid
(``grid_consistency``: 0 means bit-identical).

Usage::

    .venv/bin/python benchmarks/search_bench.py --json search_bench.json
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

N_NEURONS = [40, 160, 640, 2560]  # the paper's Nn grid
N_MAPS = [8, 16, 24, 32, 40]  # the paper's Nm grid
WITHIN = 0.05  # "within 5% of the grid's best objective"
TARGET_RATIO = 0.30
TARGET_OVERHEAD_S = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--subset", type=int, default=1500, help="mnist-10k images used (train + val)"
    )
    parser.add_argument(
        "--max-epochs", type=int, default=20, help="the grid's Ne and the search's cap"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=200,
        help="trials per efficiency search (only the epochs up to the first hit count)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--util-images", type=int, default=128)
    parser.add_argument(
        "--batch-size", type=int, default=64, help="fixed in the space (0: TrainConfig's)"
    )
    parser.add_argument(
        "--reduction-factor", type=float, default=None, help="ASHA's (default: caetune search's)"
    )
    parser.add_argument("--overhead-trials", type=int, default=12)
    parser.add_argument("--num-cpus", type=int, default=2, help="the local Ray's CPUs")
    parser.add_argument(
        "--workdir",
        default=None,
        help="where the runs go, kept (default: a temporary folder, deleted at the end)",
    )
    parser.add_argument(
        "--grids-from",
        default=None,
        metavar="JSON",
        help="reuse the grids of an earlier run's --json (same scale and seeds; training is "
        "deterministic, and grid_consistency checks it)",
    )
    parser.add_argument(
        "--grids-only",
        action="store_true",
        help="train the grids, write them to --json (for --grids-from) and stop",
    )
    parser.add_argument("--json", default=None, help="write all numbers here")
    return parser.parse_args(argv)


def write_space(folder: Path, name: str, params: dict, fixed: dict) -> Path:
    path = folder / f"{name}.yaml"
    doc = {
        "description": f"search benchmark: {name}",
        "fixed": {"dataset": "mnist-10k", "model": "model1", **fixed},
    }
    path.write_text(yaml.safe_dump({**doc, "params": params}, sort_keys=False))
    return path


def train_grid(space_path: Path, args, grid_seed: int) -> dict:
    """Every (Nn, Nm) config for the max Ne, the objective after every epoch."""
    import torch

    from caetune.models import Trainer
    from caetune.models._precision import SCREENING
    from caetune.search._objective import Objective
    from caetune.search._run import _load_data
    from caetune.search._space import load_space
    from caetune.search._trainable import epoch_metrics

    torch.set_num_threads(1)  # as a trial with cpus_per_trial=1
    space = load_space(str(space_path)).with_fixed(subset=args.subset).capped(args.max_epochs)
    data = _load_data(space)
    objective = Objective()  # the search's default: combined, default weight
    rows, start = [], time.perf_counter()
    for n_neurons in N_NEURONS:
        for n_maps in N_MAPS:
            params = {"n_neurons": n_neurons, "n_maps": n_maps, "n_epochs": args.max_epochs}
            config = space.train_config(params, seed=grid_seed, device="cpu")
            # As a search trial: `precision: auto` is bf16 for screening where the CPU has it.
            trainer = Trainer(config, data, use=SCREENING)
            per_epoch, t0 = [], time.perf_counter()
            while trainer.epoch < args.max_epochs:
                trainer.run_epoch()
                per_epoch.append(
                    float(
                        epoch_metrics(trainer, objective, util_images=args.util_images)["objective"]
                    )
                )
            rows.append(
                {
                    "n_neurons": n_neurons,
                    "n_maps": n_maps,
                    "objective": per_epoch,
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(
                f"  grid Nn={n_neurons:5d} Nm={n_maps:3d}: objective by Ne "
                f"{[round(v, 4) for v in per_epoch]}",
                file=sys.stderr,
            )
    best = min(
        (v, r["n_neurons"], r["n_maps"], e + 1) for r in rows for e, v in enumerate(r["objective"])
    )
    # How rare the goal is: a search that samples blindly hits it about this often per grid point.
    within = sum(v <= best[0] * (1 + WITHIN) for r in rows for v in r["objective"])
    return {
        "seed": grid_seed,
        "configs": rows,
        "trial_epochs": len(rows) * args.max_epochs,
        "points_within": within,
        "best": {
            "objective": best[0],
            "n_neurons": best[1],
            "n_maps": best[2],
            "n_epochs": best[3],
        },
        "seconds": time.perf_counter() - start,
        "train": len(data.train),
        "val": len(data.val),
    }


def reused_grids(args) -> dict:
    """The grids of an earlier run, if it had this run's scale (else none)."""
    earlier = json.loads(Path(args.grids_from).read_text())
    scale = earlier["scale"]
    same = (scale["subset"], scale["batch_size"], scale["max_epochs"], scale["util_images"]) == (
        args.subset,
        args.batch_size,
        args.max_epochs,
        args.util_images,
    )
    if not same:
        sys.exit(f"--grids-from: {args.grids_from} has another scale ({scale})")
    grids = {
        int(seed): {**grid, "from": args.grids_from, "date": earlier["date"]}
        for seed, grid in earlier["grids"].items()
    }
    return {seed: grids[seed] for seed in args.seeds if seed in grids}


def stop_at_first_hit(threshold: float):
    """A Tune callback that ends the search (Tune's stop signal, SIGUSR1) once its cost is known.

    That is when a trial completes within ``threshold`` and no trial proposed
    before it is still running: the trials after it do not count.
    """
    import signal

    from ray.tune import Callback

    class StopAtFirstHit(Callback):
        hit: int | None = None

        def on_trial_complete(self, iteration, trials, trial, **info):
            result, number = trial.last_result or {}, trial.config["trial_number"]
            done = int(result.get("epoch") or 0) >= int(trial.config["n_epochs"])
            if (
                done
                and not result.get("failed")
                and float(result.get("objective", "inf")) <= threshold
            ):
                self.hit = number if self.hit is None else min(self.hit, number)
            if self.hit is None:
                return
            earlier = [t for t in trials if t is not trial and t.config["trial_number"] < self.hit]
            if not any(t.status == "RUNNING" for t in earlier):
                os.kill(os.getpid(), signal.SIGUSR1)

    return StopAtFirstHit()


def search(
    space_path: Path,
    storage: Path,
    name: str,
    args,
    *,
    stop_below: float | None = None,
    **overrides,
):
    """One ``run_search`` (ended at its first trial below ``stop_below`` if given), its wall time
    and its results frame.
    """
    from caetune.search import SearchSettings, run_search

    settings = SearchSettings(
        space=str(space_path),
        subset=args.subset,
        util_images=args.util_images,
        start_point=False,  # the paper's choice first would make the efficiency test moot
        confirm_seeds=0,
        report=False,
        run_root=str(storage),
        name=name,
        **overrides,
    )
    log = io.StringIO()
    start = time.perf_counter()
    callbacks = [stop_at_first_hit(stop_below)] if stop_below is not None else []
    outcome = run_search(settings, stream=log, out=log, callbacks=callbacks)
    wall = time.perf_counter() - start
    frame = outcome.results.sort_values("trial_id").reset_index(
        drop=True
    )  # t0000, t0001 ...: proposal order
    return wall, frame


def efficiency(frame, grid: dict) -> dict:
    """Trial-epochs until the first complete trial within 5% of the grid's best, against the grid's
    total.
    """
    threshold = grid["best"]["objective"] * (1 + WITHIN)
    epochs = frame["epochs_run"].fillna(0).astype(int)
    if "epochs_trained" in frame:
        epochs = frame["epochs_trained"].fillna(epochs).astype(int)
    hits = frame.index[(frame["status"] == "complete") & (frame["objective"] <= threshold)]
    reached = len(hits) > 0
    used = int(epochs[: hits[0] + 1].sum()) if reached else int(epochs.sum())
    done = frame[frame["status"] == "complete"]
    return {
        "reached": reached,
        "hit_trial": frame.loc[hits[0], "trial_id"] if reached else None,
        "trial_epochs_used": used,
        "trial_epochs_total": int(epochs.sum()),
        "ratio": used / grid["trial_epochs"],
        "best_objective": float(done["objective"].min()) if len(done) else None,
        "trials": {s: int(n) for s, n in frame["status"].value_counts().items()},
        "warm_started": int(frame["warm_start"].notna().sum()) if "warm_start" in frame else 0,
        "trained_nothing": int((epochs == 0).sum()),
    }


def grid_consistency(frame, grid: dict) -> float | None:
    """Largest relative gap between a same-seed trial's objective and the grid's at its (Nn, Nm,
    epochs_run).
    """
    table = {(r["n_neurons"], r["n_maps"]): r["objective"] for r in grid["configs"]}
    gaps = []
    for row in frame[frame["status"].isin(["complete", "pruned"])].to_dict(orient="records"):
        grid_value = table[(int(row["n_neurons"]), int(row["n_maps"]))][int(row["epochs_run"]) - 1]
        gaps.append(abs(row["objective"] - grid_value) / grid_value)
    return max(gaps) if gaps else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def scale(args) -> dict:
    from caetune.models import TrainConfig
    from caetune.search._defaults import DEFAULTS

    return {
        "subset": args.subset,
        "batch_size": args.batch_size or TrainConfig.batch_size,
        "max_epochs": args.max_epochs,
        "num_samples": args.num_samples,
        "util_images": args.util_images,
        "model": "model1",
        "dataset": "mnist-10k",
        "start_point": False,
        "reduction_factor": args.reduction_factor or DEFAULTS["reduction_factor"],
        "grace_period": DEFAULTS["grace_period"],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        return measure(args, Path(args.workdir))
    # The searches' trials leave 8-20 GB of models and checkpoints: a temporary folder goes when the
    # run ends.
    with tempfile.TemporaryDirectory(prefix="caetune-search-bench-") as folder:
        return measure(args, Path(folder))


def measure(args, workdir: Path) -> dict:
    """Trains (or reuses) the grids, runs the searches in ``workdir``, prints and returns every
    number.
    """
    load_before = os.getloadavg()

    # More optimizer steps per epoch (a smaller batch) bring the reduced-scale curves closer to
    # converged.
    fixed = {"batch_size": args.batch_size} if args.batch_size else {}
    grid_space = write_space(
        workdir,
        "grid",
        {"n_neurons": N_NEURONS, "n_maps": N_MAPS, "n_epochs": {"low": 1, "high": args.max_epochs}},
        fixed,
    )
    grids = reused_grids(args) if args.grids_from else {}
    for seed in args.seeds:
        if seed not in grids:
            print(
                f"grid, seed {seed}: {len(N_NEURONS) * len(N_MAPS)} configs x Ne={args.max_epochs}",
                file=sys.stderr,
            )
            grids[seed] = train_grid(grid_space, args, seed)
    if args.grids_only:
        result = {"date": _now(), "scale": scale(args), "grids": grids}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        return result

    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_startup = time.perf_counter() - t0
    try:
        runs = {}
        asha = {} if args.reduction_factor is None else {"reduction_factor": args.reduction_factor}
        for seed in args.seeds:
            print(f"efficiency search, seed {seed} ...", file=sys.stderr)
            wall, frame = search(
                grid_space,
                workdir / "runs",
                f"eff-s{seed}",
                args,
                seed=seed,
                num_samples=args.num_samples,
                max_epochs=args.max_epochs,
                **asha,
                stop_below=grids[seed]["best"]["objective"] * (1 + WITHIN),
            )
            runs[seed] = {
                "wall_s": wall,
                **efficiency(frame, grids[seed]),
                "grid_consistency": grid_consistency(frame, grids[seed]),
            }
            print(f"  {runs[seed]}", file=sys.stderr)

        # Overhead: the smallest configs and 1-2 epochs, so the search's own work dominates the wall
        # time.
        tiny = write_space(
            workdir,
            "tiny",
            {"n_neurons": [40, 160], "n_maps": [8, 16], "n_epochs": {"low": 1, "high": 2}},
            {},
        )
        print("overhead search (sequential) ...", file=sys.stderr)
        wall, frame = search(
            tiny,
            workdir / "runs",
            "overhead",
            args,
            seed=0,
            num_samples=args.overhead_trials,
            max_epochs=2,
            max_concurrent=1,
        )
        inside = float(frame["seconds"].sum())
        overhead = {
            "trials": len(frame),
            "wall_s": wall,
            "training_s": inside,
            "per_trial_s": (wall - inside) / len(frame),
            "ray_startup_s": ray_startup,
        }
    finally:
        ray.shutdown()

    ratios = [r["ratio"] for r in runs.values()]
    mean_ratio = sum(ratios) / len(ratios)
    # A seed that never came within 5% fails the target whatever its (partial) ratio.
    all_reached = all(r["reached"] for r in runs.values())
    result = {
        "date": _now(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "scale": scale(args),
        "grids": grids,
        "efficiency": {
            "runs": runs,
            "mean_ratio": mean_ratio,
            "target": TARGET_RATIO,
            "all_reached": all_reached,
            "pass": all_reached and mean_ratio <= TARGET_RATIO,
        },
        "overhead": {
            **overhead,
            "target_s": TARGET_OVERHEAD_S,
            "pass": overhead["per_trial_s"] < TARGET_OVERHEAD_S,
        },
    }
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


def markdown(result: dict) -> str:
    grids, eff, ovh, scale = (
        result["grids"],
        result["efficiency"],
        result["overhead"],
        result["scale"],
    )
    some = next(iter(grids.values()))
    lines = [
        f"Scale: mnist-10k subset {scale['subset']} ({some['train']} train / {some['val']} val), "
        f"Model 1, batch {scale['batch_size']}, "
        f"Ne <= {scale['max_epochs']}, U on {scale['util_images']} images, {scale['num_samples']} "
        "trials per search, "
        f"ASHA (grace {scale['grace_period']}, reduction factor {scale['reduction_factor']:g}), "
        "start point off.",
        f"Grid: 20 configs x Ne {scale['max_epochs']} = {some['trial_epochs']} trial-epochs per "
        "seed.",
        "",
        "| seed | grid best (Nn, Nm, Ne) | points within 5% | reached | first trial within 5% | "
        "trial-epochs used "
        "| / grid | search best | trials (status; warm-started; trained nothing) | search vs grid "
        "|",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in eff["runs"].items():
        grid = grids[seed]
        best = grid["best"]
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(r["trials"].items()))
        best_txt = f"{r['best_objective']:.4g}" if r["best_objective"] is not None else "-"
        gap = r.get("grid_consistency")
        lines.append(
            f"| {seed} | {best['objective']:.4g} ({best['n_neurons']}, {best['n_maps']}, "
            f"{best['n_epochs']}) | "
            f"{grid['points_within']} | {'yes' if r['reached'] else 'NOT REACHED'} | "
            f"{r['hit_trial'] or '-'} | "
            f"{r['trial_epochs_used']} of {r['trial_epochs_total']} | {r['ratio']:.1%} | "
            f"{best_txt} | "
            f"{statuses}; {r['warm_started']}; {r['trained_nothing']} | "
            f"{'-' if gap is None else f'{gap:.1e}'} |"
        )
    lines += [
        "",
        "| benchmark | measured | target | pass |",
        "|---|---|---|---|",
        f"| search efficiency (mean over seeds {', '.join(map(str, eff['runs']))}) | "
        f"{eff['mean_ratio']:.1%} of the grid's trial-epochs"
        f"{'' if eff['all_reached'] else ' (a seed NOT REACHED: charged all its trial-epochs)'} "
        f"| <= {eff['target']:.0%} and every seed reached | {'yes' if eff['pass'] else 'no'} |",
        f"| search overhead ({ovh['trials']} sequential trials; wall {ovh['wall_s']:.1f} s, "
        f"training {ovh['training_s']:.1f} s) "
        f"| {ovh['per_trial_s']:.2f} s per trial (+ Ray start-up {ovh['ray_startup_s']:.1f} s "
        f"once) | < {ovh['target_s']:g} s | "
        f"{'yes' if ovh['pass'] else 'no'} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
