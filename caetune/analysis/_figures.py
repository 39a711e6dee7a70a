"""The paper's figures, each a function returning a matplotlib Figure.

Figures are drawn on the Agg canvas without pyplot, so they need no display,
hold no global state and are safe to build from worker threads; write them
with :func:`save_figure`. Optuna's own views (:func:`plot_study`) go through
``optuna.visualization.matplotlib``, which uses pyplot: their figures are
detached from pyplot straight away and the style sheet Optuna switches to is
undone, so they behave like the others.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from caetune._errors import InputError
from caetune._runs import COMPLETE
from caetune.analysis._activations import Activations, _positive_int, layer_values, stacked_map
from caetune.analysis._curves import CurveFit, fit_mse_curve
from caetune.analysis._metrics import (
    LOCAL_SIZE,
    activation_entropy,
    activation_histogram,
    dead_fraction,
    local_entropy,
    quantize8,
)

STUDY_KINDS = ("history", "importances", "pareto")
MODEL_COLORS = {"model1": "tab:blue", "model2": "tab:orange"}
MODEL_MARKERS = {"model1": "o", "model2": "s"}


def new_figure(width: float, height: float) -> Figure:
    """An empty Figure on its own Agg canvas (no pyplot involved)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def note_figure(text: str, *, title: str | None = None) -> Figure:
    """A small figure that only says why there is nothing to plot."""
    fig = new_figure(6, 2.5)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return fig


def save_figure(
    fig: Figure, path_stem: str | Path, *, svg: bool = False, dpi: int = 120
) -> list[Path]:
    """Writes ``PATH_STEM.png`` (and ``PATH_STEM.svg``) and closes the figure.

    Args:
        fig: The figure to write.
        path_stem: The path without extension (a ``.png``/``.svg`` suffix is
            dropped); missing folders are created.
        svg: Also write an SVG (vector, for print).
        dpi: Resolution of the PNG.

    Returns:
        The files written.
    """
    stem = Path(path_stem)
    if stem.suffix.lower() in (".png", ".svg"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png")]
    if svg:
        paths.append(stem.with_name(stem.name + ".svg"))
    try:
        for path in paths:
            fig.savefig(path, dpi=dpi)
    finally:
        if "matplotlib.pyplot" in sys.modules:  # harmless for figures pyplot never saw
            sys.modules["matplotlib.pyplot"].close(fig)
    return paths


# -- learning curve ---------------------------------------------------------


def _history_frame(history) -> pd.DataFrame:
    """``EpochMetrics`` objects, dicts or a DataFrame -> columns epoch/train_mse/val_mse."""
    if isinstance(history, pd.DataFrame):
        return history
    return pd.DataFrame([m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in history])


def plot_mse_curve(
    history=None,
    *,
    epochs: Sequence[float] | None = None,
    train_mse: Sequence[float] | None = None,
    val_mse: Sequence[float] | None = None,
    fit: CurveFit | None = None,
    title: str | None = None,
) -> Figure:
    """MSE vs epoch with the fitted ``k * exp(-a * Ne) + c``.

    Give either ``history`` (``EpochMetrics`` objects, their dicts as in a
    trial's ``metrics.json``, or a DataFrame with ``epoch``, ``train_mse``,
    ``val_mse``) or the arrays ``epochs`` with ``train_mse`` and/or ``val_mse``.

    Args:
        fit: The curve to draw; ``None`` fits it to the validation MSE (the
            training MSE when there is none).
        title: The axes title.
    """
    if history is not None:
        frame = _history_frame(history)
        epochs = frame["epoch"] if "epoch" in frame else None
        train_mse = frame["train_mse"] if "train_mse" in frame else None
        val_mse = frame["val_mse"] if "val_mse" in frame else None
    if epochs is None or (train_mse is None and val_mse is None):
        raise InputError("history", "expected epochs with train_mse and/or val_mse")
    x = np.asarray(epochs, dtype=np.float64)
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for values, label, style in ((train_mse, "train MSE", "o-"), (val_mse, "validation MSE", "s-")):
        if values is not None:
            ax.plot(x, np.asarray(values, dtype=np.float64), style, ms=3.5, lw=1, label=label)
    if fit is None:
        fit = fit_mse_curve(x, val_mse if val_mse is not None else train_mse)
    if fit.ok and x.size:
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, fit.predict(grid), "k--", lw=1.2, label="k·exp(-a·Ne) + c")
        text = (
            f"k = {fit.k:.4g}\na = {fit.a:.4g}\nc = {fit.c:.4g}\n"
            f"levels off at Ne ≈ {fit.level_epoch}"
        )
        if fit.level_epoch is not None and fit.level_epoch <= x.max():
            ax.axvline(fit.level_epoch, color="grey", ls=":", lw=1)
        elif fit.level_epoch is not None:
            text += " (beyond the run)"
    else:
        text = "no curve fitted (fewer than 3 points or no fit)"
    ax.text(
        0.97,
        0.97,
        text,
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8},
    )
    ax.set_xlabel("epoch (Ne)")
    ax.set_ylabel("MSE")
    ax.set_title(title or "Reconstruction error vs epochs")
    ax.legend(loc="center right", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


# -- images and activation maps ---------------------------------------------


def _as_images(images) -> np.ndarray:
    """``[N, C, H, W]`` uint8 or float (NumPy or torch) -> float in [0, 1]."""
    array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if array.ndim != 4:
        raise InputError("images", f"expected [N, C, H, W], got shape {array.shape}")
    array = (
        array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    )
    return np.clip(array, 0.0, 1.0)


def _show_image(ax, image: np.ndarray) -> None:
    """One ``[C, H, W]`` image: grey for one channel, RGB for three."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.transpose(image[:3], (1, 2, 0)), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstructions(images, reconstructions, *, n: int = 8) -> Figure:
    """The first ``n`` inputs (top row) over their reconstructions (bottom row).

    Args:
        images: ``[N, C, H, W]``, uint8 or float in [0, 1].
        reconstructions: The same shape.
        n: How many pairs to show.
    """
    n = _positive_int("n", n)
    originals, recons = _as_images(images), _as_images(reconstructions)
    if originals.shape != recons.shape:
        raise InputError("reconstructions", f"expected shape {originals.shape}, got {recons.shape}")
    n = min(n, originals.shape[0])
    fig = new_figure(1.2 * n + 0.8, 2.8)
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        _show_image(axes[0, i], originals[i])
        _show_image(axes[1, i], recons[i])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    mse = float(np.mean((originals[:n] - recons[:n]) ** 2))
    fig.suptitle(f"Inputs and reconstructions (MSE of these {n}: {mse:.4g})")
    return fig


_MAP_AXES = {
    "layer3": ("unit of the feature map (h*w, row-major)", "feature map (Nm)"),
    "layer4": ("bottleneck neuron (Nn)", "image"),
}


def _quantized_map(
    acts: Activations | np.ndarray, layer: str, image_index: int | None
) -> np.ndarray:
    """A stacked map in 8-bit levels, scaled by the layer's max over all images."""
    values = layer_values(acts, layer)
    return quantize8(stacked_map(values, layer, image_index=image_index), scale=float(values.max()))


def _map_title(kind: str, layer: str, image_index: int | None) -> str:
    if layer == "layer3":
        return f"{kind}: layer 3 of image {image_index or 0}"
    return f"{kind}: layer 4 of {'all images' if image_index is None else f'image {image_index}'}"


def plot_stacked_map(
    acts: Activations | np.ndarray, layer: str, *, image_index: int | None = None
) -> Figure:
    """The paper's stacked activation map of one layer, as 8-bit grey levels.

    Layer 3: ``Nm`` rows x ``h*w`` columns for one image; layer 4: images x
    ``Nn`` (a dead neuron is a black column). See :func:`stacked_map`.
    """
    levels = _quantized_map(acts, layer, image_index)
    fig = new_figure(8, 3.6)
    ax = fig.add_subplot()
    shown = ax.imshow(levels, cmap="gray", vmin=0, vmax=255, aspect="auto", interpolation="nearest")
    fig.colorbar(shown, ax=ax, label="8-bit level")
    xlabel, ylabel = _MAP_AXES[layer]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    dead = dead_fraction(layer_values(acts, layer))
    ax.set_title(f"{_map_title('Stacked map', layer, image_index)} (dead units: {dead:.1%})")
    return fig


def plot_histogram(acts: Activations | np.ndarray, layer: str, *, bins: int = 64) -> Figure:
    """Histogram of all of a layer's activations over all images (log counts)."""
    values = layer_values(acts, layer)
    counts, edges = activation_histogram(values, bins=bins)
    fig = new_figure(6.4, 3.8)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("count")
    entropy = activation_entropy(quantize8(values))
    ax.set_title(
        f"{layer}: mean {values.mean():.3g}, std {values.std():.3g}, "
        f"8-bit entropy {entropy:.2f} bits",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    return fig


def plot_local_entropy(
    acts: Activations | np.ndarray,
    layer: str,
    *,
    image_index: int | None = None,
    size: int = LOCAL_SIZE,
) -> Figure:
    """Local entropy (``size x size`` window, bits) of a layer's stacked map."""
    entropy = local_entropy(_quantized_map(acts, layer, image_index), size=size)
    fig = new_figure(8, 3.6)
    ax = fig.add_subplot()
    shown = ax.imshow(
        entropy,
        cmap="viridis",
        vmin=0,
        vmax=math.log2(size * size),
        aspect="auto",
        interpolation="nearest",
    )
    fig.colorbar(shown, ax=ax, label="bits")
    xlabel, ylabel = _MAP_AXES[layer]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    title = _map_title(f"Local entropy ({size}x{size})", layer, image_index)
    ax.set_title(f"{title}, mean {entropy.mean():.2f} bits")
    return fig


# -- across the trials of a search ------------------------------------------

_SUMMARY_X = (("n_neurons", "Nn (n_neurons)"), ("n_maps", "Nm (n_maps)"))


def _completed(results: pd.DataFrame) -> pd.DataFrame:
    frame = results
    if "status" in frame:
        frame = frame[frame["status"] == COMPLETE]
    if "val_mse" in frame:
        frame = frame[np.isfinite(pd.to_numeric(frame["val_mse"], errors="coerce"))]
    return frame


def _groups(frame: pd.DataFrame):
    if "model" not in frame:
        yield "all trials", frame
        return
    yield from frame.groupby("model", sort=True)


def _scatter_with_medians(ax, frame: pd.DataFrame, x: str, y: str, yerr: str | None = None) -> None:
    """Each trial as a point (coloured by model), the median per x value as a line."""
    for model, group in _groups(frame):
        group = group.sort_values(x)
        color = MODEL_COLORS.get(model)
        marker = MODEL_MARKERS.get(model, "o")
        err = group[yerr] if yerr is not None and yerr in group else None
        points = ax.errorbar(
            group[x],
            group[y],
            yerr=err,
            fmt=marker,
            ms=4,
            alpha=0.6,
            color=color,
            elinewidth=0.8,
            capsize=2,
            label=str(model),
        )
        medians = group.groupby(x)[y].median()
        if len(medians) > 1:
            ax.plot(medians.index, medians.to_numpy(), "-", lw=1, color=points.lines[0].get_color())


def _missing(ax, column: str) -> None:
    ax.text(
        0.5, 0.5, f"no {column} in the results", ha="center", va="center", transform=ax.transAxes
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _log_x_if_wide(ax, values: pd.Series) -> None:
    values = values[values > 0]
    if len(values) and values.max() / values.min() >= 8:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 256, not 2^8


def plot_trials_summary(results: pd.DataFrame) -> Figure:
    """The paper's summary plots across a search's completed trials.

    Rows: validation MSE; layer 3 map mean (error bars: its std); layer 4 map
    mean (error bars: its std), each against Nn (left) and Nm (right), points
    coloured and marked by model, the median per value joined by a line. The
    last row compares the models: box plots of validation MSE and of the
    utilisation U.

    Args:
        results: A search's ``results.csv`` as a DataFrame (see
            :mod:`caetune._runs` for its columns); only rows with
            ``status == "complete"`` and a finite ``val_mse`` are drawn.
    """
    frame = _completed(results)
    if frame.empty or "val_mse" not in frame:
        return note_figure("no completed trials with a validation MSE yet", title="Trials summary")
    rows = (
        ("val_mse", None, "validation MSE"),
        ("layer3_mean", "layer3_std", "layer 3 mean ± std"),
        ("layer4_mean", "layer4_std", "layer 4 mean ± std"),
    )
    fig = new_figure(10, 12)
    axes = fig.subplots(len(rows) + 1, 2, squeeze=False)
    for col, (x, xlabel) in enumerate(_SUMMARY_X):
        for row, (y, yerr, ylabel) in enumerate(rows):
            ax = axes[row, col]
            if x not in frame or y not in frame:
                _missing(ax, x if x not in frame else y)
                continue
            _scatter_with_medians(ax, frame, x, y, yerr)
            _log_x_if_wide(ax, frame[x])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    for col, (y, ylabel) in enumerate(
        (("val_mse", "validation MSE"), ("utilisation", "utilisation U"))
    ):
        ax = axes[-1, col]
        if y not in frame:
            _missing(ax, y)
            continue
        pairs = [(str(m), g[y].to_numpy(dtype=float)) for m, g in _groups(frame)]
        names, data = zip(*pairs, strict=True)
        ax.boxplot(data)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} by model", fontsize=10)
        ax.grid(alpha=0.3)
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=9)
    fig.suptitle(f"{len(frame)} completed trials")
    return fig


# -- Optuna's own views -----------------------------------------------------


def plot_study(study, kind: str) -> Figure:
    """One of Optuna's views of a study, via ``optuna.visualization.matplotlib``.

    Args:
        study: An :class:`optuna.Study` (single- or multi-objective).
        kind: ``history`` (optimisation history; the first objective of a
            multi-objective study), ``importances`` (parameter importances by
            Optuna's default evaluator, for the first objective) or
            ``pareto`` (the Pareto front of a multi-objective study).

    Returns:
        The plot, or a small figure with a note saying why it cannot be drawn
        (no completed trials; fewer than two, or no parameter that varies, for
        importances; a single-objective study for the Pareto front).
    """
    if kind not in STUDY_KINDS:
        raise InputError("kind", f"expected one of {', '.join(STUDY_KINDS)}, got {kind!r}")
    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as optuna_mpl

    title = {
        "history": "Optimisation history",
        "importances": "Parameter importances",
        "pareto": "Pareto front",
    }
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    first = {"target": (lambda t: t.values[0]), "target_name": names[0]} if multi else {}
    # Optuna's default importance evaluator (PED-ANOVA) ranks params by how they
    # lower a custom target, so a maximised first objective is negated there.
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    importance_target = (
        {"target": (lambda t: sign * t.values[0]), "target_name": names[0]} if multi else {}
    )
    if not completed:
        return note_figure("no completed trials yet", title=title[kind])
    if kind == "importances":
        seen: dict[str, set[str]] = {}
        for trial in completed:
            for name, value in trial.params.items():
                seen.setdefault(name, set()).add(repr(value))
        if len(completed) < 2 or all(len(values) < 2 for values in seen.values()):
            return note_figure(
                "needs at least 2 completed trials whose parameters vary", title=title[kind]
            )
    if kind == "pareto" and not multi:
        return note_figure("single-objective study: no Pareto front", title=title[kind])

    with (
        warnings.catch_warnings(),
        matplotlib.rc_context(),
    ):  # Optuna switches pyplot to ggplot style
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings(
            "ignore", message="PedAnovaImportanceEvaluator computes"
        )  # handled by sign
        try:
            if kind == "history":
                ax = optuna_mpl.plot_optimization_history(study, **first)
            elif kind == "importances":
                ax = optuna_mpl.plot_param_importances(study, **importance_target)
            else:
                ax = optuna_mpl.plot_pareto_front(study, target_names=names)
        except (ValueError, RuntimeError) as err:  # e.g. importances of a degenerate study
            return note_figure(f"Optuna could not draw it: {err}", title=title[kind])
    fig = ax.figure
    assert isinstance(fig, Figure)  # Optuna draws on a pyplot figure of its own
    import matplotlib.pyplot as plt

    plt.close(fig)  # detach from pyplot: the caller owns it, as with the other figures
    return fig
