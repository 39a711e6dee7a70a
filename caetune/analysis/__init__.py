"""Activations, utilisation metrics and the paper's figures.

Imports :mod:`caetune.models` only, never :mod:`caetune.search`. The figure
functions load matplotlib and pandas on first use, so the search's workers,
which only need :func:`model_utilisation`, do not pay for them.
"""

import importlib

from caetune.analysis._activations import (
    LAYERS,
    Activations,
    collect_activations,
    sample_indices,
    stacked_map,
)
from caetune.analysis._curves import CurveFit, fit_mse_curve
from caetune.analysis._metrics import (
    activation_entropy,
    activation_histogram,
    combined_objective,
    dead_fraction,
    layer_summary,
    local_entropy,
    model_utilisation,
    objective_formula,
    quantize8,
    utilisation,
)
from caetune.analysis._report import write_report

# Loaded from caetune.analysis._figures on first use (see __getattr__).
_FIGURES = (
    "STUDY_KINDS",
    "plot_histogram",
    "plot_local_entropy",
    "plot_mse_curve",
    "plot_reconstructions",
    "plot_stacked_map",
    "plot_study",
    "plot_trials_summary",
    "save_figure",
)

__all__ = [
    "Activations",
    "CurveFit",
    "LAYERS",
    "activation_entropy",
    "activation_histogram",
    "collect_activations",
    "combined_objective",
    "dead_fraction",
    "fit_mse_curve",
    "layer_summary",
    "local_entropy",
    "model_utilisation",
    "objective_formula",
    "quantize8",
    "sample_indices",
    "stacked_map",
    "utilisation",
    "write_report",
    *_FIGURES,
]


def __getattr__(name: str):
    if name in _FIGURES:
        value = getattr(importlib.import_module("caetune.analysis._figures"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
