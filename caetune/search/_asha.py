"""ASHA's settings, in one object: Ray's scheduler, the rungs it judges at, and the YAML block.

The scheduler that stops trials, the rungs the searcher promotes configs
along (:class:`~caetune.search._explore.ExploringSampler`) and the ``asha``
block of ``experiment.yaml`` must describe the same ASHA, so all three are
built here from one :class:`AshaSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from caetune.search._compat import asha_rungs

TIME_ATTR = "epoch"  # what a trial's results count ASHA's time in


@dataclass(frozen=True)
class AshaSettings:
    """ASHA with one bracket, timed in epochs, minimising a metric.

    Attributes:
        grace_period: Epochs before a trial may be stopped, as given.
        reduction_factor: ASHA's reduction factor (> 1).
        max_t: The most epochs a trial runs (the space's largest Ne).
    """

    grace_period: int
    reduction_factor: float
    max_t: int

    def __post_init__(self) -> None:
        # The user's values are checked in SearchSettings; these are the caller's mistakes.
        if self.grace_period < 1 or self.max_t < 1:
            raise ValueError(f"grace_period and max_t must be >= 1, got {self}")
        if not self.reduction_factor > 1:
            raise ValueError(f"reduction_factor must be > 1, got {self.reduction_factor}")

    @property
    def first_rung(self) -> int:
        """The grace period ASHA uses: never past ``max_t`` (Ray refuses one beyond it)."""
        return min(self.grace_period, self.max_t)

    def rungs(self) -> tuple[int, ...]:
        """The epochs at which the scheduler judges a trial, then ``max_t``: ``(1, 3, 9, 20)``.

        Ray records a trial at rung ``first_rung * reduction_factor ** k`` at
        its first result at or past it, so a fractional rung is judged at its
        ceiling.
        """
        return asha_rungs(
            grace_period=self.first_rung, reduction_factor=self.reduction_factor, max_t=self.max_t
        )

    def to_dict(self, *, metric: str) -> dict[str, Any]:
        """The ``asha`` block of ``experiment.yaml``: the scheduler's own arguments but ``mode``."""
        return {
            "time_attr": TIME_ATTR,
            "metric": metric,
            "max_t": self.max_t,
            "grace_period": self.first_rung,
            "reduction_factor": self.reduction_factor,
        }

    def scheduler(self, *, metric: str, cls: type | None = None) -> Any:
        """Ray's ASHA scheduler minimising ``metric``.

        Args:
            metric: The result key ASHA compares trials on.
            cls: A subclass of Ray's ``AsyncHyperBandScheduler`` to build
                (default that class itself).
        """
        if cls is None:
            from ray.tune.schedulers import AsyncHyperBandScheduler

            cls = AsyncHyperBandScheduler
        return cls(mode="min", **self.to_dict(metric=metric))
