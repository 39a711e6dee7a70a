"""The defaults of ``caetune search``, in a module light enough for ``--help``.

The main job (``caetune search`` with no flags) uses them, and must finish
within 15 minutes on a 2-core CPU machine, seed confirmation included: hence
``max_epochs``, ``num_samples``, ``confirm_seeds`` and ``top_k`` here.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from caetune.search._objective import DEFAULT_WEIGHT


def preset_names() -> list[str]:
    """The presets shipped with caetune (``--space NAME``): ``caetune/search/presets/*.yaml``."""
    folder = resources.files("caetune.search") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


DEFAULT_SPACE = "paper-mnist"
DEFAULT_RUN_ROOT = "runs"  # the folder (or s3:// prefix) runs live in

# What each setting is on a new run (a resumed run keeps its own).
DEFAULTS: dict[str, Any] = {
    "space": DEFAULT_SPACE,
    "dataset": None,
    "subset": None,
    "max_epochs": 6,
    "objective": "combined",
    "utilisation_weight": DEFAULT_WEIGHT,
    "seed": 0,
    "start_point": True,
    "grace_period": 1,
    "reduction_factor": 3.0,
    "util_images": 256,
    "study_storage": None,
    "num_samples": 12,
    "max_concurrent": None,
    "cpus_per_trial": 1.0,
    "gpus_per_trial": 0.0,
    "max_failures": 2,
    "confirm_seeds": 2,
    "top_k": 3,
}
# Settings that define what is searched: a resumed run must keep them.
DEFINITION = (
    "space",
    "dataset",
    "subset",
    "max_epochs",
    "objective",
    "utilisation_weight",
    "seed",
    "start_point",
    "grace_period",
    "reduction_factor",
    "util_images",
    "study_storage",
)
