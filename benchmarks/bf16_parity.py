"""Is bf16 safe for a use? Evidence for what ``precision: auto`` may pick.

Two measurements, both on real MNIST digits (``mnist-10k``, ``--subset``
images, the usual 80/20 split), Model 1:

* **parity**: the paper's large config (Nm=32, Nn=2560) for ``--epochs``
  epochs with ``--seeds`` seeds, in fp32 and in bf16 (same seeds): each bf16
  run's final val MSE and utilisation U against the range the fp32 seeds
  span. bf16 may stand in for fp32 where the number is the product only if
  it lands inside that spread.
* **ranking**: a grid of configs (Nm x Nn, ``--grid``) for ``--grid-epochs`` epochs, one
  seed, in both precisions: the Spearman rank correlation of their val MSE,
  of U and of the combined objective (utilisation weight ``--weight``), and
  whether the best config is the same. Screening trials only rank configs, so
  bf16 may screen if it ranks them as fp32 does.

bf16 numerics do not depend on whether the CPU multiplies bf16 natively or
oneDNN emulates it (up to the accumulation order), so this runs anywhere;
where it is emulated it is slow, hence the small subset. Results go to a JSON
file, rewritten after every run so a cut-short run keeps what it measured.

Usage::

    .venv/bin/python benchmarks/bf16_parity.py --json benchmarks/results/bf16_parity.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

# Nm x Nn of the ranking grid: "paper" is the paper's 20-point grid (Model 1), "small" 8 of its
# kind for machines that emulate bf16 (hours otherwise).
GRIDS = {
    "paper": ((8, 16, 24, 32, 40), (40, 160, 640, 2560)),
    "small": ((8, 32), (160, 640, 1280, 2560)),
}
PRECISIONS = ("fp32", "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--subset", type=int, default=2000, help="MNIST images, before the split (%(default)s)")
    add("--epochs", type=int, default=20, help="epochs of the parity runs (%(default)s)")
    add("--seeds", type=int, default=3, help="seeds of the parity runs (%(default)s)")
    add("--first-seed", type=int, default=0, help="the parity runs' first seed (%(default)s)")
    add("--grid-epochs", type=int, default=4, help="epochs of each grid run (%(default)s)")
    add("--grid", choices=sorted(GRIDS), default="paper", help="the ranking grid (%(default)s)")
    add("--weight", type=float, default=0.5, help="utilisation weight of the objective")
    add("--threads", type=int, default=1, help="torch intra-op threads (%(default)s)")
    add("--skip", choices=("parity", "ranking"), action="append", default=[])
    add("--json", metavar="OUT", required=True, help="where the results go")
    add(
        "--merge",
        nargs="+",
        metavar="IN",
        help="measure nothing: combine the runs of these result files into OUT",
    )
    args = parser.parse_args(argv)
    if args.first_seed < 0:
        parser.error("--first-seed: expected an integer >= 0")
    for name in ("subset", "epochs", "seeds", "grid_epochs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1")
    return args


def train_one(data, *, precision: str, n_maps: int, n_neurons: int, n_epochs: int, seed: int):
    """One run: its val MSE per epoch, final U, objective inputs and seconds."""
    from caetune.analysis import model_utilisation
    from caetune.models import TrainConfig, Trainer

    config = TrainConfig(
        n_maps=n_maps,
        n_neurons=n_neurons,
        n_epochs=n_epochs,
        seed=seed,
        device="cpu",
        precision=precision,
    )
    start = time.perf_counter()
    trainer = Trainer(config, data)
    trainer.fit()
    util = model_utilisation(trainer.model, trainer.x_val, n_images=256)
    return {
        "precision": trainer.precision,
        "n_maps": n_maps,
        "n_neurons": n_neurons,
        "seed": seed,
        "n_epochs": n_epochs,
        "val_mse": trainer.history[-1].val_mse,
        "val_mse_by_epoch": [m.val_mse for m in trainer.history],
        "utilisation": util["utilisation"],
        "images_per_second": statistics.median(m.images_per_second for m in trainer.history),
        "seconds": time.perf_counter() - start,
    }


def parity_summary(runs: list[dict]) -> dict:
    """fp32's seed spread, and whether each bf16 run lies inside it (val MSE and U)."""
    out: dict = {}
    for key in ("val_mse", "utilisation"):
        by_seed = {p: {r["seed"]: r[key] for r in runs if r["precision"] == p} for p in PRECISIONS}
        fp32 = [r[key] for r in runs if r["precision"] == "fp32"]
        bf16 = [r[key] for r in runs if r["precision"] == "bf16"]
        if len(fp32) < 2 or not bf16:
            continue
        out[key] = {
            "fp32": fp32,
            "bf16": bf16,
            "fp32_mean": statistics.mean(fp32),
            "fp32_sd": statistics.stdev(fp32),
            "bf16_mean": statistics.mean(bf16),
            "bf16_vs_fp32_mean": statistics.mean(bf16) / statistics.mean(fp32) - 1,
            "bf16_inside_fp32_range": [min(fp32) <= v <= max(fp32) for v in bf16],
            # Same seed, same initial weights and batch order: the precision's own effect.
            "bf16_vs_fp32_same_seed": {
                seed: by_seed["bf16"][seed] / by_seed["fp32"][seed] - 1
                for seed in sorted(set(by_seed["bf16"]) & set(by_seed["fp32"]))
            },
        }
    return out


def ranking_summary(runs: list[dict], *, weight: float) -> dict:
    """Spearman rank correlation of fp32 and bf16 over the grid, per metric."""
    from scipy.stats import spearmanr

    from caetune.analysis import combined_objective

    by = {(r["precision"], r["n_maps"], r["n_neurons"]): r for r in runs}
    configs = sorted({(m, n) for _, m, n in by if ("fp32", m, n) in by and ("bf16", m, n) in by})
    if len(configs) < 3:
        return {}
    out: dict = {"configs": [list(c) for c in configs]}
    for key in ("val_mse", "utilisation", "objective"):
        values = {}
        for precision in PRECISIONS:
            rows = [by[(precision, *c)] for c in configs]
            if key == "objective":
                values[precision] = [
                    combined_objective(r["val_mse"], r["utilisation"], weight=weight) for r in rows
                ]
            else:
                values[precision] = [r[key] for r in rows]
        rho = spearmanr(values["fp32"], values["bf16"]).statistic
        best = {p: configs[min(range(len(configs)), key=values[p].__getitem__)] for p in values}
        out[key] = {
            "spearman": float(rho),
            "fp32": values["fp32"],
            "bf16": values["bf16"],
            "same_best": best["fp32"] == best["bf16"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from caetune.models import load_dataset

    args = parse_args(argv)
    if args.merge:
        return merge(args)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist-10k", subset=args.subset, seed=0)
    report: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu(),
        "bf16_native": {
            "amx_tile": torch.cpu._is_amx_tile_supported(),
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
            "capability": torch.backends.cpu.get_cpu_capability(),
        },
        "torch": torch.__version__,
        "threads": args.threads,
        "subset": args.subset,
        "train_images": int(data.train.shape[0]),
        "val_images": int(data.val.shape[0]),
        "load_average_before": os.getloadavg(),
        "ranking_runs": [],
        "parity_runs": [],
    }

    def save() -> None:
        report["load_average_now"] = os.getloadavg()
        report["ranking"] = ranking_summary(report["ranking_runs"], weight=args.weight)
        report["parity"] = parity_summary(report["parity_runs"])
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)

    def run(kind: str, **kwargs) -> None:
        row = train_one(data, **kwargs)
        report[kind].append(row)
        print(
            f"{kind} {row['precision']} Nm={row['n_maps']} Nn={row['n_neurons']} "
            f"seed={row['seed']}: val_mse {row['val_mse']:.6f} U {row['utilisation']:.4f} "
            f"({row['seconds']:.0f} s, {row['images_per_second']:.0f} img/s)",
            flush=True,
        )
        save()

    if "ranking" not in args.skip:
        report["grid_epochs"] = args.grid_epochs
        report["grid"] = args.grid
        grid_maps, grid_neurons = GRIDS[args.grid]
        for n_maps in grid_maps:
            for n_neurons in grid_neurons:
                for precision in PRECISIONS:
                    run(
                        "ranking_runs",
                        precision=precision,
                        n_maps=n_maps,
                        n_neurons=n_neurons,
                        n_epochs=args.grid_epochs,
                        seed=0,
                    )
    if "parity" not in args.skip:
        report["parity_epochs"] = args.epochs
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for precision in PRECISIONS:
                run(
                    "parity_runs",
                    precision=precision,
                    n_maps=32,
                    n_neurons=2560,
                    n_epochs=args.epochs,
                    seed=seed,
                )
    save()
    print(json.dumps({"ranking": report["ranking"], "parity": report["parity"]}, indent=2))
    return 0


def merge(args: argparse.Namespace) -> int:
    """One report of the runs in several result files (parallel runs of other seeds)."""
    reports = []
    for path in args.merge:
        with open(path, encoding="utf-8") as handle:
            reports.append(json.load(handle))
    merged = {**reports[0], "merged_from": args.merge}
    for kind in ("ranking_runs", "parity_runs"):
        merged[kind] = [row for report in reports for row in report.get(kind, [])]
    merged["load_averages"] = [
        (r.get("load_average_before"), r.get("load_average_now")) for r in reports
    ]
    merged["ranking"] = ranking_summary(merged["ranking_runs"], weight=args.weight)
    merged["parity"] = parity_summary(merged["parity_runs"])
    with open(args.json, "w", encoding="utf-8") as handle:
        json.dump(merged, handle, indent=2)
    print(json.dumps({"ranking": merged["ranking"], "parity": merged["parity"]}, indent=2))
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
