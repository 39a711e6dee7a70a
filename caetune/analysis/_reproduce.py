"""``caetune reproduce``: the paper's findings, measured again at small scale.

Trains a grid of CAEs on ``mnist-10k`` (the vendored 10,000-image MNIST test
split, split 80/20 per seed), each configuration with several seeds, records
the validation MSE after every epoch and checks each finding of Tang, Lim &
Siebert against what was measured. A verdict is computed from the numbers,
never typed in:

* an effect *agrees* when it points the paper's way and is larger than
  twice the pooled seed-to-seed standard deviation (``NOISE_SDS``), *disagrees*
  when it points the other way by as much, and is *inconclusive* otherwise
  (including when the grid lacks the configurations the check needs);
* the curve findings use :func:`caetune.analysis.fit_mse_curve` on each
  configuration's seed-averaged curve.

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

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from caetune._errors import InputError

VERDICTS = ("agree", "disagree", "inconclusive")
NOISE_SDS = 2.0  # an effect counts when larger than this many pooled seed sds
PLATEAU_EPOCH = 15  # the paper: little is gained after about 15 epochs
PLATEAU_AGREE = 0.10  # share of the total improvement still to come after PLATEAU_EPOCH
PLATEAU_DISAGREE = 0.25
FIT_K_MAX = 0.4  # the paper's exponential fit: k < 0.4 and a < 0.1
FIT_A_MAX = 0.1
DATASET = "mnist-10k"
CONFIG_KEYS = ["model", "n_neurons", "n_maps"]
RUN_KEYS = CONFIG_KEYS + ["seed"]


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

# The paper's findings, in the order of the table; each has a check below.
FINDINGS: dict[str, str] = {
    "nn_effect": "MSE falls as Nn (bottleneck neurons) grows",
    "model1_vs_model2": "Model 1 (one conv/pool stage) reconstructs better than Model 2 (three)",
    "exponential_fit": (
        f"MSE over epochs follows an exponential decay with k < {FIT_K_MAX:g} and a < {FIT_A_MAX:g}"
    ),
    "plateau": f"Little is gained after about {PLATEAU_EPOCH} epochs",
    "nm_effect": "Nm (feature maps) changes MSE less than Nn does",
}


@dataclass
class Reproduction:
    """What :func:`reproduce` measured (the same tables it wrote to ``out``)."""

    out: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    configs: pd.DataFrame
    fits: pd.DataFrame
    findings: pd.DataFrame
    seconds: float


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
    from caetune.models import TrainConfig, Trainer, load_data, resolve_device
    from caetune.models._cli import check_writable_dir

    points = _check_grid(grid)
    seeds = _int_at_least("seeds", seeds, 2)
    base = TrainConfig(
        dataset=DATASET,
        subset=subset,
        n_epochs=n_epochs,
        batch_size=batch_size,
        device=device,
        n_neurons=points[0].n_neurons,
        n_maps=points[0].n_maps,
        model=points[0].model,
    )  # validates n_epochs, subset, batch_size and device the one way every run does
    resolve_device(device)  # no GPU for device=cuda: say so now, not after the first run
    out = Path(out)
    check_writable_dir(out, field="--out")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    settings = {
        "n_epochs": base.n_epochs,
        "subset": base.subset,
        "batch_size": base.batch_size,
        "dataset": DATASET,
    }

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
                "model": point.model,
                "n_neurons": point.n_neurons,
                "n_maps": point.n_maps,
                "seed": seed,
            }
        )
        began = time.perf_counter()
        history = Trainer(config, data).fit()
        seconds = time.perf_counter() - began
        rows = pd.DataFrame(
            [
                {
                    "model": point.model,
                    "n_neurons": point.n_neurons,
                    "n_maps": point.n_maps,
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


def analyse(curves: pd.DataFrame) -> Reproduction:
    """Every table of a reproduction from its per-epoch curves alone.

    Args:
        curves: One row per (``model``, ``n_neurons``, ``n_maps``, ``seed``,
            ``epoch``) with ``val_mse`` (and ``seconds`` per run).
    """
    runs = (
        curves.sort_values("epoch")
        .groupby(RUN_KEYS, as_index=False)
        .agg(
            epochs=("epoch", "max"),
            val_mse=("val_mse", "last"),
            best_val_mse=("val_mse", "min"),
            seconds=("seconds", "first"),
        )
    )
    configs = (
        runs.groupby(CONFIG_KEYS, as_index=False)
        .agg(
            val_mse_mean=("val_mse", "mean"),
            val_mse_sd=("val_mse", "std"),
            n_seeds=("seed", "nunique"),
        )
        .sort_values(CONFIG_KEYS, ignore_index=True)
    )
    mean_curves = curves.groupby(CONFIG_KEYS + ["epoch"], as_index=False)["val_mse"].mean()
    fits = _fit_table(mean_curves)
    checks = {
        "nn_effect": lambda: _check_nn(configs),
        "model1_vs_model2": lambda: _check_models(configs),
        "exponential_fit": lambda: _check_fit(fits),
        "plateau": lambda: _check_plateau(mean_curves, fits),
        "nm_effect": lambda: _check_nm(configs),
    }
    rows = []
    for key, claim in FINDINGS.items():
        verdict, evidence, rule = checks[key]()
        rows.append(
            {
                "finding": key,
                "paper": claim,
                "caetune measured": evidence,
                "verdict": verdict,
                "rule": rule,
            }
        )
    findings = pd.DataFrame(rows)
    return Reproduction(Path("."), runs, curves, configs, fits, findings, seconds=float("nan"))


# -- the checks: each returns (verdict, evidence, rule) ----------------------------


def _check_nn(configs: pd.DataFrame) -> tuple[str, str, str]:
    rule = (
        "agree: mean MSE at the largest Nn is lower than at the smallest by more than "
        f"{NOISE_SDS:g} sd and no step up in Nn raises it by more; disagree: it is higher by "
        f"more than {NOISE_SDS:g} sd"
    )
    sweep = _longest_sweep(configs, vary="n_neurons", fixed="n_maps")
    if sweep is None:
        return "inconclusive", "needs Model 1 at two or more Nn with the same Nm", rule
    noise = _noise(sweep)
    means = sweep["val_mse_mean"].to_numpy()
    drop = means[0] - means[-1]
    worst_rise = float(np.max(np.diff(means))) if len(means) > 1 else 0.0
    evidence = (
        f"Nm={sweep['n_maps'].iloc[0]}: "
        + _levels(sweep, "n_neurons", "Nn")
        + (f"; drop {drop:.3g} vs {NOISE_SDS:g} sd = {noise:.2g}")
    )
    return _verdict(drop, noise, extra_ok=worst_rise <= noise), evidence, rule


def _check_models(configs: pd.DataFrame) -> tuple[str, str, str]:
    rule = (
        f"agree: Model 2's mean MSE exceeds Model 1's by more than {NOISE_SDS:g} pooled sd; "
        "disagree: the reverse"
    )
    pivot = configs.pivot_table(
        index=["n_neurons", "n_maps"], columns="model", values="val_mse_mean"
    )
    if not {"model1", "model2"} <= set(pivot.columns) or pivot[["model1", "model2"]].dropna().empty:
        return "inconclusive", "needs Model 1 and Model 2 at the same Nn and Nm", rule
    both = pivot[["model1", "model2"]].dropna()
    (nn, nm), pair = both.index[-1], both.iloc[-1]  # the largest Nn (then Nm): the paper's setting
    compared = configs[(configs["n_neurons"] == nn) & (configs["n_maps"] == nm)]
    noise = _noise(compared)
    sds = compared.set_index(CONFIG_KEYS)["val_mse_sd"]
    gap = pair["model2"] - pair["model1"]
    evidence = (
        f"Nn={nn}, Nm={nm}: Model 1 {_pm(pair['model1'], sds[('model1', nn, nm)])}, "
        f"Model 2 {_pm(pair['model2'], sds[('model2', nn, nm)])}; "
        f"gap {gap:.3g} vs {NOISE_SDS:g} sd = {noise:.2g}"
    )
    return _verdict(gap, noise), evidence, rule


def _check_fit(fits: pd.DataFrame) -> tuple[str, str, str]:
    rule = (
        "each configuration's mean curve fitted; agree: every successful fit has "
        f"k < {FIT_K_MAX:g} and a < {FIT_A_MAX:g}; disagree: none has; inconclusive: mixed, "
        "or no fit succeeded"
    )
    good = fits[fits["ok"]]
    if good.empty:
        return (
            "inconclusive",
            f"no curve could be fitted ({len(fits)} tried; a fit needs several epochs)",
            rule,
        )
    k_ok, a_ok = good["k"] < FIT_K_MAX, good["a"] < FIT_A_MAX
    inside = k_ok & a_ok
    evidence = (
        f"{int(inside.sum())} of {len(good)} fits inside; k < {FIT_K_MAX:g} in {int(k_ok.sum())} "
        f"(k {good['k'].min():.3g} to {good['k'].max():.3g}), "
        f"a < {FIT_A_MAX:g} in {int(a_ok.sum())} "
        f"(a {good['a'].min():.3g} to {good['a'].max():.3g})"
    )
    if inside.all():
        return "agree", evidence, rule
    return ("disagree" if not inside.any() else "inconclusive"), evidence, rule


def _check_plateau(mean_curves: pd.DataFrame, fits: pd.DataFrame) -> tuple[str, str, str]:
    rule = (
        "share of the improvement from epoch 1 to the last epoch that comes after epoch "
        f"{PLATEAU_EPOCH} (median over configurations): agree below {PLATEAU_AGREE:.0%}, "
        f"disagree above {PLATEAU_DISAGREE:.0%}"
    )
    last = int(mean_curves["epoch"].max())
    if last <= PLATEAU_EPOCH:
        return "inconclusive", f"needs more than {PLATEAU_EPOCH} epochs (ran {last})", rule
    shares = []
    for _, curve in mean_curves.groupby(CONFIG_KEYS):
        mse = curve.set_index("epoch")["val_mse"]
        total = mse.loc[1] - mse.loc[last]
        if total > 0:
            shares.append((mse.loc[PLATEAU_EPOCH] - mse.loc[last]) / total)
    if not shares:
        return "inconclusive", "no configuration improved from epoch 1", rule
    share = float(np.median(shares))
    levels = fits.loc[fits["ok"], "level_epoch"].dropna()
    level_text = f"; fitted level epoch median {levels.median():.3g}" if len(levels) else ""
    evidence = (
        f"median {share:.1%} of the improvement after epoch {PLATEAU_EPOCH} "
        f"(range {min(shares):.1%} to {max(shares):.1%}){level_text}"
    )
    if share < PLATEAU_AGREE:
        return "agree", evidence, rule
    return ("disagree" if share > PLATEAU_DISAGREE else "inconclusive"), evidence, rule


def _check_nm(configs: pd.DataFrame) -> tuple[str, str, str]:
    rule = (
        "effect = largest minus smallest mean MSE across a sweep; agree: the Nn effect exceeds "
        f"the Nm effect by more than {NOISE_SDS:g} pooled sd; disagree: the reverse"
    )
    nm_sweep = _longest_sweep(configs, vary="n_maps", fixed="n_neurons")
    nn_sweep = _longest_sweep(configs, vary="n_neurons", fixed="n_maps")
    if nm_sweep is None or nn_sweep is None:
        return (
            "inconclusive",
            "needs Model 1 at two or more Nm (same Nn) and two or more Nn (same Nm)",
            rule,
        )
    noise = _noise(pd.concat([nm_sweep, nn_sweep]).drop_duplicates(CONFIG_KEYS))
    nm_effect = float(np.ptp(nm_sweep["val_mse_mean"]))
    nn_effect = float(np.ptp(nn_sweep["val_mse_mean"]))
    evidence = (
        f"Nn={nm_sweep['n_neurons'].iloc[0]}: "
        + _levels(nm_sweep, "n_maps", "Nm")
        + f"; Nm effect {nm_effect:.3g} vs Nn effect {nn_effect:.3g} "
        f"({NOISE_SDS:g} sd = {noise:.2g})"
    )
    return _verdict(nn_effect - nm_effect, noise), evidence, rule


# -- helpers ----------------------------------------------------------------------


def _verdict(effect: float, noise: float, *, extra_ok: bool = True) -> str:
    """``agree`` when ``effect`` (signed the paper's way) clears the noise.

    ``disagree`` when its opposite does, else ``inconclusive``.
    """
    if not math.isfinite(noise):
        return "inconclusive"
    if effect > noise and extra_ok:
        return "agree"
    return "disagree" if -effect > noise else "inconclusive"


def _noise(compared: pd.DataFrame) -> float:
    """:data:`NOISE_SDS` times the seed-to-seed sd pooled over the compared configurations.

    Pooled as the root mean variance; NaN without repeats. Only those configurations: one
    unstable configuration elsewhere in the grid must not blur a comparison it takes no part in.
    """
    sds = compared.loc[compared["n_seeds"] >= 2, "val_mse_sd"].dropna()
    return NOISE_SDS * float(np.sqrt(np.mean(sds.to_numpy() ** 2))) if len(sds) else float("nan")


def _longest_sweep(configs: pd.DataFrame, *, vary: str, fixed: str) -> pd.DataFrame | None:
    """Model 1's configurations along ``vary`` at the ``fixed`` value with the most levels.

    Ties go to the largest ``fixed`` value.
    """
    model1 = configs[configs["model"] == "model1"]
    counts = model1.groupby(fixed)[vary].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return None
    best = max(counts.index, key=lambda value: (counts[value], value))
    return model1[model1[fixed] == best].sort_values(vary, ignore_index=True)


def _levels(sweep: pd.DataFrame, column: str, name: str) -> str:
    return ", ".join(
        f"{name} {row[column]}: {_pm(row['val_mse_mean'], row['val_mse_sd'])}"
        for _, row in sweep.iterrows()
    )


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.4g} ± {sd:.2g}"


def _fit_table(mean_curves: pd.DataFrame) -> pd.DataFrame:
    from caetune.analysis._curves import fit_mse_curve  # not the package: it imports this module

    rows = []
    for key, curve in mean_curves.groupby(CONFIG_KEYS):
        fit = fit_mse_curve(curve["epoch"].to_numpy(), curve["val_mse"].to_numpy())
        rows.append(
            {
                **dict(zip(CONFIG_KEYS, key, strict=True)),
                "k": fit.k,
                "a": fit.a,
                "c": fit.c,
                "level_epoch": fit.level_epoch,
                "ok": bool(fit.ok),
            }
        )
    return pd.DataFrame(rows, columns=CONFIG_KEYS + ["k", "a", "c", "level_epoch", "ok"])


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
            _pm(m, s)
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
