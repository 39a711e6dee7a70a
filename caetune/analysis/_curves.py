"""The paper's learning-curve model, ``MSE(Ne) = k * exp(-a * Ne) + c``.

Tang, Lim & Siebert fit this to the MSE after ``Ne`` epochs and report
``k < 0.4``, ``a < 0.1`` and a curve that is steady after about 15 epochs.
``c`` is the MSE the run tends to, ``k`` the drop still to come at ``Ne = 0``
and ``a`` how fast it comes.

"Levels off" is made precise here as the first whole epoch by which a share
``1 - level_fraction`` of the fitted drop is done (95% by default)::

    level_epoch = ceil(ln(1 / level_fraction) / a)

i.e. the first ``Ne`` with ``k * exp(-a * Ne) <= level_fraction * k``. It is
a property of the fitted curve, so it may lie beyond the last epoch run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from caetune._errors import InputError

LEVEL_FRACTION = 0.05
A_MAX = 10.0  # exp(-10) per epoch: the whole drop inside the first epoch


@dataclass(frozen=True)
class CurveFit:
    """A fitted ``k * exp(-a * Ne) + c``.

    Attributes:
        k: The drop still to come at ``Ne = 0``, ``>= 0``.
        a: The decay rate per epoch, in ``[0, 10]``.
        c: The MSE the curve tends to, ``>= 0``.
        level_epoch: The first ``Ne`` by which 95% of the drop is done (see
            the module docstring); ``None`` when the fit failed.
        ok: Whether the fit succeeded; with fewer than 3 finite points, or
            when the optimiser fails, ``k`` and ``a`` are NaN and ``c`` is
            the lowest MSE seen.
        rmse: Root mean squared residual of the fit (NaN when not ``ok``).
    """

    k: float
    a: float
    c: float
    level_epoch: int | None
    ok: bool
    rmse: float = math.nan

    def predict(self, epochs) -> np.ndarray:
        """The fitted MSE at ``epochs`` (NaN when the fit failed)."""
        return _model(np.asarray(epochs, dtype=np.float64), self.k, self.a, self.c)

    def to_dict(self) -> dict:
        return asdict(self)


def _model(x: np.ndarray, k: float, a: float, c: float) -> np.ndarray:
    return k * np.exp(-a * x) + c


def fit_mse_curve(epochs, mse, *, level_fraction: float = LEVEL_FRACTION) -> CurveFit:
    """Fits ``k * exp(-a * Ne) + c`` to an MSE history by least squares.

    Args:
        epochs: ``Ne`` of each point (1-based epochs, as ``EpochMetrics.epoch``).
        mse: The MSE after each of those epochs; non-finite points are dropped.
        level_fraction: What is left of the drop when the curve counts as level.

    Returns:
        A :class:`CurveFit`; ``ok=False`` rather than an exception when the
        data cannot be fitted.
    """
    x = np.asarray(epochs, dtype=np.float64).ravel()
    y = np.asarray(mse, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(
            "mse", f"expected one value per epoch, got {y.size} values for {x.size} epochs"
        )
    if not (isinstance(level_fraction, (int, float)) and 0 < level_fraction < 1):
        raise InputError(
            "level_fraction",
            f"expected a number between 0 and 1 (exclusive), got {level_fraction!r}",
        )
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if x.size < 3:
        return _failed(y)

    best = None
    for p0 in _initial_guesses(x, y):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(
                    _model,
                    x,
                    y,
                    p0=p0,
                    bounds=([0.0, 0.0, 0.0], [np.inf, A_MAX, np.inf]),
                    maxfev=5000,
                )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((_model(x, *params) - y) ** 2))
        if math.isfinite(sse) and (best is None or sse < best[0]):
            best = (sse, params)
    if best is None:
        return _failed(y)
    sse, (k, a, c) = best
    return CurveFit(
        float(k),
        float(a),
        float(c),
        _level_epoch(x, y, k, a, level_fraction),
        True,
        math.sqrt(sse / x.size),
    )


def _failed(y: np.ndarray) -> CurveFit:
    return CurveFit(math.nan, math.nan, float(y.min()) if y.size else math.nan, None, False)


def _initial_guesses(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """Starting points: a log-linear estimate of ``a``, then a few fixed rates.

    Several starts, because an exponential's least squares has flat valleys
    (a slow decay with a low asymptote fits a short run almost as well as a
    fast one with a high asymptote).
    """
    spread = float(y.max() - y.min())
    c0 = max(0.0, float(y.min()) - 0.05 * spread)
    rates = []
    above = y - c0 > 0
    if above.sum() >= 2:
        slope = np.polyfit(x[above], np.log(y[above] - c0), 1)[0]
        if math.isfinite(slope) and slope < 0:
            rates.append(min(-slope, A_MAX))
    rates += [0.05, 0.2, 1.0]
    first = int(np.argmin(x))
    guesses = []
    for a0 in rates:
        k0 = max(float(y[first]) - c0, 1e-12) * math.exp(min(a0 * float(x[first]), 50.0))
        guesses.append((k0, a0, c0))
    return guesses


def _level_epoch(x: np.ndarray, y: np.ndarray, k: float, a: float, level_fraction: float) -> int:
    # A drop still to come that is a rounding error of the data is no drop: the
    # optimiser leaves k at ~1e-10 with an arbitrary a on flat histories.
    first = float(x.min())
    if a <= 0 or k * math.exp(-a * first) <= 1e-6 * float(np.abs(y).max()):
        return int(math.ceil(first))  # a flat curve is level from the start
    return int(math.ceil(math.log(1.0 / level_fraction) / a))
