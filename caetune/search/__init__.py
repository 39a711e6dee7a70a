"""The search service: Ray Tune runs the trials, Optuna proposes them, ASHA stops weak ones.

Imports :mod:`caetune.models` and :mod:`caetune.analysis`; nothing imports it.
Importing this package is cheap: its names load on first use (PEP 562), so
``caetune search --help`` imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib

# public name -> the private module that defines it
_EXPORTS = {
    "DEFAULTS": "caetune.search._defaults",
    "ExportResult": "caetune._export",
    "export_run": "caetune._export",
    "load_exported": "caetune._export",
    "verify_export": "caetune._export",
    "OBJECTIVES": "caetune.search._objective",
    "Objective": "caetune.search._objective",
    "SearchOutcome": "caetune.search._run",
    "SearchSettings": "caetune.search._settings",
    "run_search": "caetune.search._run",
    "Param": "caetune.search._space",
    "SearchSpace": "caetune.search._space",
    "load_space": "caetune.search._space",
    "preset_names": "caetune.search._space",
    "space_from_dict": "caetune.search._space",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'caetune.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
