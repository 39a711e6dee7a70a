"""Build a tabulated CAE benchmark: full learning curves of every config, for the peer harness.

Every (config, seed) of the space is trained for ``--epochs`` epochs with the
search's own code (:class:`caetune.models.Trainer` and
:func:`caetune.search._trainable.epoch_metrics`, the objective's U and layer
metrics included), and its curve is appended to the table as one JSON line as
soon as it is done. The first line is the header: the space, the configs in
order, the seeds and the scale (dataset, subset, image count, epochs,
threads, CPU). A killed build run again with the same arguments continues
where it stopped; other arguments on an existing table are refused.
The format is documented in benchmarks/README.md.

The space is the full product Model x Nn x Nm x lr when it has at most
``--max-configs`` configs, else a seeded random sample of that many of it,
stratified so that every value of every axis appears (the header lists the
configs either way).

Usage::

    .venv/bin/python benchmarks/build_table.py --out benchmarks/tables/mnist10k.jsonl \\
        --dataset mnist-10k --subset 2000 --epochs 20 --seeds 2 --workers 2
    .venv/bin/python benchmarks/build_table.py --probe 60 --dataset mnist-10k --subset 2000
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "caetune-curves/1"
AXES = ("model", "n_neurons", "n_maps", "lr")
MODELS = ("model1", "model2")
N_NEURONS = tuple(int(round(v)) for v in np.geomspace(40, 4096, 8))  # 40 .. 4096, log-spaced
N_MAPS = (8, 12, 16, 24, 32, 64)
LRS = (1e-4, 1e-3, 1e-2)
DIGITS = 6  # significant digits kept of every float: the table stays a few MB


def space_configs(*, max_configs: int, seed: int) -> list[dict[str, Any]]:
    """The configs of the table: the full product, or a seeded sample of it covering every value."""
    product = [
        dict(zip(AXES, values, strict=True))
        for values in itertools.product(MODELS, N_NEURONS, N_MAPS, LRS)
    ]
    if len(product) <= max_configs:
        return product
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(product)))
    # First one config per value of each axis (so none is left out), then the rest at random.
    chosen: list[int] = []
    for axis, values in zip(AXES, (MODELS, N_NEURONS, N_MAPS, LRS), strict=True):
        for value in values:
            if not any(product[i][axis] == value for i in chosen):
                chosen.append(next(i for i in order if product[i][axis] == value))
    chosen += [i for i in order if i not in chosen][: max(0, max_configs - len(chosen))]
    return [product[i] for i in sorted(chosen)]


def _round(value: float) -> float | None:
    if not math.isfinite(value):
        return None  # JSON has no inf/nan; a diverged epoch reads back as None
    return float(f"{value:.{DIGITS}g}")


def train_curve(job: dict[str, Any]) -> dict[str, Any]:
    """One (config, seed): every epoch's val_mse, U, layer metrics and seconds (a worker's task)."""
    import torch

    from caetune.models import TrainConfig, Trainer, TrainingDiverged
    from caetune.models._precision import SCREENING
    from caetune.search._objective import Objective
    from caetune.search._trainable import epoch_metrics

    torch.set_num_threads(job["threads"])
    config = job["config"]
    train_config = TrainConfig(
        **job["data_fields"], **config, n_epochs=job["epochs"], seed=job["seed"], device="cpu"
    )
    trainer = Trainer(train_config, _data(job["data_fields"]), use=SCREENING)
    objective = Objective("mse")  # the harness evaluates any objective from val_mse and U
    curve: dict[str, list] = {"seconds": [], "cpu_seconds": []}
    status = "ok"
    for _ in range(job["epochs"]):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            trainer.run_epoch()
        except TrainingDiverged:
            status = "diverged"  # later epochs stay absent: the curve is as long as it trained
            break
        metrics = epoch_metrics(trainer, objective, util_images=job["util_images"])
        curve["seconds"].append(round(time.perf_counter() - wall, 4))
        curve["cpu_seconds"].append(round(time.process_time() - cpu, 4))
        for key, value in metrics.items():
            if key in ("epoch", "n_epochs", "precision", "objective", "best_val_mse"):
                continue
            curve.setdefault(key, []).append(_round(float(value)))
    return {"config": job["index"], "seed": job["seed"], "status": status, **curve}


_DATA: dict[str, Any] = {}


def _data(fields: dict[str, Any]):
    """The dataset, loaded once per worker process."""
    key = json.dumps(fields, sort_keys=True)
    if key not in _DATA:
        from caetune.models import load_dataset

        _DATA[key] = load_dataset(
            fields["dataset"], subset=fields["subset"], seed=fields["split_seed"]
        )
    return _DATA[key]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _header(args, configs: list[dict[str, Any]]) -> dict[str, Any]:
    data = _data(_data_fields(args))
    return {
        "format": FORMAT,
        "axes": list(AXES),
        "configs": configs,
        "seeds": list(range(args.seeds)),
        "n_epochs": args.epochs,
        "scale": {
            "dataset": args.dataset,
            "subset": args.subset,
            "train_images": int(data.train.shape[0]),
            "val_images": int(data.val.shape[0]),
            "image_shape": list(data.train.shape[1:]),
            "util_images": args.util_images,
            "epochs": args.epochs,
            "threads_per_curve": args.threads,
            "workers": args.workers,
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
        },
        "sample": {"max_configs": args.max_configs, "seed": args.sample_seed},
    }


def _data_fields(args) -> dict[str, Any]:
    return {"dataset": args.dataset, "subset": args.subset, "split_seed": 0}


def read_table(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the curves of a table file (a torn last line, from a kill, is skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty table")
    header = json.loads(lines[0])
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} table")
    curves = []
    for line in lines[1:]:
        try:
            curves.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return header, curves


def _same_build(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = ("configs", "seeds", "n_epochs")
    scale = ("dataset", "subset", "train_images", "util_images", "threads_per_curve")
    return all(old[k] == new[k] for k in keys) and all(
        old["scale"][k] == new["scale"][k] for k in scale
    )


def build(args) -> int:
    out = Path(args.out)
    configs = space_configs(max_configs=args.max_configs, seed=args.sample_seed)
    header = _header(args, configs)
    done: set[tuple[int, int]] = set()
    if out.exists() and out.stat().st_size:
        old, curves = read_table(out)
        if not _same_build(old, header):
            print(f"--out: {out} holds a table built with other arguments", file=sys.stderr)
            return 2
        done = {(c["config"], c["seed"]) for c in curves}
        _drop_torn_line(out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(header) + "\n", encoding="utf-8")
    jobs = [
        {
            "index": i,
            "config": config,
            "seed": seed,
            "epochs": args.epochs,
            "threads": args.threads,
            "util_images": args.util_images,
            "data_fields": _data_fields(args),
        }
        for seed in header["seeds"]
        for i, config in enumerate(configs)
        if (i, seed) not in done
    ]
    total = len(configs) * len(header["seeds"])
    print(f"{out}: {len(done)}/{total} curves done, {len(jobs)} to build", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool, out.open("a") as sink:
        for n, curve in enumerate(pool.map(train_curve, jobs), 1):
            sink.write(json.dumps(curve, separators=(",", ":")) + "\n")
            sink.flush()  # a kill loses at most the curves still training
            elapsed = time.perf_counter() - start
            print(f"{len(done) + n}/{total} curves, {elapsed:.0f} s", flush=True)
    return 0


def _drop_torn_line(out: Path) -> None:
    """Cuts a half-written last line (the build was killed mid-write) so appends stay whole."""
    text = out.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        out.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")


def probe(args) -> int:
    """Times the second epoch of seeded random configs of the space for ``--probe`` seconds.

    The mean CPU seconds of an epoch (training, validation, U) times the
    table's epochs, over the workers, is the build's estimate. CPU seconds,
    not wall: on a shared machine they say what the build would take alone.
    """
    configs = space_configs(max_configs=args.max_configs, seed=args.sample_seed)
    rng = np.random.default_rng(args.sample_seed)
    cpu = []
    deadline = time.perf_counter() + args.probe
    for i in rng.permutation(len(configs)):
        job = {
            "index": int(i),
            "config": configs[i],
            "seed": 0,
            "epochs": 2,
            "threads": args.threads,
            "util_images": args.util_images,
            "data_fields": _data_fields(args),
        }
        curve = train_curve(job)  # the first epoch includes warm-up: the second is timed
        cpu.append(curve["cpu_seconds"][-1])
        print(f"{configs[i]}: {curve['seconds'][-1]:.2f} s wall, {cpu[-1]:.2f} s CPU", flush=True)
        if time.perf_counter() > deadline:
            break
    mean = float(np.mean(cpu))
    epochs = len(configs) * args.seeds * args.epochs
    print(
        f"{len(configs)} configs x {args.seeds} seeds x {args.epochs} epochs = {epochs} epochs; "
        f"at {mean:.2f} CPU-s each (mean of {len(cpu)} random configs) on {args.workers} "
        f"workers: about {epochs * mean / args.workers / 60:.0f} min"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="the table file (JSON lines); an existing one is continued")
    parser.add_argument("--dataset", default="mnist-10k", help="any dataset spec of caetune")
    parser.add_argument("--subset", type=int, default=None, help="images used (before the split)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every curve (Ne 1..N)")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per config")
    parser.add_argument("--workers", type=int, default=2, help="curves trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per curve")
    parser.add_argument("--util-images", type=int, default=256, help="validation images for U")
    parser.add_argument("--max-configs", type=int, default=400, help="sample the product above")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument(
        "--probe", type=float, default=None, help="time a few epochs, build nothing"
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "seeds", "workers", "threads", "util_images", "max_configs"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')}: expected an integer >= 1", file=sys.stderr)
            return 2
    if args.subset is not None and args.subset < 10:
        print("--subset: expected an integer >= 10", file=sys.stderr)
        return 2
    from caetune._errors import InputError

    try:
        if args.probe is not None:
            return probe(args)
        if not args.out:
            print("--out: expected the table's path (or --probe SECONDS)", file=sys.stderr)
            return 2
        return build(args)
    except InputError as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
