"""The search service: Ray Tune runs the trials, Optuna proposes them, ASHA stops weak ones.

Imports :mod:`caetune.models` and :mod:`caetune.analysis`; nothing imports it.
Importing this package is cheap: Ray, Optuna and torch load when a search runs.
"""

from caetune.search._export import ExportResult, export_run, load_exported, verify_export
from caetune.search._objective import OBJECTIVES, Objective
from caetune.search._run import DEFAULTS, SearchOutcome, SearchSettings, run_search
from caetune.search._space import Param, SearchSpace, load_space, preset_names, space_from_dict

__all__ = [
    "DEFAULTS",
    "ExportResult",
    "OBJECTIVES",
    "Objective",
    "Param",
    "SearchOutcome",
    "SearchSettings",
    "SearchSpace",
    "export_run",
    "load_exported",
    "load_space",
    "preset_names",
    "run_search",
    "space_from_dict",
    "verify_export",
]
