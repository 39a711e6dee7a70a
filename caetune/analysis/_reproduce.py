"""``caetune reproduce``: the paper's findings, measured again at small scale.

Trains a grid of CAEs on ``mnist-10k`` (the vendored 10,000-image MNIST test
split, split 80/20 per seed), each configuration with several seeds, records
the validation MSE after every epoch and checks each finding of Tang, Lim &
Siebert against what was measured (:mod:`caetune.analysis._findings`: each
verdict is computed from the numbers, never typed in).

Files written to ``OUT``::

    runs.csv       one row per (configuration, seed): final and best val MSE, seconds
    curves.csv     one row per (configuration, seed, epoch): train and val MSE
    configs.csv    one row per configuration: mean and sd over seeds
    fits.csv       the exponential fit of each configuration's mean curve
    findings.csv   one row per finding: the paper's claim, the evidence, the verdict
    findings.md    all of the above as one readable page
    findings.png   final MSE against Nn and Nm (mean ± sd), and the mean curves

``runs.csv``/``curves.csv`` grow after every run, so an interrupted
reproduction continues where it stopped when started again with the same
``OUT`` and settings.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from caetune._errors import InputError
from caetune.analysis._findings import (
    CONFIG_KEYS,
    NOISE_SDS,
    RUN_KEYS,
    Reproduction,
    analyse,
    plus_minus,
)

DATASET = "mnist-10k"


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the reproduction grid."""

    model: str
    n_neurons: int
    n_maps: int

    def label(self) -> str:
        return f"{self.model} Nn={self.n_neurons} Nm={self.n_maps}"


def make_grid(
    *,
    n_neurons: Sequence[int],
    n_maps: Sequence[int],
    anchor_n_neurons: int,
    anchor_n_maps: int,
    model2_at: Iterable[tuple[int, int]] = (),
    factorial: bool = False,
) -> tuple[GridPoint, ...]:
    """The configurations that test the paper's findings, without repeats.

    Args:
        n_neurons: The Nn levels of Model 1 (at ``anchor_n_maps``).
        n_maps: The Nm levels of Model 1 (at ``anchor_n_neurons``).
        anchor_n_neurons: Nn held fixed while Nm varies.
        anchor_n_maps: Nm held fixed while Nn varies.
        model2_at: ``(Nn, Nm)`` pairs at which Model 2 is trained beside Model 1.
        factorial: Train Model 1 at every Nn x Nm pair instead of two sweeps.
    """
    if factorial:
        points = [GridPoint("model1", nn, nm) for nn in n_neurons for nm in n_maps]
    else:
        points = [GridPoint("model1", nn, anchor_n_maps) for nn in n_neurons]
        points += [GridPoint("model1", anchor_n_neurons, nm) for nm in n_maps]
    for nn, nm in model2_at:
        points += [GridPoint("model1", nn, nm), GridPoint("model2", nn, nm)]
    return tuple(dict.fromkeys(points))


GRIDS: dict[str, tuple[GridPoint, ...]] = {
    # A smoke test: seconds per run on a CPU, every finding row exercised.
    "tiny": make_grid(
        n_neurons=(16, 64), n_maps=(4,), anchor_n_neurons=64, anchor_n_maps=4, model2_at=[(64, 4)]
    ),
    # One sweep per parameter through the paper's setting (Nn=2560 is Model 1's
    # largest bottleneck; Nm=32 its maps): 7 configurations.
    "small": make_grid(
        n_neurons=(40, 160, 640, 2560),
        n_maps=(8, 16, 32),
        anchor_n_neurons=640,
        anchor_n_maps=32,
        model2_at=[(2560, 32)],
    ),
    # Every Nn x Nm pair for Model 1, and Model 2 at each Nn: 16 configurations.
    "paper": make_grid(
        n_neurons=(40, 160, 640, 2560),
        n_maps=(8, 16, 32),
        anchor_n_neurons=640,
        anchor_n_maps=32,
        model2_at=[(nn, 32) for nn in (40, 160, 640, 2560)],
        factorial=True,
    ),
}


def reproduce(
    *,
    out: str | Path,
    seeds: int = 2,
    n_epochs: int = 20,
    subset: int | None = None,
    grid: str | Sequence[GridPoint] = "small",
    device: str = "auto",
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
) -> Reproduction:
    """Trains the grid with ``seeds`` seeds each and writes the findings table.

    Args:
        out: Folder for the CSV files and ``findings.md``.
        seeds: Seeds per configuration (0, 1, ...); at least 2, since the
            verdicts weigh effects against the seed-to-seed spread.
        n_epochs: Ne of every run.
        subset: Use only this many of the 10,000 images (``None``: all).
        grid: A name in :data:`GRIDS` or the configurations themselves.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: Images per optimizer step.
        log: Receives one line per finished run (default: stderr).

    Raises:
        InputError: A bad argument or an unwritable ``out``, before anything
            is written or trained.
    """
    from caetune._storage import check_writable_dir
    from caetune.models import TrainConfig, Trainer, load_data, resolve_device

    points = _check_grid(grid)
    seeds = _int_at_least("seeds", seeds, 2)
    # The fields every run shares and a restart must match (device only decides where it runs).
    shared: dict[str, Any] = {
        "n_epochs": n_epochs,
        "subset": subset,
        "batch_size": batch_size,
        "dataset": DATASET,
    }
    # Validates n_epochs, subset, batch_size and device the one way every run does.
    base = TrainConfig(**shared, device=device, **asdict(points[0]))
    resolve_device(device)  # no GPU for device=cuda: say so now, not after the first run
    out = Path(out)
    check_writable_dir(out, field="--out")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    settings = {key: getattr(base, key) for key in shared}

    curves = _previous_curves(out, settings)
    done = set(map(tuple, curves[RUN_KEYS].drop_duplicates().itertuples(index=False)))
    runs = [(p, s) for p in points for s in range(seeds)]
    start = time.perf_counter()
    # Every run trains on these images (a bad subset fails here): the runs differ in
    # model, Nn, Nm and the training seed, none of them a data field; the split is split_seed's.
    data = load_data(base)
    out.mkdir(parents=True, exist_ok=True)
    for index, (point, seed) in enumerate(runs, 1):
        if (point.model, point.n_neurons, point.n_maps, seed) in done:
            continue
        config = TrainConfig.from_dict(
            {
                **base.to_dict(),
                **asdict(point),
                "seed": seed,
            }
        )
        began = time.perf_counter()
        history = Trainer(config, data).fit()
        seconds = time.perf_counter() - began
        rows = pd.DataFrame(
            [
                {
                    **asdict(point),
                    "seed": seed,
                    "epoch": m.epoch,
                    "train_mse": m.train_mse,
                    "val_mse": m.val_mse,
                    "seconds": seconds,
                    **settings,
                }
                for m in history
            ]
        )
        curves = pd.concat([curves, rows], ignore_index=True) if len(curves) else rows
        _write_csv(curves, out / "curves.csv")  # after every run, so a restart resumes here
        log(
            f"[{index}/{len(runs)}] {point.label()} seed={seed}: "
            f"val_mse {history[-1].val_mse:.6f} ({seconds:.1f} s)"
        )

    keep = {(p.model, p.n_neurons, p.n_maps, s) for p, s in runs}
    curves = curves[
        [tuple(r) in keep for r in curves[RUN_KEYS].itertuples(index=False)]
    ].reset_index(drop=True)
    result = analyse(curves)
    result.out = out
    result.seconds = float(time.perf_counter() - start)
    write_tables(
        result,
        settings={**settings, "seeds": seeds, "grid": grid if isinstance(grid, str) else "custom"},
    )
    return result


def _check_grid(grid: str | Sequence[GridPoint]) -> tuple[GridPoint, ...]:
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise InputError("--grid", f"expected one of {', '.join(GRIDS)}, got {grid!r}")
        return GRIDS[grid]
    points = tuple(grid)
    if not points or not all(isinstance(p, GridPoint) for p in points):
        raise InputError("grid", "expected a grid name or a non-empty sequence of GridPoint")
    return points


def _int_at_least(field: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(field, f"expected an integer >= {low}, got {value!r}")
    return value


def _previous_curves(out: Path, settings: dict) -> pd.DataFrame:
    """The curves of an earlier, interrupted reproduction in ``out`` with the same settings."""
    path = out / "curves.csv"
    if not path.is_file():
        return pd.DataFrame(columns=RUN_KEYS)
    try:
        curves = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(
            "--out", f"{path} exists but cannot be read ({err}); move it away to start afresh"
        ) from None
    same = pd.Series(True, index=curves.index)
    for key, value in settings.items():
        if key not in curves:
            return pd.DataFrame(columns=RUN_KEYS)
        same &= curves[key].isna() if value is None else curves[key] == value
    return curves[same].reset_index(drop=True)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def write_tables(result: Reproduction, *, settings: dict) -> None:
    """Writes the CSV tables and ``findings.md`` of ``result`` into ``result.out``."""
    out = result.out
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(result.runs, out / "runs.csv")
    _write_csv(result.configs, out / "configs.csv")
    _write_csv(result.fits, out / "fits.csv")
    _write_csv(result.findings, out / "findings.csv")
    configs = result.configs.assign(
        val_mse=[
            plus_minus(m, s)
            for m, s in zip(
                result.configs["val_mse_mean"], result.configs["val_mse_sd"], strict=True
            )
        ]
    )[CONFIG_KEYS + ["val_mse", "n_seeds"]]
    setting_text = ", ".join(f"{k}={v}" for k, v in settings.items())
    lines = [
        "# The paper's findings, measured by caetune",
        "",
        f"Settings: {setting_text}. Runs: {len(result.runs)}, "
        f"training time {result.runs['seconds'].sum():.0f} s "
        f"in all (this invocation's wall time: {result.seconds:.0f} s).",
        f"Verdicts weigh each effect against {NOISE_SDS:g} x the seed-to-seed sd of the final "
        "val MSE, pooled (root mean variance) over the configurations that finding compares.",
        "",
        "## Findings",
        "",
        _markdown(result.findings[["finding", "paper", "caetune measured", "verdict"]]),
        "",
        "## Rules",
        "",
        *[f"- **{row.finding}**: {row.rule}" for row in result.findings.itertuples()],
        "",
        "## Final validation MSE per configuration (mean ± sd over seeds)",
        "",
        _markdown(configs),
        "",
        "## Exponential fits of the mean curves",
        "",
        _markdown(result.fits),
        "",
    ]
    (out / "findings.md").write_text("\n".join(lines), encoding="utf-8")
    from caetune.analysis._figures import save_figure

    save_figure(plot_reproduction(result), out / "findings")


def plot_reproduction(result: Reproduction):
    """Final val MSE against Nn and against Nm (mean ± sd over seeds, one line per model and fixed
    value), and each configuration's seed-averaged validation curve."""
    from caetune.analysis._figures import new_figure

    fig = new_figure(15, 4.2)
    axes = fig.subplots(1, 3)
    configs = result.configs
    for ax, (vary, fixed, label) in zip(
        axes[:2], (("n_neurons", "n_maps", "Nn"), ("n_maps", "n_neurons", "Nm")), strict=True
    ):  # the third axis shows the curves
        for (model, value), group in configs.groupby(["model", fixed]):
            if group[vary].nunique() < 2 and model == "model1":
                continue
            group = group.sort_values(vary)
            ax.errorbar(
                group[vary],
                group["val_mse_mean"],
                yerr=group["val_mse_sd"],
                fmt="o-",
                ms=4,
                capsize=3,
                label=f"{model}, {'Nm' if fixed == 'n_maps' else 'Nn'}={value}",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # one unstable configuration must not flatten the others
        levels = sorted(configs[vary].unique())
        ax.set_xticks(levels, [str(v) for v in levels])
        ax.minorticks_off()
        ax.set_xlabel(f"{label} ({vary})")
        ax.set_ylabel("final validation MSE")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    mean_curves = result.curves.groupby(CONFIG_KEYS + ["epoch"], as_index=False)["val_mse"].mean()
    for key, curve in mean_curves.groupby(CONFIG_KEYS):
        axes[2].plot(curve["epoch"], curve["val_mse"], lw=1, label=GridPoint(*key).label())
    axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch (Ne)")
    axes[2].set_ylabel("validation MSE (mean over seeds)")
    axes[2].legend(fontsize=7)
    axes[2].grid(alpha=0.3)
    seeds = int(configs["n_seeds"].max()) if len(configs) else 0
    fig.suptitle(f"caetune reproduce: {len(configs)} configurations x {seeds} seeds on {DATASET}")
    return fig


def _markdown(frame: pd.DataFrame) -> str:
    """A GitHub-style table (pandas' own needs the optional ``tabulate``)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
