"""Training throughput of caetune's loop against the usual tutorial loop.

Measures, in one run on one machine:

* torch.mm's float32 and bf16 peaks (GFLOP/s), best over a square and the FC
  shapes of the large model, measured before and after the loops (the faster
  counts); the CPU, and whether it has bf16 natively (AMX, AVX512-BF16);
* for Model 1 at (Nm=8, Nn=160) and (Nm=32, Nn=2560): training images/s of
  the tutorial loop (TensorDataset + DataLoader(shuffle=True), plain Adam,
  ``zero_grad()``, ``loss.item()`` per batch) and of :class:`caetune.models.Trainer`
  (training passes only; its validation pass is not timed), at the same batch
  size on the same real MNIST digits; the ratio; achieved GFLOP/s
  (images/s x 3 x 2 x forward MACs) and its share of the matmul peak of its
  own precision;
* the Trainer in bf16 (``precision: bf16``) where the CPU has bf16 natively
  (elsewhere it is emulated, slower than fp32, and skipped unless
  ``--emulated-bf16``);
* K=4 fused trials (:class:`caetune.models._fused.FusedTrainer`, grouped
  convolutions and batched matmuls) as summed images/s of the 4 models,
  against the Trainer at one thread: 4 separate single-thread trials on
  ``--threads`` cores sum to at most ``--threads`` times that
  ("vs separate");
* with ``--ablation``, also K=4 fused the other way: ``torch.func`` 's
  ``stack_module_state`` + ``vmap`` over one CAE (timing only: one Adam, one lr).

Each loop runs in its own worker process, because the Trainer tunes the
process-wide glibc allocator and that must not leak into the tutorial loop.
The workers take turns, one epoch at a time, so that load from other
processes on a shared machine falls on all alike. Each reports its best
epoch and its median; "paired" is the median over rounds of the tutorial's
epoch time over the loop's in the same round.

``--ablation`` adds the steps from one loop to the other, each cumulative:
resident data with permutation batches, fused Adam, channels-last, allocator
tuning; and that last loop with gradient buffers kept between steps
(``zero_grad(set_to_none=False)``), which the Trainer does not do.

Usage::

    .venv/bin/python benchmarks/train_throughput.py                 # the table
    .venv/bin/python benchmarks/train_throughput.py --ablation --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from caetune.models import TrainConfig

MODELS = {"small": (8, 160), "large": (32, 2560)}  # name -> (n_maps, n_neurons), Model 1
TARGET_RATIO = 1.5
TARGET_PEAK_SHARE = 0.60
TARGET_BF16_SPEEDUP = 2.0  # bf16 vs caetune fp32, on CPUs with native bf16
TARGET_BF16_PEAK_SHARE = 0.35  # of the bf16 matmul peak, large model
TARGET_FUSED = 2.5  # K=4 small fused vs 4 separate single-thread trials
FUSED_K = 4

# Loop variants: the tutorial's, the Trainer, and (--ablation) the steps between them.
# Each option set is cumulative over the one before it.
STEPS = {
    "resident": dict(resident=True),
    "+fused": dict(resident=True, fused=True),
    "+channels_last": dict(resident=True, fused=True, channels_last=True),
    "+allocator": dict(resident=True, fused=True, channels_last=True, allocator=True),
    "+allocator, grads kept": dict(
        resident=True, fused=True, channels_last=True, allocator=True, keep_grads=True
    ),
}


@dataclass
class Variant:
    name: str
    options: dict = field(
        default_factory=dict
    )  # "trainer" (precision, threads), "fused" (k, vmap), or the hand-written loop's switches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--batch-size",
        type=int,
        default=TrainConfig.batch_size,
        help="images per step (default %(default)s)",
    )
    add("--threads", type=int, default=2, help="torch intra-op threads (default %(default)s)")
    add(
        "--seconds",
        type=float,
        default=20.0,
        help="timed seconds per loop and model (default %(default)s)",
    )
    add(
        "--images",
        type=int,
        default=2048,
        help="training images per timed epoch (default %(default)s)",
    )
    add("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS), help="which models")
    add("--device", choices=("cpu", "cuda"), default="cpu")
    add(
        "--emulated-bf16",
        action="store_true",
        help="time bf16 even where the CPU has no native bf16 (slow; marked emulated)",
    )
    add("--ablation", action="store_true", help="also time each optimisation step on its own")
    add("--json", metavar="OUT", help="write all results here as JSON")
    args = parser.parse_args(argv)
    for name in ("batch_size", "threads", "images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1")
    if args.seconds <= 0:
        parser.error("--seconds: expected a positive number")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    return args


# -- matmul peak -----------------------------------------------------------


def matmul_peak(
    *, device: str, seconds: float, batch_size: int, dtype: torch.dtype = torch.float32
) -> dict:
    """Best torch.mm GFLOP/s in ``dtype`` over a square and the large model's FC shapes."""
    n_features = MODELS["large"][0] * 13 * 13
    n_neurons = MODELS["large"][1]
    shapes = [
        (2048, 2048, 2048),
        (batch_size, n_features, n_neurons),  # fc forward
        (n_features, batch_size, n_neurons),  # its weight gradient
        (batch_size, n_neurons, n_features),  # fc back, forward
    ]
    best = {}
    for m, k, n in shapes:
        a = torch.rand(m, k, device=device, dtype=dtype)
        b = torch.rand(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        fastest = float("inf")
        deadline = time.perf_counter() + seconds / len(shapes)
        for i in range(1000):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # warmed up
                fastest = min(fastest, time.perf_counter() - start)
            if i >= 5 and time.perf_counter() > deadline:
                break
        best[f"{m}x{k}x{n}"] = 2 * m * k * n / fastest / 1e9
    return {"gflops": max(best.values()), "by_shape": best}


# -- the loops, one worker process each --------------------------------------


def _worker(conn, variant: Variant, model_name: str, args: argparse.Namespace) -> None:
    """Builds one loop, warms it up, then runs one epoch per request and sends its seconds."""
    torch.set_num_threads(variant.options.get("threads", args.threads))
    try:
        if variant.options.get("trainer"):
            epoch = _trainer_epoch(model_name, args, precision=variant.options["precision"])
        elif variant.options.get("fused"):
            epoch = _fused_epoch(model_name, args, vmap=variant.options.get("vmap", False))
        else:
            epoch = _loop_epoch(model_name, variant.options, args)
        epoch()  # warm-up: allocator, oneDNN kernels, the heap's first growth
        conn.send(("ready", None))
        while conn.recv() == "epoch":
            conn.send(("seconds", epoch()))
    except Exception as err:  # noqa: BLE001 -- reported by the parent
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def _digits(args: argparse.Namespace):
    """The first ``--images`` training digits of mnist-10k and 256 validation ones."""
    from caetune.models import ImageData, load_dataset

    data = load_dataset("mnist-10k", seed=0)
    if args.images > data.train.shape[0]:
        raise ValueError(
            f"--images {args.images}: mnist-10k has {data.train.shape[0]} training images"
        )
    return ImageData(name=data.name, train=data.train[: args.images], val=data.val[:256])


def _trainer_epoch(model_name: str, args: argparse.Namespace, *, precision: str):
    from caetune.models import Trainer

    n_maps, n_neurons = MODELS[model_name]
    config = TrainConfig(
        n_maps=n_maps,
        n_neurons=n_neurons,
        n_epochs=10**6,
        batch_size=args.batch_size,
        device=args.device,
        precision=precision,
    )
    trainer = Trainer(config, _digits(args))

    def epoch() -> float:
        return trainer.run_epoch().train_seconds  # the validation pass is not counted

    return epoch


def _fused_epoch(model_name: str, args: argparse.Namespace, *, vmap: bool):
    """K same-shape trials as one model; seconds per epoch of all K (each saw every image)."""
    from caetune.models._fused import FusedTrainer

    n_maps, n_neurons = MODELS[model_name]
    configs = [
        TrainConfig(
            n_maps=n_maps,
            n_neurons=n_neurons,
            n_epochs=10**6,
            batch_size=args.batch_size,
            device=args.device,
            precision="fp32",
            seed=seed,
        )
        for seed in range(FUSED_K)
    ]
    if vmap:
        return _vmap_epoch(configs, args)
    trainer = FusedTrainer(configs, _digits(args))

    def epoch() -> float:
        return trainer.run_epoch()[0].train_seconds

    return epoch


def _vmap_epoch(configs: list, args: argparse.Namespace):
    """The torch.func way: stacked weights, vmap over one CAE's functional_call."""
    import copy

    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    from caetune.models import build_model, to_float_images
    from caetune.models._train import tune_allocator

    tune_allocator()
    device = torch.device(args.device)
    models = []
    for config in configs:
        torch.manual_seed(config.seed)
        models.append(build_model(config, in_channels=1, image_size=(28, 28)).to(device))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    optimizer = torch.optim.Adam(params.values(), lr=1e-3, fused=device.type == "cpu")
    x = to_float_images(_digits(args).train, device)  # [N, 1, 28, 28]
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]

    def one(p, b, batch):
        return functional_call(base, (p, b), (batch,))[0]

    def epoch() -> float:
        start = time.perf_counter()
        orders = [torch.randperm(x.shape[0], generator=g).to(device) for g in generators]
        for first in range(0, x.shape[0], args.batch_size):
            batch = torch.stack([x[o[first : first + args.batch_size]] for o in orders])
            recon = vmap(one)(params, buffers, batch)  # [K, B, 1, 28, 28]
            loss = F.mse_loss(recon, batch, reduction="none").mean(dim=(1, 2, 3, 4)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    return epoch


def _loop_epoch(model_name: str, options: dict, args: argparse.Namespace):
    """A hand-written loop: the tutorial's by default; options switch on each optimisation."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from caetune.models import CAE, to_float_images
    from caetune.models._train import tune_allocator

    if options.get("allocator"):
        tune_allocator()
    device = torch.device(args.device)
    torch.manual_seed(0)
    n_maps, n_neurons = MODELS[model_name]
    model = CAE(n_maps=n_maps, n_neurons=n_neurons).to(device)
    x = to_float_images(_digits(args).train, torch.device("cpu"))  # [N, 1, 28, 28]
    if options.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1e-3, **({"fused": True} if options.get("fused") else {})
    )
    batch_size = args.batch_size

    if options.get("resident"):
        x = x.to(device)
        generator = torch.Generator().manual_seed(0)

        def batches():
            order = torch.randperm(x.shape[0], generator=generator).to(device)
            for start in range(0, x.shape[0], batch_size):
                yield x.index_select(0, order[start : start + batch_size])

    else:
        loader = DataLoader(TensorDataset(x), batch_size=batch_size, shuffle=True)

        def batches():
            for (batch,) in loader:
                yield batch.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def epoch() -> float:
        model.train()
        start = time.perf_counter()
        running = 0.0
        total = torch.zeros((), device=device)
        for batch in batches():
            optimizer.zero_grad(set_to_none=not options.get("keep_grads"))
            recon, _ = model(batch)
            loss = F.mse_loss(recon, batch)
            loss.backward()
            optimizer.step()
            if options.get("resident"):
                total += loss.detach()
            else:
                running += loss.item()  # as tutorials print their running loss
        float(total)
        sync()
        return time.perf_counter() - start

    return epoch


def time_variants(
    variants: list[Variant], model_name: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Epoch seconds of each variant; the workers take turns until each had ``--seconds``."""
    context = mp.get_context("spawn")
    workers = {}
    for variant in variants:
        parent, child = context.Pipe()
        process = context.Process(
            target=_worker, args=(child, variant, model_name, args), daemon=True
        )
        process.start()
        workers[variant.name] = (parent, process)
    try:
        for name, (conn, _) in workers.items():
            kind, value = conn.recv()
            if kind == "error":
                raise RuntimeError(f"{name} on {model_name}: {value}")
        seconds: dict[str, list[float]] = {name: [] for name in workers}
        while (
            min(sum(s) for s in seconds.values()) < args.seconds
            or min(len(s) for s in seconds.values()) < 3
        ):
            for name, (conn, _) in workers.items():
                conn.send("epoch")
                kind, value = conn.recv()
                if kind == "error":
                    raise RuntimeError(f"{name} on {model_name}: {value}")
                seconds[name].append(value)
        return seconds
    finally:
        for conn, process in workers.values():
            try:
                conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


# -- the report --------------------------------------------------------------


def bf16_native() -> dict:
    """What torch reports of the CPU's bf16 hardware (what ``precision: auto`` reads)."""
    from caetune.models._precision import bf16_native as native

    return {
        "amx_tile": bool(torch.cpu._is_amx_tile_supported()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native": native(torch.device("cpu")),
    }


def loop_variants(args: argparse.Namespace, *, native: bool) -> list[Variant]:
    variants = [Variant("tutorial")]
    if args.ablation:
        variants += [Variant(name, options) for name, options in STEPS.items()]
    variants.append(Variant("caetune", {"trainer": True, "precision": "fp32"}))
    if native or args.emulated_bf16 or args.device == "cuda":
        name = "caetune bf16" if native or args.device == "cuda" else "caetune bf16 (emulated)"
        variants.append(Variant(name, {"trainer": True, "precision": "bf16"}))
    if args.device == "cpu":
        one = {"trainer": True, "precision": "fp32", "threads": 1}
        variants.append(Variant("caetune, 1 thread", one))
    variants.append(Variant(f"fused K={FUSED_K}", {"fused": True}))
    if args.ablation:
        variants.append(Variant(f"fused K={FUSED_K} (vmap)", {"fused": True, "vmap": True}))
    return variants


def measure(args: argparse.Namespace) -> dict:
    from caetune.models import CAE

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    peak_seconds = min(args.seconds, 10.0) / 2
    native = bf16_native() if args.device == "cpu" else {"native": True}

    def peaks_now() -> dict:
        return {
            name: matmul_peak(
                device=args.device, seconds=peak_seconds, batch_size=args.batch_size, dtype=dtype
            )
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        }

    peaks = [peaks_now()]
    variants = loop_variants(args, native=native["native"])
    seconds = {model_name: time_variants(variants, model_name, args) for model_name in args.models}
    # Once more at the end: on a busy machine the faster of the two is nearer the truth.
    peaks.append(peaks_now())
    peak = {p: max((run[p] for run in peaks), key=lambda r: r["gflops"]) for p in peaks[0]}

    results = {}
    for model_name, by_loop in seconds.items():
        n_maps, n_neurons = MODELS[model_name]
        macs = CAE(n_maps=n_maps, n_neurons=n_neurons).shape.forward_macs()
        rows = {}
        for variant in variants:
            times = by_loop[variant.name]
            models = FUSED_K if variant.options.get("fused") else 1
            best = models * args.images / min(times)
            own_peak = peak["bf16" if variant.options.get("precision") == "bf16" else "fp32"]
            rows[variant.name] = {
                "images_per_second": best,
                "median_images_per_second": models * args.images / statistics.median(times),
                "epochs": len(times),
                "gflops": best * 6 * macs / 1e9,
                "peak_share": best * 6 * macs / 1e9 / own_peak["gflops"],
                "vs_tutorial": best / (args.images / min(by_loop["tutorial"])),
                # Each round runs every loop once, back to back: their ratio within a
                # round shares that round's load, so its median is robust to noise.
                "vs_tutorial_paired": statistics.median(
                    models * t / v for t, v in zip(by_loop["tutorial"], times, strict=True)
                ),
            }
        results[model_name] = {
            "n_maps": n_maps,
            "n_neurons": n_neurons,
            "forward_macs": macs,
            "loops": rows,
        }
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(),
        "bf16_native": native,
        "torch": torch.__version__,
        "device": args.device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "images_per_epoch": args.images,
        "seconds_per_loop": args.seconds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "matmul_peak": peak,
        "matmul_peak_before_after": {p: [run[p]["gflops"] for run in peaks] for p in peaks[0]},
        "models": results,
        "targets": targets(results, args),
    }


def _check(what: str, value: float, shown: str, met: bool) -> dict:
    return {"what": what, "value": value, "shown": shown, "met": met}


def targets(results: dict, args: argparse.Namespace) -> list[dict]:
    """The issues' targets, each with the measured value and whether it is met."""
    checks = []
    for model_name, result in results.items():
        loops = result["loops"]
        ratio = loops["caetune"]["vs_tutorial"]
        what = f"{model_name}: caetune vs tutorial >= {TARGET_RATIO}x"
        checks.append(_check(what, ratio, f"{ratio:.2f}x", ratio >= TARGET_RATIO))
        share = loops["caetune"]["peak_share"]
        what = f"{model_name}: caetune fp32 >= {TARGET_PEAK_SHARE:.0%} of the fp32 matmul peak"
        checks.append(_check(what, share, f"{share:.0%}", share >= TARGET_PEAK_SHARE))
        bf16 = [name for name in loops if name.startswith("caetune bf16")]
        if bf16 and "emulated" not in bf16[0]:
            speedup = loops[bf16[0]]["images_per_second"] / loops["caetune"]["images_per_second"]
            what = f"{model_name}: bf16 >= {TARGET_BF16_SPEEDUP}x caetune fp32"
            checks.append(_check(what, speedup, f"{speedup:.2f}x", speedup >= TARGET_BF16_SPEEDUP))
            if model_name == "large":
                share = loops[bf16[0]]["peak_share"]
                what = f"large: bf16 >= {TARGET_BF16_PEAK_SHARE:.0%} of the bf16 matmul peak"
                checks.append(_check(what, share, f"{share:.0%}", share >= TARGET_BF16_PEAK_SHARE))
        fused = loops[f"fused K={FUSED_K}"]["images_per_second"]
        if "caetune, 1 thread" in loops:
            separate = args.threads * loops["caetune, 1 thread"]["images_per_second"]
            ratio = fused / separate
            goal = TARGET_FUSED if model_name == "small" else 1.0
            what = (
                f"{model_name}: fused K={FUSED_K} >= {goal}x {FUSED_K} separate 1-thread trials "
                f"(at most {args.threads} at once)"
            )
            checks.append(_check(what, ratio, f"{ratio:.2f}x", ratio >= goal))
    return checks


def _machine() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [
                line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")
            ]
        cpu = f"{names[0]} ({len(names)} logical CPUs)" if names else platform.processor()
    except OSError:
        cpu = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        cpu += f"; {torch.cuda.get_device_name()}"
    return cpu


def markdown(report: dict) -> str:
    peak = report["matmul_peak"]
    native = report["bf16_native"]
    flags = ", ".join(f"{k} {v}" for k, v in native.items())
    lines = [
        f"{report['date']} | {report['machine']} | torch {report['torch']} | {report['device']}, "
        f"{report['threads']} threads, batch {report['batch_size']}, "
        f"{report['images_per_epoch']} MNIST digits per epoch",
        f"bf16 hardware: {flags}",
        f"load average before/after: {report['load_average_before'][0]:.1f} / "
        f"{report['load_average_after'][0]:.1f}",
        "",
        f"torch.mm peaks: fp32 {peak['fp32']['gflops']:.0f} GFLOP/s, "
        f"bf16 {peak['bf16']['gflops']:.0f} GFLOP/s",
    ]
    if not native["native"] and report["device"] == "cpu":
        skipped = not any(
            name.startswith("caetune bf16")
            for result in report["models"].values()
            for name in result["loops"]
        )
        if skipped:
            lines.append("caetune bf16: not native here: skipped (--emulated-bf16 times it)")
    lines += [
        "",
        "| model | Nm | Nn | loop | img/s (best) | img/s (median) | vs tutorial | paired "
        "| GFLOP/s | % of own peak |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model_name, result in report["models"].items():
        for loop, row in result["loops"].items():
            cells = [
                model_name,
                result["n_maps"],
                result["n_neurons"],
                loop,
                f"{row['images_per_second']:,.0f}",
                f"{row['median_images_per_second']:,.0f}",
                f"{row['vs_tutorial']:.2f}x",
                f"{row['vs_tutorial_paired']:.2f}x",
                f"{row['gflops']:.1f}",
                f"{row['peak_share']:.0%}",
            ]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    lines.append("")
    lines.append(f"fused rows: summed img/s of {FUSED_K} models, each seeing every image.")
    for check in report["targets"]:
        lines.append(
            f"- target {check['what']}: {'PASS' if check['met'] else 'FAIL'} ({check['shown']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = measure(args)
    print(markdown(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
