"""The Ray Tune trainable: one trial trains one CAE, reporting and checkpointing every epoch.

The dataset reaches the trainable through :func:`ray.tune.with_parameters`,
which puts it in Ray's object store once; :func:`data_payload` makes it a dict
of NumPy arrays so every trial on a node maps the same memory (zero-copy)
instead of unpickling its own copy. Actors are reused between trials
(``reuse_actors``), so torch is imported once per worker, not per trial.

Every epoch the trainable computes the utilisation metrics on validation
images, reports ``epoch``, ``val_mse``, ``objective``, ``utilisation`` and the
``layer3_*``/``layer4_*`` metrics, and a checkpoint holding the full
:class:`~caetune.models.Trainer` state (``model.pt``) and ``metrics.json``.
A trial resumes from ``ray.tune.get_checkpoint()`` (Ray restarted it, e.g.
after a node was lost) or from ``config["resume_from"]`` (an earlier session
of the search was interrupted); a new trial may start from another trial's
saved model, ``config["warm_start"]`` (:mod:`caetune.search._warm`).

A trial that raises (NaN loss, a config the images cannot take, out of
memory ...) does not raise to Ray: it reports a last result with ``failed``
set to the reason and returns, so the search records it as failed at once and
goes on. Ray's own retries (``FailureConfig``) are thus kept for what they are
for: a worker or node that died under the trial.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

CHECKPOINT_MODEL = "model.pt"
CHECKPOINT_METRICS = "metrics.json"


def data_payload(data) -> dict[str, Any]:
    """An :class:`~caetune.models.ImageData` as plain NumPy arrays for the object store."""
    payload = {"name": data.name, "train": data.train.numpy(), "val": data.val.numpy()}  # uint8 [N, C, H, W]
    return payload


def image_data(payload: dict[str, Any]):
    """The :class:`~caetune.models.ImageData` of a payload, sharing its (read-only) memory."""
    import torch

    from caetune.models import ImageData

    with warnings.catch_warnings():
        # The arrays are read-only views of the object store; the Trainer copies them
        # into float tensors at once, so nothing ever writes through these tensors.
        warnings.simplefilter("ignore", UserWarning)
        train = torch.from_numpy(payload["train"])  # uint8 [N, C, H, W]
        val = torch.from_numpy(payload["val"])  # uint8 [M, C, H, W]
    return ImageData(name=payload["name"], train=train, val=val)


def train_trial(config: dict[str, Any], *, data: dict[str, Any]) -> None:
    """Trains one trial's CAE for its own ``n_epochs`` (Ne), reporting every epoch.

    Args:
        config: ``trial_id``, ``train`` (a TrainConfig dict), ``objective``
            (``kind``, ``weight``), ``threads``, ``util_images``,
            ``resume_from`` (its own checkpoint of an earlier session, or
            ``None``) and ``warm_start`` (``None``, or the ``trial_id``,
            ``epochs`` and ``checkpoint`` of the trial it continues).
        data: The shared dataset, from :func:`data_payload`.
    """
    import torch
    from ray import tune

    from caetune.models import TrainConfig, Trainer
    from caetune.search._objective import Objective

    torch.set_num_threads(int(config["threads"]))
    objective = Objective(**config["objective"])
    train_config = TrainConfig.from_dict(dict(config["train"]))
    state = {"epoch": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    start = (time.perf_counter(), time.process_time())
    warm = config.get("warm_start") or {}
    inherited = int(warm["epochs"]) if warm.get("checkpoint") is not None else 0  # epochs it did not train
    try:
        trainer = Trainer(train_config, image_data(data))
        own = tune.get_checkpoint() or config.get("resume_from")
        if own is not None:
            before = _load_checkpoint(trainer, own)
            state.update(seconds=before["seconds"], cpu_seconds=before.get("cpu_seconds", 0.0))
        elif warm.get("checkpoint") is not None:
            _load_checkpoint(trainer, warm["checkpoint"])  # another trial's model; the clocks stay this trial's own
        state["epoch"] = trainer.epoch
        if trainer.epoch >= train_config.n_epochs:
            # Resumed from its final checkpoint (the driver stopped before recording it): report
            # it again, without training, with the clocks it had, so its record comes out the same.
            # (Or a warm start from a trial that ran exactly this Ne: nothing to train either.)
            resumed = own is not None
            clocks = (lambda: {k: state[k] for k in ("seconds", "cpu_seconds")}) if resumed else (lambda: _clocks(state, start))
            _report_epoch(trainer, objective, config, clocks=clocks, inherited=inherited)
        while trainer.epoch < train_config.n_epochs:
            trainer.run_epoch()
            state["epoch"] = trainer.epoch
            _report_epoch(trainer, objective, config, clocks=lambda: _clocks(state, start), inherited=inherited)
    except Exception as err:  # noqa: BLE001 -- any error of the trial is its result
        # No metric in it: ASHA skips a result without one, and the recorder reads `failed`.
        epochs = {"epoch": state["epoch"], "epochs_trained": max(0, state["epoch"] - inherited)}
        tune.report({**epochs, "failed": failure_reason(err), **_clocks(state, start)})


def epoch_metrics(trainer, objective, *, util_images: int) -> dict[str, Any]:
    """The metrics of a trainer's model now: last epoch's MSEs, U and the layer metrics, objective."""
    from caetune.analysis import model_utilisation

    last = trainer.history[-1]
    util = model_utilisation(trainer.model, trainer.x_val, n_images=util_images)
    return {
        "epoch": trainer.epoch,
        "n_epochs": trainer.config.n_epochs,
        "train_mse": last.train_mse,
        "val_mse": last.val_mse,
        "best_val_mse": min(m.val_mse for m in trainer.history),
        "objective": objective.evaluate(last.val_mse, util),
        **util,
    }


def _load_checkpoint(trainer, checkpoint) -> dict[str, Any]:
    """Loads a checkpoint (a trial's own, or a finished trial's folder) into ``trainer``; its metrics.json."""
    try:
        with checkpoint.as_directory() as folder:
            trainer.load_checkpoint(Path(folder) / CHECKPOINT_MODEL)
            return json.loads((Path(folder) / CHECKPOINT_METRICS).read_text())
    except Exception as err:  # noqa: BLE001 -- a damaged checkpoint fails this trial, not the search
        raise RuntimeError(f"cannot resume from checkpoint {checkpoint.path}: {failure_reason(err)}") from err


def _report_epoch(
    trainer, objective, config: dict, *, clocks: Callable[[], dict[str, float]], inherited: int = 0
) -> None:
    from ray import tune

    result = epoch_metrics(trainer, objective, util_images=int(config["util_images"]))
    result["epochs_trained"] = trainer.epoch - inherited  # by this trial; a warm start inherited the rest
    result.update(clocks())  # after U: the epoch's seconds include it
    metrics = {**result, "history": [m.to_dict() for m in trainer.history]}
    with tempfile.TemporaryDirectory(prefix="caetune-ckpt-") as folder:
        trainer.save_checkpoint(Path(folder) / CHECKPOINT_MODEL)
        (Path(folder) / CHECKPOINT_METRICS).write_text(json.dumps(metrics), encoding="utf-8")
        # Ray copies the folder into the run's storage before report returns.
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def _clocks(state: dict, start: tuple[float, float]) -> dict[str, float]:
    """The trial's wall-clock and CPU seconds so far, earlier sessions included.

    CPU seconds are the worker process's (training, evaluation, checkpoints): on a
    busy shared machine they say what the trial would take alone.
    """
    return {
        "seconds": state["seconds"] + time.perf_counter() - start[0],
        "cpu_seconds": state["cpu_seconds"] + time.process_time() - start[1],
    }


def failure_reason(err: BaseException) -> str:
    """One line: the exception and where in caetune it happened."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "caetune" in f.filename]
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}{where}"
