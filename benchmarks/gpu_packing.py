"""Trials per hour with 1 vs 4 trials per GPU (``--gpus-per-trial 1`` vs ``0.25``), measured in one
run.

The same search runs once per packing on the same machine: ``--trials``
trials of one small Model 1 config (Nn, Nm and Ne fixed; only the learning
rate is searched, so no trial repeats another and none is warm-started),
ASHA's grace period at Ne so that no trial is stopped, the paper's start
point and the seed confirmation off. No ``max_concurrent``: Ray's resource
accounting decides how many run at once. Each trial gets the CPUs divided by
the most trials the GPUs allow (``--cpus-per-trial`` to set it).
A Tune callback records how many trials were running after every controller
step; the table shows the peak, the mean in flight (the trials' own seconds
over the wall time) and trials per hour (trials / wall time of
``run_search``), and the ratio of each packing to one trial per GPU.

On a GPU machine (Ray finds the GPUs)::

    .venv/bin/python benchmarks/gpu_packing.py --json gpu_packing.json

Without one, ``--device cpu --declared-gpus 1`` declares a GPU to Ray and
trains on the CPU: it checks the packing (4 trials at once on one declared
GPU, ``tests/test_gpu_packing.py``) but its times say nothing about a GPU.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per packing")
    parser.add_argument(
        "--per-gpu", type=int, nargs="+", default=[1, 4], help="trials per GPU, one search each"
    )
    parser.add_argument("--n-neurons", type=int, default=2560)
    parser.add_argument("--n-maps", type=int, default=32)
    parser.add_argument("--n-epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=10000, help="mnist-10k images (train + val)")
    parser.add_argument("--util-images", type=int, default=256)
    parser.add_argument(
        "--cpus-per-trial",
        type=float,
        default=None,
        help="default: the CPUs / the most trials at once",
    )
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="where trials train (cpu: only with --declared-gpus)",
    )
    parser.add_argument(
        "--declared-gpus",
        type=int,
        default=0,
        help="GPUs to declare to a local Ray (0: Ray finds them)",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="the local Ray's CPUs (default: all)"
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="where the runs go, kept (default: a temporary folder, deleted at the end)",
    )
    parser.add_argument("--json", default=None, help="write all numbers here")
    return parser.parse_args(argv)


def write_space(folder: Path, args) -> Path:
    path = folder / "packing.yaml"
    doc = {
        "description": "gpu packing benchmark: one config, only the learning rate searched",
        "fixed": {
            "dataset": "mnist-10k",
            "model": "model1",
            "n_neurons": args.n_neurons,
            "n_maps": args.n_maps,
            "n_epochs": args.n_epochs,
        },
        "params": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def in_flight_counter():
    """A Tune callback: the most trials ``RUNNING`` after any controller step."""
    from ray.tune import Callback

    class InFlight(Callback):
        peak = 0

        def on_step_end(self, iteration, trials, **info):
            self.peak = max(self.peak, sum(t.status == "RUNNING" for t in trials))

    return InFlight()


def packed_search(space: Path, storage: Path, per_gpu: int, gpus: int, cpus: int, args) -> dict:
    from caetune.search import SearchSettings, run_search

    cpus_per_trial = args.cpus_per_trial or cpus / (per_gpu * gpus)
    settings = SearchSettings(
        space=str(space),
        subset=args.subset,
        util_images=args.util_images,
        max_epochs=args.n_epochs,
        grace_period=args.n_epochs,
        start_point=False,
        confirm_seeds=0,
        report=False,
        num_samples=args.trials,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=1 / per_gpu,
        device=args.device,
        run_root=str(storage),
        name=f"packed-{per_gpu}",
    )
    counter, log = in_flight_counter(), io.StringIO()
    start = time.perf_counter()
    outcome = run_search(settings, stream=log, out=log, callbacks=[counter])
    wall = time.perf_counter() - start
    frame = outcome.results
    done = frame[frame["status"] == "complete"]
    return {
        "per_gpu": per_gpu,
        "gpus_per_trial": 1 / per_gpu,
        "cpus_per_trial": cpus_per_trial,
        "trials": len(frame),
        "complete": len(done),
        "wall_s": wall,
        "trial_seconds": float(frame["seconds"].sum()),
        "peak_in_flight": counter.peak,
        "mean_in_flight": float(frame["seconds"].sum()) / wall,
        "trials_per_hour": len(done) / wall * 3600,
        "median_trial_s": float(done["seconds"].median()) if len(done) else None,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu" and not args.declared_gpus:
        sys.exit(
            "--device cpu: give --declared-gpus too (on a GPU machine, leave --device at cuda)"
        )
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        return measure(args, Path(args.workdir))
    with tempfile.TemporaryDirectory(
        prefix="caetune-gpu-packing-"
    ) as folder:  # the trials' models: deleted at the end
        return measure(args, Path(folder))


def measure(args, workdir: Path) -> dict:
    """Runs one search per packing in ``workdir``; prints and returns every number."""
    space = write_space(workdir, args)

    import ray

    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        num_gpus=args.declared_gpus or None,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus < 1:
            sys.exit(
                "no GPU in the Ray cluster (on a machine without one: --device cpu --declared-gpus "
                "1)"
            )
        runs = []
        for per_gpu in args.per_gpu:
            print(f"{args.trials} trials, {per_gpu} per GPU on {gpus} GPU(s) ...", file=sys.stderr)
            runs.append(packed_search(space, workdir / "runs", per_gpu, gpus, cpus, args))
            print(f"  {runs[-1]}", file=sys.stderr)
    finally:
        ray.shutdown()
    base = runs[0]["trials_per_hour"]
    for run in runs:
        run["vs_first"] = run["trials_per_hour"] / base if base else None
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpus": gpus,
            "device": args.device,
            "declared_gpus": args.declared_gpus,
            "gpu_name": _gpu_name() if args.device == "cuda" else None,
        },
        "scale": {
            k: getattr(args, k)
            for k in ("trials", "n_neurons", "n_maps", "n_epochs", "subset", "util_images")
        },
        "runs": runs,
    }
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def markdown(result: dict) -> str:
    machine, scale = result["machine"], result["scale"]
    where = machine["gpu_name"] or f"{machine['declared_gpus']} declared GPU(s), trained on the CPU"
    lines = [
        f"{scale['trials']} trials per packing of Model 1 Nn={scale['n_neurons']} "
        f"Nm={scale['n_maps']} Ne={scale['n_epochs']} "
        f"on mnist-10k subset {scale['subset']}; {where}",
        "",
        "| trials per GPU | GPUs per trial | peak in flight | mean in flight | median trial (s) | "
        "wall (s) | trials per hour | vs 1 per GPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        median = "-" if run["median_trial_s"] is None else f"{run['median_trial_s']:.1f}"
        lines.append(
            f"| {run['per_gpu']} | {run['gpus_per_trial']:g} | {run['peak_in_flight']} | "
            f"{run['mean_in_flight']:.2f} | {median} | "
            f"{run['wall_s']:.1f} | {run['trials_per_hour']:.0f} | {run['vs_first']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
