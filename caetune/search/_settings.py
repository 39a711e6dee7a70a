"""The settings of one search: :class:`SearchSettings` and their validation.

Also how a resumed run's stored settings and the given ones combine (:func:`resolve_settings`).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

from caetune._errors import InputError
from caetune.search._defaults import DEFAULT_SPACE, DEFAULTS, DEFINITION
from caetune.search._objective import OBJECTIVES
from caetune.search._space import SearchSpace, load_space, space_from_dict
from caetune.search._tracking import check_log

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # used with fullmatch: no trailing newline
MAX_SEED = 2**31 - 1


@dataclass
class SearchSettings:
    """Everything ``caetune search`` takes; ``None`` means "the run's value, else the default".

    Attributes:
        space: A preset name or a space YAML file.
        dataset: Overrides the space's dataset.
        subset: Use only this many images of the dataset.
        max_epochs: Caps Ne (``n_epochs``) and ASHA's ``max_t``.
        objective: ``mse``, ``combined`` or ``pareto``.
        utilisation_weight: The combined objective's weight (0: pure MSE).
        seed: Seeds Optuna's sampler and every trial's training.
        start_point: Evaluate the space's start points (the paper's choice) first.
        grace_period: ASHA's first rung, in epochs.
        reduction_factor: ASHA's reduction factor.
        util_images: Validation images the utilisation is computed on.
        study_storage: An Optuna RDB URL; default SQLite in the run folder.
        num_samples: Trials in the study at the end.
        max_concurrent: At most this many trials at once (default: as resources allow).
        cpus_per_trial: CPUs per trial (also torch's thread count).
        gpus_per_trial: GPUs per trial, fractional to share one (> 0 trains on CUDA).
        device: Where trials train, ``cpu`` or ``cuda``; default ``cuda`` when
            ``gpus_per_trial`` > 0, else ``cpu``. ``cpu`` with GPUs per trial on
            a Ray told it has GPUs (``ray.init(num_gpus=...)``) packs trials as
            on a GPU machine without one (``benchmarks/gpu_packing.py``).
        max_failures: Ray retries of a trial whose worker or node died.
        confirm_seeds: Extra seeds for the top configs (0: no confirmation).
        top_k: How many configs to confirm and show.
        name: The run's name (default: the space's name).
        run_root: Where runs live, a local folder or ``s3://bucket/prefix``
            (default ``runs``); the run is ``RUN_ROOT/NAME``.
        address: A Ray cluster to join (default: ``RAY_ADDRESS`` or a local one).
        resume: The run must exist (``--resume NAME``).
        break_lease: Take the run's lease on shared storage even from a live
            owner (``--break-lease``; :mod:`caetune.search._lease`).
        report: Write the analysis report at the end.
        keep_all_state: Keep every trial's whole ``model.pt`` (``--keep-all-state``); by
            default a finished search keeps the best trials' weights, and optimizer state
            only where a later trial may continue it (:mod:`caetune.search._lean`).
        log: Experiment trackers, from ``tensorboard`` and ``mlflow`` (``--log``, repeatable;
            :mod:`caetune.search._tracking`); none by default.
        mlflow_uri: MLflow's tracking URI (default ``sqlite:///RUN/logs/mlflow.db``).
        storage: Deprecated: the old name of ``run_root`` (Optuna users read
            "storage" as the study's database, which is ``study_storage``).
    """

    space: str | None = None
    dataset: str | None = None
    subset: int | None = None
    max_epochs: int | None = None
    objective: str | None = None
    utilisation_weight: float | None = None
    seed: int | None = None
    start_point: bool | None = None
    grace_period: int | None = None
    reduction_factor: float | None = None
    util_images: int | None = None
    study_storage: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    device: str | None = None
    max_failures: int | None = None
    confirm_seeds: int | None = None
    top_k: int | None = None
    name: str | None = None
    run_root: str | None = None
    address: str | None = None
    resume: bool = False
    break_lease: bool = False
    report: bool = True
    keep_all_state: bool = False
    log: tuple[str, ...] = ()
    mlflow_uri: str | None = None
    storage: str | None = None

    def __post_init__(self) -> None:
        if self.storage is not None:
            warnings.warn(
                "SearchSettings(storage=...) is deprecated; use run_root=",
                DeprecationWarning,
                stacklevel=3,
            )
            if self.run_root not in (None, self.storage):
                raise InputError("--storage", "the old name of --run-root: give only --run-root")
            self.run_root, self.storage = self.storage, None
        for field, low in (
            ("num_samples", 1),
            ("max_epochs", 1),
            ("max_concurrent", 1),
            ("grace_period", 1),
            ("util_images", 1),
            ("top_k", 1),
            ("subset", 2),
            ("seed", 0),
            ("max_failures", 0),
            ("confirm_seeds", 0),
        ):
            _check_int(field, getattr(self, field), low)
        for field, bound, strict in (
            ("cpus_per_trial", 0.0, True),
            ("gpus_per_trial", 0.0, False),
            ("utilisation_weight", 0.0, False),
            ("reduction_factor", 1.0, True),
        ):
            _check_number(field, getattr(self, field), bound, strict)
        if self.device not in (None, "cpu", "cuda"):
            raise InputError("device", f"expected cpu or cuda, got {self.device!r}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise InputError(
                "--objective", f"expected one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.seed is not None and self.seed > MAX_SEED:
            # Optuna's sampler takes a 32-bit seed, and confirmation adds to it.
            raise InputError(
                "--seed", f"expected an integer between 0 and {MAX_SEED}, got {self.seed}"
            )
        if self.name is not None:
            check_name(self.name, field="--name")
        self.log = check_log(self.log, mlflow_uri=self.mlflow_uri)


def check_name(name: str, *, field: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            field,
            f"a run name of letters, digits, '.', '_' and '-' (one folder name), got {name!r}",
        )


def check_study_url(url: str | None) -> None:
    """An Optuna RDB URL must parse and name an installed driver (checked before any start)."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise InputError(
            "--study-storage",
            f"an RDB URL such as sqlite:///study.db or postgresql://host/db ({err})",
        ) from None
    except ImportError as err:
        raise InputError(
            "--study-storage", f"the database driver is not installed ({err})"
        ) from None


def default_name(settings: SearchSettings) -> str:
    spec = settings.space or DEFAULT_SPACE
    return load_space(spec).name


def resolve_settings(settings: SearchSettings, stored: dict | None) -> dict[str, Any]:
    """Each setting: as given, else as the run had it, else the default; definitions must agree.

    The study URL is stored without its password (:func:`display_url`), so it
    is compared in that form, and a run whose stored URL lost a password needs
    ``--study-storage`` again.
    """
    before = (stored or {}).get("settings", {})
    values, changed = {}, []
    for key, default in DEFAULTS.items():
        given = getattr(settings, key)
        seen = display_url(given) if key == "study_storage" and given is not None else given
        if (
            stored is not None
            and key in DEFINITION
            and given is not None
            and seen != stored_form(key, before.get(key))
        ):
            changed.append(f"{key} {before.get(key)!r} -> {seen!r}")
        values[key] = (
            given
            if given is not None
            else before.get(key, default)
            if stored is not None
            else default
        )
    if stored is not None and changed:
        raise InputError(
            "--name",
            f"run {stored['name']!r} exists with other settings ({'; '.join(changed)}); "
            "resume it without them or choose another --name",
        )
    if (
        stored is not None
        and settings.study_storage is None
        and _hides_secret(values["study_storage"])
    ):
        raise InputError(
            "--study-storage",
            f"run {stored['name']!r} keeps its study at {values['study_storage']}, whose password "
            "caetune does not store; give --study-storage again",
        )
    return values


def stored_form(key: str, value: Any) -> Any:
    """A setting as ``experiment.yaml`` stores it (also for runs from before URLs were redacted)."""
    return display_url(value) if key == "study_storage" and value is not None else value


def _hides_secret(url: str | None) -> bool:
    """Whether ``url`` is a stored study URL whose credentials :func:`display_url` replaced."""
    return url is not None and "://***@" in url


def space_of(values: dict, stored: dict | None) -> SearchSpace:
    """The resolved space: the stored one on resume, else the preset or file, overridden, capped."""
    if stored is not None:
        return space_from_dict(
            stored["space"], name=stored["space_name"], source=stored["settings"]["space"]
        )
    space = load_space(values["space"])
    space = space.with_fixed(dataset=values["dataset"], subset=values["subset"])
    return space.capped(values["max_epochs"])


def _check_int(field: str, value: Any, low: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(
            "--" + field.replace("_", "-"), f"expected an integer >= {low}, got {value!r}"
        )


def _check_number(field: str, value: Any, low: float, strict: bool) -> None:
    if value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        relation = ">" if strict else ">="
        raise InputError(
            "--" + field.replace("_", "-"), f"expected a number {relation} {low:g}, got {value!r}"
        )


def display_url(url: str) -> str:
    from caetune.search._searcher import _redact

    return _redact(url)
