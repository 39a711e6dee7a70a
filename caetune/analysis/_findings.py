"""The findings of Tang, Lim & Siebert, each judged from measured curves.

A verdict is computed from the numbers, never typed in:

* an effect *agrees* when it points the paper's way and is larger than
  twice the pooled seed-to-seed standard deviation (``NOISE_SDS``), *disagrees*
  when it points the other way by as much, and is *inconclusive* otherwise
  (including when the grid lacks the configurations the check needs);
* the curve findings use :func:`caetune.analysis.fit_mse_curve` on each
  configuration's seed-averaged curve.

:func:`analyse` needs only the per-epoch curves, so it runs the same on a
reproduction's ``curves.csv`` as on synthetic curves;
:mod:`caetune.analysis._reproduce` trains the grid and writes the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

VERDICTS = ("agree", "disagree", "inconclusive")
NOISE_SDS = 2.0  # an effect counts when larger than this many pooled seed sds
PLATEAU_EPOCH = 15  # the paper: little is gained after about 15 epochs
PLATEAU_AGREE = 0.10  # share of the total improvement still to come after PLATEAU_EPOCH
PLATEAU_DISAGREE = 0.25
FIT_K_MAX = 0.4  # the paper's exponential fit: k < 0.4 and a < 0.1
FIT_A_MAX = 0.1
CONFIG_KEYS = ["model", "n_neurons", "n_maps"]
RUN_KEYS = CONFIG_KEYS + ["seed"]


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
    """What :func:`~caetune.analysis._reproduce.reproduce` measured (the same tables it wrote to
    ``out``).
    """

    out: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    configs: pd.DataFrame
    fits: pd.DataFrame
    findings: pd.DataFrame
    seconds: float


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
        f"Nn={nn}, Nm={nm}: Model 1 {plus_minus(pair['model1'], sds[('model1', nn, nm)])}, "
        f"Model 2 {plus_minus(pair['model2'], sds[('model2', nn, nm)])}; "
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
        f"{name} {row[column]}: {plus_minus(row['val_mse_mean'], row['val_mse_sd'])}"
        for _, row in sweep.iterrows()
    )


def plus_minus(mean: float, sd: float) -> str:
    """``mean ± sd``, as the findings' evidence and tables print it."""
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
