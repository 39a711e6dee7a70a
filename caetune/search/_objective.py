"""What a search minimises: ``mse``, ``combined`` or ``pareto``.

``U`` is the activation-entropy utilisation of layers 3 and 4
(:func:`caetune.analysis.model_utilisation`, on validation images). ``mse``
is the validation MSE alone; ``combined`` raises it as ``U`` falls
(:func:`caetune.analysis.combined_objective`; ``utilisation_weight = 0``
makes it the pure MSE); ``pareto`` minimises the MSE and maximises ``U`` as
two objectives (Optuna's multi-objective TPE), and the results mark the
Pareto front. Each one's formula, as recorded and reported, is
:func:`caetune.analysis.objective_formula`; this module only chooses which
values the search sees. ASHA stops trials on one number per epoch: the
``objective`` for ``mse`` and ``combined``, ``val_mse`` for ``pareto``
(ASHA cannot rank two objectives).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from caetune._errors import InputError

OBJECTIVES = ("mse", "combined", "pareto")
DEFAULT_WEIGHT = 0.5


@dataclass(frozen=True)
class Objective:
    """The objective of a search.

    Args:
        kind: ``mse``, ``combined`` or ``pareto``.
        weight: ``utilisation_weight`` of the combined objective, ``>= 0``.
    """

    kind: str = "combined"
    weight: float = DEFAULT_WEIGHT

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise InputError(
                "--objective", f"expected one of {', '.join(OBJECTIVES)}, got {self.kind!r}"
            )
        w = self.weight
        if (
            isinstance(w, bool)
            or not isinstance(w, (int, float))
            or not (math.isfinite(w) and w >= 0)
        ):
            raise InputError("--utilisation-weight", f"expected a number >= 0, got {w!r}")
        object.__setattr__(self, "weight", float(w))

    @property
    def multi(self) -> bool:
        return self.kind == "pareto"

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        """Optuna study directions."""
        return ["minimize", "maximize"] if self.multi else ["minimize"]

    @property
    def metric_names(self) -> list[str]:
        """The study's names for :meth:`values` (``study.set_metric_names``)."""
        return ["val_mse", "utilisation"] if self.multi else ["objective"]

    @property
    def scheduler_metric(self) -> str:
        """The per-epoch value ASHA compares (always minimised)."""
        return "val_mse" if self.multi else "objective"

    @property
    def formula(self) -> str:
        """The objective as one line of text (:func:`caetune.analysis.objective_formula`)."""
        # Imported here: caetune.analysis loads torch, and `caetune search --help` imports this.
        from caetune.analysis import objective_formula

        return objective_formula(self.kind, self.weight)

    def evaluate(self, val_mse: float, utilisation: Mapping[str, float]) -> float:
        """The scalar ``objective`` of one epoch: MSE, combined, or (pareto) the MSE.

        Non-finite MSE gives ``inf``: a diverged model is the worst possible.
        """
        if not math.isfinite(val_mse):
            return math.inf
        if self.kind == "combined":
            from caetune.analysis import combined_objective

            return combined_objective(val_mse, utilisation, weight=self.weight)
        return float(val_mse)

    def values(self, result: Mapping[str, Any]) -> list[float]:
        """What Optuna is told for a finished trial (one value, or MSE and U)."""
        if self.multi:
            return [float(result["val_mse"]), float(result["utilisation"])]
        return [float(result["objective"])]

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.kind, "utilisation_weight": self.weight, "formula": self.formula}
