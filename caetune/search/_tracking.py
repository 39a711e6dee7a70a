"""Experiment tracking: ``--log tensorboard`` and ``--log mlflow``, by Ray Tune's own loggers.

Each one logs every trial's per-epoch results (``val_mse``, ``objective``,
the utilisation ``U`` and the ``layer3_``/``layer4_`` metrics) with the
trial's config (its params, ``n_epochs``, ``trial_id``):

* ``tensorboard``: Ray Tune's :class:`~ray.tune.logger.TBXLoggerCallback`.
  It writes event files into each trial's folder under the run,
  ``RUN/tune/<trial_id>-<ray id>/``, which Ray syncs to the run root with the
  trial's ``result.json`` (on ``s3://`` too), so ``tensorboard --logdir
  RUN/tune`` shows every trial, the hyperparameters under HPARAMS.
* ``mlflow``: Ray's :class:`~ray.air.integrations.mlflow.MLflowLoggerCallback`,
  one MLflow run per trial in an experiment named after the caetune run. By
  default the tracking store is ``sqlite:///RUN/logs/mlflow.db``;
  ``--mlflow-uri`` sends it elsewhere (a tracking server, another database).
  A run on ``s3://`` has no local folder for that file, so it needs
  ``--mlflow-uri``.

Tune's automatic loggers stay off (:func:`caetune.search._ray_setup.quiet_tune_environment`):
only the ones asked for are added. ``--log`` is a session's choice, not one
of the run's stored settings: a resumed run logs only when given it again
(an MLflow URI may hold a password, which caetune never stores).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from caetune._errors import InputError

LOGGERS = ("tensorboard", "mlflow")
MLFLOW_DB = ("logs", "mlflow.db")  # in the run folder
# The package each logger needs (the `tracking` extra installs both).
_MODULES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}


def check_log(log: Any, *, mlflow_uri: Any = None) -> tuple[str, ...]:
    """``log`` as a tuple of distinct logger names, in the order given.

    Raises:
        InputError: Not a sequence of names from :data:`LOGGERS`, or a
            ``mlflow_uri`` that is not a non-empty string or comes without ``mlflow``.
    """
    names = _logger_names(log)
    if mlflow_uri is not None:
        if not isinstance(mlflow_uri, str) or not mlflow_uri.strip():
            raise InputError("--mlflow-uri", f"expected a tracking URI, got {mlflow_uri!r}")
        if "mlflow" not in names:
            raise InputError("--mlflow-uri", "only with --log mlflow")
    return names


def _logger_names(log: Any) -> tuple[str, ...]:
    if log is None:
        return ()
    names = (log,) if isinstance(log, str) else log
    if not isinstance(names, Iterable) or not all(isinstance(n, str) for n in names):
        raise InputError("--log", f"expected names from {', '.join(LOGGERS)}, got {log!r}")
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise InputError("--log", f"expected one of {', '.join(LOGGERS)}, got {unknown[0]!r}")
    return tuple(dict.fromkeys(names))


def check_tracking(log: tuple[str, ...], *, files, mlflow_uri: str | None) -> str | None:
    """Checks, before anything is written, that the loggers asked for can run.

    Returns:
        The MLflow tracking URI (``None`` without ``mlflow``).

    Raises:
        InputError: A logger's package is missing, or ``mlflow`` on an
            ``s3://`` run without ``--mlflow-uri``.
    """
    import importlib.util

    for name in log:
        if importlib.util.find_spec(_MODULES[name]) is None:
            raise InputError(
                "--log",
                f"{name} needs the {_MODULES[name]} package: pip install 'caetune[tracking]'",
            )
    if "mlflow" not in log:
        return None
    if mlflow_uri:
        return mlflow_uri
    if files.storage.is_s3:
        raise InputError(
            "--mlflow-uri",
            "a run on s3:// keeps no local MLflow store: give a tracking URI "
            "(http://HOST:5000, sqlite:///PATH/mlflow.db ...)",
        )
    return "sqlite:///" + os.path.abspath(files.path(*MLFLOW_DB))


def tracking_callbacks(log: tuple[str, ...], *, files, name: str, mlflow_uri: str | None) -> list:
    """Ray Tune logger callbacks for ``log`` (see the module docstring), in that order.

    Args:
        log: Logger names, checked by :func:`check_log`.
        files: The run folder (:class:`~caetune.search._results.RunFiles`).
        name: The run's name: MLflow's experiment name.
        mlflow_uri: ``--mlflow-uri`` (default: the run's SQLite store).
    """
    mlflow_uri = check_tracking(log, files=files, mlflow_uri=mlflow_uri)
    callbacks: list = []
    for logger in log:
        if logger == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
        else:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            if mlflow_uri and mlflow_uri.startswith("sqlite:///"):
                os.makedirs(os.path.dirname(mlflow_uri[len("sqlite:///") :]), exist_ok=True)
            callbacks.append(
                MLflowLoggerCallback(
                    tracking_uri=mlflow_uri,
                    experiment_name=name,
                    tags={"caetune.run": files.url},
                    save_artifact=False,
                )
            )
    return callbacks
