"""A search's ``experiment.yaml``: read strictly when a run is resumed, written at each session.

It holds what a resumed run must keep (the settings that define the search,
the space) and what describes the run (the objective, the data, the study,
ASHA's settings); ``--resume`` and the same command run again read it back.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from caetune._errors import InputError
from caetune._runs import EXPERIMENT_FILE
from caetune.search._asha import AshaSettings
from caetune.search._defaults import DEFAULTS
from caetune.search._objective import Objective
from caetune.search._settings import display_url, stored_form
from caetune.search._space import SearchSpace


def stored_experiment(files) -> dict | None:
    """The run's ``experiment.yaml``; ``None`` for a new run.

    Args:
        files: The run folder (:class:`~caetune.search._results.RunFiles`).

    Raises:
        InputError: The file is there but is not one caetune wrote.
    """
    if not files.exists(EXPERIMENT_FILE):
        return None
    try:
        stored = yaml.safe_load(files.read_bytes(EXPERIMENT_FILE))
    except yaml.YAMLError:
        stored = None
    if not isinstance(stored, dict) or "settings" not in stored or "space" not in stored:
        raise InputError(
            "--name",
            f"{files.url} holds a {EXPERIMENT_FILE} caetune cannot read; choose another --name",
        )
    return stored


def write_experiment(
    files,
    *,
    name: str,
    values: dict[str, Any],
    space: SearchSpace,
    objective: Objective,
    asha: AshaSettings,
    study_url: str,
    data,
    stored: dict | None,
) -> None:
    """Writes the run's ``experiment.yaml`` (a resumed run keeps its creation time).

    Args:
        files: The run folder.
        name: The run's name.
        values: Every setting, resolved (:func:`~caetune.search._settings.resolve_settings`).
        space: The resolved space.
        objective: The search's objective.
        asha: ASHA's settings.
        study_url: The study's URL; written without its password.
        data: The loaded dataset (its name and sizes are recorded).
        stored: The file as read at the start of this session, if any.
    """
    from caetune import __version__

    doc = {
        "name": name,
        "created": (stored or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "caetune": __version__,
        # Never the study URL's password: it would sit in every copy of the run folder.
        "settings": {k: stored_form(k, values[k]) for k in DEFAULTS},
        "objective": objective.to_dict(),
        "space_name": space.name,
        "space": space.to_dict(),
        "dataset": {
            "name": data.name,
            "train": len(data.train),
            "val": len(data.val),
            "channels": data.channels,
            "image_size": list(data.image_size),
        },
        "study": {"storage": display_url(study_url), "name": name},
        "asha": asha.to_dict(metric=objective.scheduler_metric),
    }
    files.write_text(EXPERIMENT_FILE, yaml.safe_dump(doc, sort_keys=False))
