"""Search spaces: which :class:`~caetune.models.TrainConfig` fields a search varies, and how.

A space is a YAML file (or a preset shipped in ``caetune/search/presets``)::

    description: one line for humans
    fixed:                 # TrainConfig fields every trial shares
      dataset: mnist-10k
    params:                # the searched fields
      n_neurons: {low: 40, high: 4096, log: true}    # an int range (log scale)
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # a float range
      model: [model1, model2]                         # a choice
    start:                 # evaluated first, in this order (may be omitted)
      - {n_neurons: 2560, n_maps: 32, n_epochs: 20, model: model1}

A range's type (int or float) is its field's type in ``TrainConfig``; ``step``
is allowed on ranges without ``log``. Every bound, choice and start value is
checked by building a ``TrainConfig`` with it, so a space can only propose
configs that train. The data fields (:data:`~caetune.models.DATA_FIELDS`:
``dataset``, ``subset``, ``image_size``, ``split_seed`` ...) can only be fixed:
the search loads the data once and shares it between all trials. ``seed`` and
``device`` belong to the search, not to the space.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from caetune._errors import InputError
from caetune.models._config import DATA_FIELDS, TrainConfig, read_yaml_mapping
from caetune.search._defaults import preset_names

# Fields the search itself sets per trial.
SEARCH_FIELDS = ("seed", "device")
SEARCHABLE = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in DATA_FIELDS + SEARCH_FIELDS
)
SPACE_KEYS = ("description", "fixed", "params", "start")
RANGE_KEYS = ("low", "high", "log", "step")


@dataclass(frozen=True)
class Param:
    """One searched field: a range (``low``..``high``) or a list of ``choices``."""

    name: str
    kind: str  # "int", "float" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def distribution(self):
        """The Optuna distribution that samples this field."""
        import optuna.distributions as od

        if self.kind == "categorical":
            return od.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return od.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return od.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        low, high = self.bounds
        return low <= value <= high

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a range; a list of choices has none."""
        if self.low is None or self.high is None:
            raise TypeError(f"{self.name} is a list of choices, not a range")
        return self.low, self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        scale = " log" if self.log else ""
        return f"{self.kind}{scale} {self.low:g}..{self.high:g}"

    def to_yaml_value(self) -> Any:
        if self.kind == "categorical":
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space.

    Attributes:
        name: The preset name or the file's stem.
        description: One line for humans.
        fixed: TrainConfig fields shared by every trial (the dataset among them).
        params: The searched fields, by name, in file order.
        start: Points evaluated first (each a mapping of some searched fields).
        source: Where it came from (``preset:NAME`` or the file path).
    """

    name: str
    description: str
    fixed: dict[str, Any]
    params: dict[str, Param]
    start: tuple[dict[str, Any], ...] = ()
    source: str = ""

    @property
    def dataset(self) -> str:
        return str(self.fixed.get("dataset", TrainConfig.dataset))

    def distributions(self) -> dict[str, Any]:
        return {name: p.distribution() for name, p in self.params.items()}

    def train_config(self, params: dict[str, Any], **overrides: Any) -> TrainConfig:
        """The full config of one trial: fixed fields, then ``params``, then ``overrides``."""
        return TrainConfig.from_dict(
            {**self.fixed, **params, **overrides}, source=f"space {self.name}"
        )

    def n_epochs(self, params: dict[str, Any]) -> int:
        """A proposal's Ne: searched, else fixed by the space, else ``TrainConfig``'s default."""
        return self.train_config(params).n_epochs

    def with_fixed(self, **values: Any) -> SearchSpace:
        """The same space with data fields fixed to other values (``--dataset``, ``--subset``)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        for key in values:
            if key in self.params:
                raise InputError(
                    f"--{key.replace('_', '-')}",
                    f"{key} is searched by space {self.name}; edit the space",
                )
        space = dataclasses.replace(self, fixed={**self.fixed, **values})
        _check_fixed(space.fixed, where=f"space {self.name}")
        return space

    def capped(self, max_epochs: int | None) -> SearchSpace:
        """The space with Ne (``n_epochs``) at most ``max_epochs`` (``--max-epochs``).

        A searched range is clipped; a fixed value and the start points are
        lowered to the cap. A range that starts above the cap is an error.
        """
        if max_epochs is None:
            return self
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise InputError("--max-epochs", f"expected an integer >= 1, got {max_epochs!r}")
        fixed, params = dict(self.fixed), dict(self.params)
        ne = params.get("n_epochs")
        if ne is not None:
            if ne.kind == "categorical":
                kept = tuple(c for c in ne.choices if c <= max_epochs)
                if not kept:
                    raise InputError(
                        "--max-epochs",
                        f"{max_epochs} is below every n_epochs choice of space {self.name}",
                    )
                params["n_epochs"] = dataclasses.replace(ne, choices=kept)
            elif ne.bounds[0] > max_epochs:
                raise InputError(
                    "--max-epochs",
                    f"{max_epochs} is below n_epochs.low = {ne.low:g} of space {self.name}",
                )
            else:
                params["n_epochs"] = dataclasses.replace(ne, high=min(ne.bounds[1], max_epochs))
        elif int(fixed.get("n_epochs", TrainConfig.n_epochs)) > max_epochs:
            fixed["n_epochs"] = max_epochs
        start = tuple(
            {**point, "n_epochs": min(point["n_epochs"], max_epochs)}
            if "n_epochs" in point
            else point
            for point in self.start
        )
        start = tuple(_clip_start(point, params) for point in start)
        return dataclasses.replace(self, fixed=fixed, params=params, start=start)

    def max_epochs(self) -> int:
        """The largest Ne any trial can have (ASHA's ``max_t``)."""
        ne = self.params.get("n_epochs")
        if ne is None:
            return int(self.fixed.get("n_epochs", TrainConfig.n_epochs))
        return int(max(ne.choices) if ne.kind == "categorical" else ne.bounds[1])

    def to_dict(self) -> dict[str, Any]:
        """The space as YAML-ready data; :func:`space_from_dict` reads it back."""
        return {
            "description": self.description,
            "fixed": dict(self.fixed),
            "params": {name: p.to_yaml_value() for name, p in self.params.items()},
            "start": [dict(point) for point in self.start],
        }


def load_space(spec: str) -> SearchSpace:
    """A preset by name (``paper-mnist``) or a YAML file (``my-space.yaml``).

    Raises:
        InputError: An unknown preset, an unreadable or malformed file, or a
            space that could propose an invalid config.
    """
    if not isinstance(spec, str) or not spec:
        raise InputError(
            "--space", f"expected a preset ({', '.join(preset_names())}) or a FILE.yaml"
        )
    if spec in preset_names():
        text = (resources.files("caetune.search") / "presets" / f"{spec}.yaml").read_text(
            encoding="utf-8"
        )
        import yaml

        return space_from_dict(yaml.safe_load(text), name=spec, source=f"preset:{spec}")
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        raise InputError(
            "--space",
            f"unknown preset {spec!r}; expected one of {', '.join(preset_names())} or a FILE.yaml",
        )
    values = read_yaml_mapping(path, field="--space")
    return space_from_dict(values, name=path.stem, source=str(path))


def space_from_dict(values: Any, *, name: str, source: str) -> SearchSpace:
    """Validates a space given as data (the YAML's content)."""
    where = f"space {source}"
    if not isinstance(values, dict):
        raise InputError(where, "expected a mapping with keys " + ", ".join(SPACE_KEYS))
    _no_unknown(values, SPACE_KEYS, where)
    description = values.get("description") or ""
    fixed = values.get("fixed") or {}
    raw_params = values.get("params") or {}
    raw_start = values.get("start") or []
    if not isinstance(fixed, dict):
        raise InputError(f"{where}: fixed", "expected a mapping of TrainConfig field: value")
    if not isinstance(raw_params, dict) or not raw_params:
        raise InputError(
            f"{where}: params", "expected a non-empty mapping of field: range or [choices]"
        )
    if isinstance(raw_start, dict):
        raw_start = [raw_start]
    if not isinstance(raw_start, list) or not all(isinstance(p, dict) for p in raw_start):
        raise InputError(f"{where}: start", "expected a list of mappings of searched field: value")

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in fixed:
        if key not in known or key in SEARCH_FIELDS:
            allowed = sorted(known - set(SEARCH_FIELDS))
            raise InputError(
                f"{where}: fixed.{key}", f"unknown field; expected one of {', '.join(allowed)}"
            )
    _check_fixed(fixed, where=where)

    hints = {f.name: str(f.type).replace(" | None", "") for f in dataclasses.fields(TrainConfig)}
    params: dict[str, Param] = {}
    for key, spec in raw_params.items():
        if key not in SEARCHABLE:
            why = (
                "data fields are fixed per search"
                if key in DATA_FIELDS
                else "unknown or not searchable"
            )
            raise InputError(
                f"{where}: params.{key}", f"{why}; expected one of {', '.join(SEARCHABLE)}"
            )
        if key in fixed:
            raise InputError(f"{where}: params.{key}", "is also fixed; keep it in one place")
        params[key] = _parse_param(key, spec, hints[key], fixed, where=f"{where}: params.{key}")

    start = []
    for i, point in enumerate(raw_start):
        for key, value in point.items():
            if key not in params:
                raise InputError(
                    f"{where}: start[{i}].{key}",
                    f"not a searched field; expected one of {', '.join(params)}",
                )
            if not params[key].contains(value):
                raise InputError(
                    f"{where}: start[{i}].{key}", f"{value!r} is outside {params[key].describe()}"
                )
        start.append(dict(point))
    return SearchSpace(
        name=name,
        description=str(description),
        fixed=dict(fixed),
        params=params,
        start=tuple(start),
        source=source,
    )


def _parse_param(key: str, spec: Any, hint: str, fixed: dict, *, where: str) -> Param:
    if isinstance(spec, list):
        if not spec:
            raise InputError(where, "expected at least one choice")
        if len(set(map(repr, spec))) != len(spec):
            raise InputError(where, f"choices must differ, got {spec}")
        for value in spec:
            _check_value(key, value, fixed, where=where)
        return Param(key, "categorical", choices=tuple(spec))
    if not isinstance(spec, dict):
        raise InputError(where, "expected {low: ..., high: ...} or a list of choices")
    _no_unknown(spec, RANGE_KEYS, where)
    if hint not in ("int", "float"):
        raise InputError(where, f"{key} is a {hint}; give a list of choices instead of a range")
    if "low" not in spec or "high" not in spec:
        raise InputError(where, "a range needs both low and high")
    low, high = spec["low"], spec["high"]
    log, step = spec.get("log", False), spec.get("step")
    for bound, value in (("low", low), ("high", high)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InputError(f"{where}.{bound}", f"expected a number, got {value!r}")
        if hint == "int" and not float(value).is_integer():
            raise InputError(f"{where}.{bound}", f"{key} is an integer, got {value!r}")
    if low > high:
        raise InputError(where, f"empty range: low {low} > high {high}")
    if not isinstance(log, bool):
        raise InputError(f"{where}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise InputError(f"{where}.low", f"a log range needs low > 0, got {low}")
    if step is not None:
        if log:
            raise InputError(f"{where}.step", "step and log cannot be combined")
        if (
            isinstance(step, bool)
            or not isinstance(step, (int, float))
            or not (math.isfinite(step) and step > 0)
        ):
            raise InputError(f"{where}.step", f"expected a number > 0, got {step!r}")
        if (
            hint == "int" and not float(step).is_integer()
        ):  # Optuna would truncate 0.5 to a step of 0
            raise InputError(f"{where}.step", f"{key} is an integer, got a step of {step!r}")
    if hint == "int":
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    for bound, value in (("low", low), ("high", high)):
        _check_value(key, value, fixed, where=f"{where}.{bound}")
    return Param(key, hint, low=low, high=high, log=log, step=step)


def _check_value(key: str, value: Any, fixed: dict, *, where: str) -> None:
    """A searched value is valid when a TrainConfig accepts it (n_neurons >= 1, a known model)."""
    try:
        TrainConfig.from_dict({**fixed, key: value})
    except InputError as err:
        raise InputError(where, err.expected) from None


def _check_fixed(fixed: dict, *, where: str) -> None:
    try:
        TrainConfig.from_dict(dict(fixed))
    except InputError as err:
        raise InputError(f"{where}: fixed.{err.field}", err.expected) from None


def _clip_start(point: dict, params: dict[str, Param]) -> dict:
    ne = params.get("n_epochs")
    if ne is None or "n_epochs" not in point or ne.contains(point["n_epochs"]):
        return point
    if ne.kind == "categorical":  # the largest choice within the cap
        return {**point, "n_epochs": max(ne.choices)}
    return {**point, "n_epochs": int(max(ne.low, min(point["n_epochs"], ne.high)))}


def _no_unknown(values: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in values:
        if key not in allowed:
            raise InputError(
                f"{where}: {key}", f"unknown key; expected one of {', '.join(allowed)}"
            )
