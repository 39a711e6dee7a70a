"""Activations, utilisation metrics and the paper's figures.

Imports :mod:`caetune.models` only, never :mod:`caetune.search`.
"""

from caetune.analysis._activations import LAYERS, Activations, collect_activations, stacked_map
from caetune.analysis._metrics import (
    activation_entropy,
    activation_histogram,
    combined_objective,
    dead_fraction,
    layer_summary,
    local_entropy,
    model_utilisation,
    quantize8,
    utilisation,
)

__all__ = [
    "Activations",
    "LAYERS",
    "activation_entropy",
    "activation_histogram",
    "collect_activations",
    "combined_objective",
    "dead_fraction",
    "layer_summary",
    "local_entropy",
    "model_utilisation",
    "quantize8",
    "stacked_map",
    "utilisation",
]
