"""Every Ray and Optuna internal caetune relies on, each behind one small function.

Ray and Optuna keep these out of their public APIs, so a release may move
one or change what it means without notice. Two of them are security
measures: a local Ray that listens on 127.0.0.1 only
(:func:`bind_local_ray_to_loopback`), and AWS keys kept out of the runtime
env Ray Tune gives each trial, which Ray logs (:func:`keep_aws_keys_from_trials`).
``tests/search/test_compat.py`` checks each one, fast and without a Ray
cluster, against the installed versions: what it reads must exist and still
do what caetune relies on. ``pyproject.toml`` caps ray and optuna below the
first minor version those tests have not passed on.

A wrapper that finds its internal gone raises :class:`FrameworkChanged`,
naming it, rather than going on without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any


class FrameworkChanged(RuntimeError):
    """A Ray or Optuna internal caetune relies on has moved or changed meaning."""

    def __init__(self, internal: str, problem: str) -> None:
        self.internal = internal
        super().__init__(
            f"{internal}: {problem}. caetune relies on this internal of {_versions()}; "
            "pyproject.toml pins the versions caetune was tested with"
        )


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("ray", "optuna"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return " / ".join(found)


def _attribute(owner: Any, name: str, internal: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise FrameworkChanged(internal, "is gone") from None


# -- Ray: the two security patches -------------------------------------------------------

RAY_CONSTANTS = "ray._private.ray_constants"
LOOPBACK_ENV = f"{RAY_CONSTANTS}.ENABLE_RAY_CLUSTERS_ENV_VAR"
LOOPBACK_FLAG = f"{RAY_CONSTANTS}.ENABLE_RAY_CLUSTER"
PROPAGATED_ENV = "ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE"


def bind_local_ray_to_loopback() -> None:
    """A local Ray started after this listens on 127.0.0.1 only, not on every interface.

    Ray's local-only mode (meant for laptops, where it avoids firewall
    prompts) gives the node the loopback address, so GCS, raylet and agents
    bind there. The environment variable reaches the processes Ray starts;
    the constant covers this process, which imported Ray already.

    Raises:
        FrameworkChanged: Ray no longer has the switch.
    """
    from ray._private import ray_constants

    env_var = _attribute(ray_constants, "ENABLE_RAY_CLUSTERS_ENV_VAR", LOOPBACK_ENV)
    _attribute(ray_constants, "ENABLE_RAY_CLUSTER", LOOPBACK_FLAG)
    if not isinstance(env_var, str) or not env_var:
        raise FrameworkChanged(LOOPBACK_ENV, f"is {env_var!r}, not an environment variable name")
    os.environ[env_var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def keep_aws_keys_from_trials() -> None:
    """Stops Ray Tune from copying AWS keys into every trial's runtime env.

    Ray Tune propagates ``AWS_ACCESS_KEY_ID`` and friends from the driver into
    each trial actor's runtime env, and Ray's runtime-env agent logs runtime
    envs: the keys would land in the session logs. A local Ray's workers
    inherit the driver's environment anyway; cluster nodes use their instance
    profile (cluster.yaml).

    Raises:
        FrameworkChanged: Tune no longer keeps the set of variables it propagates there.
    """
    from ray.tune.execution import class_cache

    names = _attribute(class_cache, "ENV_VARS_TO_PROPAGATE", PROPAGATED_ENV)
    if not isinstance(names, (set, frozenset)):
        raise FrameworkChanged(PROPAGATED_ENV, f"is a {type(names).__name__}, not a set of names")
    class_cache.ENV_VARS_TO_PROPAGATE = {v for v in names if not v.startswith("AWS_")}


# -- Ray Tune: a trial's bookkeeping -------------------------------------------------------

RUN_METADATA = "ray.tune.experiment.Trial.run_metadata"
TRIAL_PATH = "ray.tune.experiment.Trial.path"
_RESULT_FIELDS = ("last_result", "metric_analysis", "metric_n_steps")


def forget_trial_results(trial: Any, *, keep: Iterable[str]) -> None:
    """Drops Ray Tune's copy of an ended trial's results but the keys ``keep`` of its last one.

    Tune keeps them (last result, running statistics of every number, and a
    cached JSON of both) in the trial's ``run_metadata`` and has no setting
    to drop them (why caetune does: the recorder's ``_forget_results``), so
    its fields are emptied in place; assigning a field also drops the cached
    JSON (its ``__setattr__``).

    Raises:
        FrameworkChanged: The trial keeps its results elsewhere now.
    """
    metadata = _attribute(trial, "run_metadata", RUN_METADATA)
    for field in _RESULT_FIELDS:
        if not isinstance(getattr(metadata, field, None), dict):
            raise FrameworkChanged(f"{RUN_METADATA}.{field}", "is gone or no longer a dict")
    kept = set(keep)
    metadata.last_result = {k: v for k, v in metadata.last_result.items() if k in kept}
    metadata.metric_analysis = {}
    metadata.metric_n_steps = {}


def trial_folder(trial: Any) -> str:
    """The trial's folder on the experiment's filesystem (``RUN/tune/<trial dir>``).

    ``Trial`` is a Ray developer API: stable within a minor version only.

    Raises:
        FrameworkChanged: The trial no longer says where its folder is.
    """
    path = _attribute(trial, "path", TRIAL_PATH)
    if not isinstance(path, str) or not path:
        raise FrameworkChanged(TRIAL_PATH, f"is {path!r}, not a folder path")
    return path


# -- Ray Tune: ASHA's rungs ---------------------------------------------------------------

ASHA_RUNGS = "ray.tune.schedulers.async_hyperband._Bracket's rungs"


def asha_rungs(*, grace_period: int, reduction_factor: float, max_t: int) -> tuple[int, ...]:
    """The epochs at which Ray's ASHA (one bracket) judges a trial, then ``max_t``.

    Ray keeps the rung formula in its private ``_Bracket``: rung ``k`` is
    ``grace_period * reduction_factor ** k`` below ``max_t``, recorded at a
    trial's first result at or past it, so a fractional rung is judged at its
    ceiling. ``grace_period`` must be at most ``max_t`` (Ray refuses more).
    """
    rungs, k = [], 0
    while grace_period * reduction_factor**k < max_t:
        rungs.append(math.ceil(grace_period * reduction_factor**k))
        k += 1
    return tuple(dict.fromkeys([*rungs, max_t]))


# -- Optuna: a Trial for a trial number ------------------------------------------------

STUDY_STORAGE = "optuna.study.Study._storage"


def study_storage(study: Any) -> Any:
    """The study's storage (an ``optuna.storages.BaseStorage``).

    Optuna hands a study's storage to no public accessor; everything caetune
    then asks of it goes through ``BaseStorage``'s public methods.

    Raises:
        FrameworkChanged: The study keeps its storage elsewhere now.
    """
    from optuna.storages import BaseStorage

    storage = _attribute(study, "_storage", STUDY_STORAGE)
    if not isinstance(storage, BaseStorage):
        raise FrameworkChanged(STUDY_STORAGE, f"is a {type(storage).__name__}, not a BaseStorage")
    return storage


def trial_handle(study: Any, number: int) -> Any:
    """An ``optuna.Trial`` for the study's trial ``number``, to report values and set attributes.

    Optuna hands these out only from ``ask``; a trial resumed from an earlier
    session needs one made from its storage id.
    """
    from optuna.trial import Trial

    storage = study_storage(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    return Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))
