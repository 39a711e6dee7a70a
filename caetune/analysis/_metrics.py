"""How much of a CAE's layers 3 and 4 is in use, and the search's combined objective.

Per layer (:func:`layer_summary`), over the activations of ``N`` validation
images:

* ``mean``, ``std``: of all the layer's values;
* ``dead_fraction``: the share of units that never fire, i.e. whose largest
  activation over the ``N`` images is ``<= 1e-8`` (layer 4: each of the Nn
  neurons; layer 3: each of the Nm*h*w units);
* ``entropy``: the global activation entropy, in bits, of the 8-bit histogram
  of all the layer's values, divided by 8 so it lies in [0, 1];
* ``local_entropy``: the paper's "first estimate", the entropy of the 8-bit
  quantised stacked map over a 13x13 (169-value) neighbourhood, exactly as
  :func:`skimage.filters.rank.entropy` computes it, averaged over the map and
  divided by 8 (a 169-value window holds at most log2(169) = 7.4 bits);
* ``utilisation``: ``(1 - dead_fraction) * local_entropy``, in [0, 1].

Quantisation (:func:`quantize8`) maps ``[0, max]`` onto 0..255 with the max
over the layer and all ``N`` images, so maps of different images are
comparable; negative values (possible with tanh/ELU/leaky ReLU) count as 0,
consistent with "active" meaning "> 0".

The model's utilisation ``U`` (:func:`utilisation`) is the mean of the two
layers' ``utilisation``. The search minimises the combined objective
(:func:`combined_objective`): the validation MSE, raised as ``U`` falls, so
that ``utilisation_weight = 0`` is the pure validation MSE and a weight ``w``
lets a fully unused model (``U = 0``) cost up to ``1 + w`` times its MSE.
:func:`objective_formula` is its text, the one the search records and the
report shows.

Local entropy is the slow part (a 13x13 rank filter per pixel), so it reads
only the first ``local_images`` images (default 16): layer 3's stacked maps of
those images, and layer 4's map restricted to those rows. Everything else uses
all ``N`` images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real

import numpy as np
from skimage.filters.rank import entropy as _rank_entropy
from torch import nn

from caetune._errors import InputError
from caetune.analysis._activations import (
    LAYERS,
    Activations,
    _positive_int,
    collect_activations,
    layer_values,
    stacked_map,
)

ENTROPY_BITS = 8  # the most an 8-bit (256-level) histogram can hold
LOCAL_SIZE = 13  # the paper's 13x13 = 169 neighbourhood
LOCAL_IMAGES = 16
DEAD_EPS = 1e-8


def quantize8(map2d: np.ndarray, *, scale: float | None = None) -> np.ndarray:
    """Maps ``[0, scale]`` linearly onto the 8-bit levels 0..255.

    Args:
        map2d: Activations of any shape (usually one stacked map).
        scale: The value that becomes 255; pass the layer's max over all
            images so maps are comparable. ``None``: this array's own max.

    Returns:
        ``uint8``, same shape. Values below 0 become 0, above ``scale`` 255;
        a map with no positive value (or ``scale <= 0``) is all zeros.
    """
    values = np.asarray(map2d, dtype=np.float32)
    if scale is None:
        scale = float(values.max()) if values.size else 0.0
    if not (math.isfinite(scale) and scale > 0):
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.nan_to_num(values * np.float32(255.0 / scale), nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0, out=scaled)).astype(np.uint8)


def local_entropy(map2d_uint8: np.ndarray, *, size: int = LOCAL_SIZE) -> np.ndarray:
    """Entropy in bits of each pixel's ``size x size`` neighbourhood.

    This is :func:`skimage.filters.rank.entropy` with a square footprint;
    near the border the window holds only the pixels inside the map.

    Args:
        map2d_uint8: A 2-D ``uint8`` map (see :func:`quantize8`).
        size: The window's side (13 in the paper: 169 values).

    Returns:
        ``float`` array of the map's shape, each value in ``[0, log2(size**2)]``.
    """
    size = _positive_int("size", size)
    image = np.asarray(map2d_uint8)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise InputError(
            "map2d_uint8", f"expected a 2-D uint8 map, got {image.dtype} of shape {image.shape}"
        )
    return _rank_entropy(image, np.ones((size, size), dtype=bool))


def activation_entropy(values: np.ndarray) -> float:
    """Global entropy in bits (0..8) of the 8-bit histogram of ``values``.

    ``uint8`` input is taken as already quantised; anything else is first
    quantised with :func:`quantize8` against its own max.
    """
    values = np.asarray(values)
    levels = values if values.dtype == np.uint8 else quantize8(values)
    if levels.size == 0:
        return 0.0
    counts = np.bincount(levels.ravel(), minlength=256)
    p = counts[counts > 0] / levels.size
    return max(0.0, float(-(p * np.log2(p)).sum()))  # max() turns -0.0 into 0.0


def activation_histogram(values: np.ndarray, *, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``values`` in ``bins`` equal bins from ``min(0, min)`` to ``max``.

    Returns:
        ``(counts [bins], edges [bins + 1])``, as :func:`numpy.histogram`.
    """
    bins = _positive_int("bins", bins)
    values = np.asarray(values, dtype=np.float32).ravel()
    low = min(0.0, float(values.min())) if values.size else 0.0
    high = float(values.max()) if values.size else 1.0
    return np.histogram(values, bins=bins, range=(low, high if high > low else low + 1.0))


def dead_fraction(acts: np.ndarray, *, eps: float = DEAD_EPS) -> float:
    """Share of units that never fire on any of the images.

    Args:
        acts: ``[N, units...]``, e.g. layer 4 ``[N, Nn]`` or layer 3
            ``[N, Nm, h, w]`` (each of the Nm*h*w values is a unit).
        eps: A unit is dead when its largest activation is ``<= eps``.
    """
    values = np.asarray(acts)
    if values.ndim < 2 or values.shape[0] == 0:
        raise InputError(
            "acts", f"expected a non-empty [N, units...] array, got shape {values.shape}"
        )
    peak = values.reshape(values.shape[0], -1).max(axis=0)  # [units]
    return float(np.mean(peak <= eps))


def layer_summary(
    acts: Activations | np.ndarray, layer: str, *, local_images: int = LOCAL_IMAGES
) -> dict[str, float]:
    """One layer's metrics (see the module docstring for each).

    Args:
        acts: :class:`Activations`, or the layer's own array.
        layer: ``layer3`` or ``layer4``.
        local_images: Local entropy reads only this many images (the first).

    Returns:
        ``{"mean", "std", "dead_fraction", "entropy", "local_entropy",
        "utilisation"}``; the last three lie in [0, 1].
    """
    local_images = _positive_int("local_images", local_images)
    values = layer_values(acts, layer)
    scale = float(values.max())
    n_local = min(local_images, values.shape[0])
    if layer == "layer3":
        maps = [stacked_map(values, layer, image_index=i) for i in range(n_local)]  # each [Nm, h*w]
    else:
        maps = [values[:n_local]]  # [n_local, Nn]
    local = (
        float(np.mean([local_entropy(quantize8(m, scale=scale)).mean() for m in maps]))
        / ENTROPY_BITS
    )
    dead = dead_fraction(values)
    return {
        "mean": float(values.mean(dtype=np.float64)),
        "std": float(values.std(dtype=np.float64)),
        "dead_fraction": dead,
        "entropy": activation_entropy(quantize8(values, scale=scale)) / ENTROPY_BITS,
        "local_entropy": local,
        "utilisation": (1.0 - dead) * local,
    }


def utilisation(activations: Activations, *, local_images: int = LOCAL_IMAGES) -> dict[str, float]:
    """Both layers' metrics as one flat dict, plus the model's ``utilisation`` U.

    Returns:
        ``layer3_mean, layer3_std, layer3_dead_fraction, layer3_entropy,
        layer3_local_entropy, layer3_utilisation``, the same for ``layer4_``,
        and ``utilisation``: the mean of the two layers' utilisation, in [0, 1].
        These are the ``layer3_*``/``layer4_*``/``utilisation`` columns of a
        search's ``results.csv``.
    """
    flat: dict[str, float] = {}
    for layer in LAYERS:
        summary = layer_summary(activations, layer, local_images=local_images)
        flat.update({f"{layer}_{key}": value for key, value in summary.items()})
    flat["utilisation"] = float(np.mean([flat[f"{layer}_utilisation"] for layer in LAYERS]))
    return flat


def model_utilisation(
    model: nn.Module,
    images,
    *,
    n_images: int = 256,
    local_images: int = LOCAL_IMAGES,
) -> dict[str, float]:
    """:func:`utilisation` of ``model`` on the first ``n_images`` of ``images``.

    This is what the search's objective calls once per trial.

    Args:
        model: A trained :class:`caetune.models.CAE`.
        images: ``[N, C, H, W]`` validation images, ``uint8`` or float in [0, 1].
        n_images: How many images to run through the model.
        local_images: How many of those feed the local entropy.
    """
    return utilisation(
        collect_activations(model, images, n_images=n_images), local_images=local_images
    )


def combined_objective(
    val_mse: float, utilisation: float | Mapping[str, float], *, weight: float
) -> float:
    """The combined objective of one model, what the search minimises (:func:`objective_formula`).

    Args:
        val_mse: The validation MSE.
        utilisation: U in [0, 1], or the dict :func:`utilisation` returns.
        weight: The search's ``utilisation_weight``, ``>= 0``; 0 gives the
            pure MSE.
    """
    if (
        isinstance(weight, bool)
        or not isinstance(weight, Real)
        or not (math.isfinite(weight) and weight >= 0)
    ):
        raise InputError("utilisation_weight", f"expected a number >= 0, got {weight!r}")
    u = float(utilisation["utilisation"] if isinstance(utilisation, Mapping) else utilisation)
    if not 0.0 <= u <= 1.0:
        raise InputError("utilisation", f"expected a value in [0, 1], got {u!r}")
    return float(val_mse) * (1.0 + float(weight) * (1.0 - u))


def objective_formula(kind: str, weight: float | None = None) -> str:
    """The formula of a search's objective, as one line of text.

    The one source of the text: the search records it (``experiment.yaml``),
    the report shows it.

    Args:
        kind: ``mse``, ``combined`` (:func:`combined_objective`) or ``pareto``
            (two objectives: the MSE and ``U``).
        weight: The combined objective's ``utilisation_weight``; ``None``
            writes its name instead of a number.
    """
    if kind == "mse":
        return "objective = val_mse"
    if kind == "combined":
        shown = "utilisation_weight" if weight is None else f"{float(weight):g}"
        return f"objective = val_mse * (1 + {shown} * (1 - U))"
    if kind == "pareto":
        return "minimise val_mse, maximise U (Pareto front)"
    raise InputError("objective", f"expected mse, combined or pareto, got {kind!r}")
