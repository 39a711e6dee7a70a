"""AshaSettings: Ray's scheduler, the searcher's rungs and experiment.yaml's block agree."""

from __future__ import annotations

import math

import pytest

from caetune.search._asha import AshaSettings

CASES = [(1, 2.0, 20), (1, 3.0, 20), (1, 4.0, 6), (2, 2.5, 30), (1, 2.0, 16), (3, 2.0, 3)]


@pytest.mark.parametrize(("grace", "rf", "max_t"), CASES)
def test_the_rungs_are_where_rays_asha_judges(grace, rf, max_t):
    from ray.tune.schedulers.async_hyperband import _Bracket

    ray_rungs = sorted(
        math.ceil(milestone) for milestone, _ in _Bracket(grace, max_t, rf, 0)._rungs
    )
    assert AshaSettings(grace_period=grace, reduction_factor=rf, max_t=max_t).rungs() == tuple(
        dict.fromkeys([*ray_rungs, max_t])
    )


@pytest.mark.parametrize(
    ("grace", "rf", "max_t"),
    # a grace period past max_t (a space whose largest Ne is below --grace-period) included
    [*CASES, (10, 3.0, 6), (7, 2.0, 6), (6, 3.0, 6), (2, 3.0, 1)],
)
def test_scheduler_rungs_and_yaml_agree(grace, rf, max_t):
    from ray.tune.schedulers import AsyncHyperBandScheduler

    from caetune.search._recorder import RecordingASHA

    asha = AshaSettings(grace_period=grace, reduction_factor=rf, max_t=max_t)
    block = asha.to_dict(metric="objective")
    for cls in (None, RecordingASHA):
        scheduler = asha.scheduler(metric="objective", cls=cls)
        assert isinstance(scheduler, cls or AsyncHyperBandScheduler)
        judged = sorted(math.ceil(milestone) for milestone, _ in scheduler._brackets[0]._rungs)
        assert asha.rungs() == tuple(dict.fromkeys([*judged, max_t]))
        assert block == {
            "time_attr": scheduler._time_attr,
            "metric": scheduler._metric,
            "max_t": scheduler._max_t,
            "grace_period": judged[0] if judged else max_t,
            "reduction_factor": scheduler._reduction_factor,
        }
        assert scheduler._mode == "min"
    assert block["grace_period"] == min(grace, max_t) == asha.rungs()[0]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="reduction_factor"):
        AshaSettings(grace_period=1, reduction_factor=1.0, max_t=4)
    with pytest.raises(ValueError, match="grace_period"):
        AshaSettings(grace_period=0, reduction_factor=2.0, max_t=4)
