"""The Ray Tune trainable: one trial trains one CAE, reporting and checkpointing every epoch.

The dataset reaches the trainable through :func:`ray.tune.with_parameters`,
which puts it in Ray's object store once; :func:`data_payload` makes it a dict
of NumPy arrays so every trial on a node maps the same memory (zero-copy)
instead of unpickling its own copy. The search's
:class:`~caetune.search._searcher.TrialFactory` comes the same way: the trial
config holds only the trial's own params, and the factory makes them a
TrainConfig. Actors are reused between trials
(``reuse_actors``), so torch is imported once per worker, not per trial.

Every epoch the trainable computes the utilisation metrics on validation
images and writes a checkpoint holding the full
:class:`~caetune.models.Trainer` state (``model.pt``) and ``metrics.json``
(every metric, the ``layer3_*``/``layer4_*`` ones included); to Tune it
reports only :data:`REPORTED` (Tune keeps statistics of every reported metric
of every trial on the driver for the whole search), or all of them for the
trackers of ``--log`` (:mod:`caetune.search._tracking`).
A trial resumes from ``ray.tune.get_checkpoint()`` (Ray restarted it, e.g.
after a node was lost) or from ``config["resume_from"]`` (an earlier session
of the search was interrupted); a new trial may start from another trial's
saved model, ``config["warm_start"]`` (:mod:`caetune.search._warm`). A
checkpoint that does not read back (cut short, corrupted) is passed over for
the older one Ray kept beside it, else the trial starts again from epoch 0
(or from its warm start); either way the trial's ``recovery`` says which
checkpoint was damaged, why, and what was done. A trial whose final
checkpoint the recorder found damaged runs again the same way, from that
checkpoint (:mod:`caetune.search._recorder`).

A trial that raises (NaN loss, a config the images cannot take, out of
memory ...) does not raise to Ray: it reports a last result with ``failed``
set to the reason and returns, so the search records it as failed at once and
goes on. Ray's own retries (``FailureConfig``) are thus kept for what they are
for: a worker or node that died under the trial.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caetune.search._attrs import RECOVERY

CHECKPOINT_MODEL = "model.pt"
CHECKPOINT_METRICS = "metrics.json"
CHECKPOINT_DIR = re.compile(r"checkpoint_\d+")  # Ray's name for a trial's checkpoint folders
# What each epoch reports to Tune: what ASHA (epoch, objective or val_mse) and the recorder read
# from a result; the recorder takes the rest from the checkpoint's metrics.json. (A failure reports
# the epoch, the reason and the clocks, which no checkpoint may hold yet.)
REPORTED = ("epoch", "val_mse", "objective")
FAILED_RESULT = "failed"  # the result key of a failed trial's reason, in place of the metrics
MODEL_BYTES = "model_bytes"  # the size of the checkpoint's model.pt as written


def data_payload(data) -> dict[str, Any]:
    """An :class:`~caetune.models.ImageData` as plain NumPy arrays for the object store."""
    payload = {
        "name": data.name,
        "train": data.train.numpy(),
        "val": data.val.numpy(),
    }  # the images as uint8 [N, C, H, W]
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


def train_trial(config: dict[str, Any], *, data: dict[str, Any], factory) -> None:
    """Trains one trial's CAE for its own ``n_epochs`` (Ne), reporting every epoch.

    Args:
        config: The trial's config (:meth:`TrialFactory.config`): ``trial_id``,
            ``params``, ``resume_from`` (its own checkpoint of an earlier
            session, or ``None``), ``warm_start`` (``None``, or the
            ``trial_id``, ``epochs`` and ``checkpoint`` of the trial it continues)
            and ``recovery`` (``None``, or, for a trial run again because its
            final checkpoint was found damaged, what it got past so far).
        data: The shared dataset, from :func:`data_payload`.
        factory: The search's :class:`~caetune.search._searcher.TrialFactory`
            (the space, the seed, the objective, threads and util_images).
    """
    import torch
    from ray import tune

    from caetune.models import Trainer
    from caetune.models._precision import SCREENING

    torch.set_num_threads(int(factory.threads))
    objective = factory.objective
    train_config = factory.train(config["params"])
    state = {"epoch": 0, "seconds": 0.0, "cpu_seconds": 0.0}
    start = (time.perf_counter(), time.process_time())
    warm = config.get("warm_start") or {}
    # The epochs it did not train (a warm start's).
    inherited = int(warm["epochs"]) if warm.get("checkpoint") is not None else 0
    recovery = None  # every damaged checkpoint this trial got past, and what it did instead

    def fresh():
        return Trainer(train_config, image_data(data), use=SCREENING)

    try:
        trainer, before, note = _restore(fresh, [tune.get_checkpoint(), config.get("resume_from")])
        if before is not None:
            state.update(seconds=before["seconds"], cpu_seconds=before.get("cpu_seconds", 0.0))
        elif warm.get("checkpoint") is not None:
            # Another trial's model; the clocks stay this trial's own.
            trainer, inherited_from, warm_note = _restore(fresh, [warm["checkpoint"]])
            inherited = inherited if inherited_from is not None else 0
            note = "; ".join(n for n in (note, warm_note) if n) or None
        # What the trial got past before: the note of the checkpoint it resumed from or, in a re-run
        # after its final checkpoint was found damaged, the recorder's (which starts with all that
        # run reported). One extends the other, so the longer says it all.
        earlier = max((config.get(RECOVERY) or "", (before or {}).get(RECOVERY) or ""), key=len)
        recovery = "; ".join(n for n in (earlier, note) if n) or None
        state["epoch"] = trainer.epoch
        if trainer.epoch >= train_config.n_epochs:
            # Resumed from its final checkpoint (the driver stopped before recording it): report
            # it again, without training, with the clocks it had, so its record comes out the same.
            # (Or a warm start from a trial that ran exactly this Ne: nothing to train either.)
            frozen = {k: state[k] for k in ("seconds", "cpu_seconds")}
            clocks = (lambda: frozen) if before is not None else (lambda: _clocks(state, start))
            _report_epoch(
                trainer, objective, factory, clocks=clocks, recovery=recovery, inherited=inherited
            )
        while trainer.epoch < train_config.n_epochs:
            trainer.run_epoch()
            state["epoch"] = trainer.epoch
            _report_epoch(
                trainer,
                objective,
                factory,
                clocks=lambda: _clocks(state, start),
                recovery=recovery,
                inherited=inherited,
            )
    except Exception as err:  # noqa: BLE001 -- any error of the trial is its result
        # No metric in it: ASHA skips a result without one, and the recorder reads `failed`.
        extra = {RECOVERY: recovery} if recovery else {}
        epochs = {"epoch": state["epoch"], "epochs_trained": max(0, state["epoch"] - inherited)}
        tune.report(
            {**epochs, FAILED_RESULT: failure_reason(err), **_clocks(state, start), **extra}
        )


def epoch_metrics(trainer, objective, *, util_images: int) -> dict[str, Any]:
    """The metrics of a trainer's model now: last epoch's MSEs, U, the layer metrics, objective."""
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
        "precision": trainer.precision,  # resolved: what an export or a retraining must use
        **util,
    }


def _report_epoch(
    trainer,
    objective,
    factory,
    *,
    clocks: Callable[[], dict[str, float]],
    recovery: str | None,
    inherited: int = 0,
) -> None:
    """Checkpoints the epoch with all its metrics; reports to Tune only :data:`REPORTED`.

    (And ``recovery``, when there is one.)

    Tune keeps statistics of every reported metric of every trial on the
    driver for the whole search, so the ~30 layer metrics go only into the
    checkpoint's metrics.json, where the recorder reads them.
    """
    from ray import tune

    result = epoch_metrics(trainer, objective, util_images=int(factory.util_images))
    result["epochs_trained"] = trainer.epoch - inherited  # a warm start inherited the rest
    result.update(clocks())  # after U: the epoch's seconds include it
    # With --log the trackers log what Tune is told; the recorder drops a trial's statistics once
    # it ends, so only the running trials' grow with the extra metrics.
    reported = dict(result) if factory.report_all else {k: result[k] for k in REPORTED}
    if recovery:
        result[RECOVERY] = reported[RECOVERY] = recovery
    metrics = {**result, "history": [m.to_dict() for m in trainer.history]}
    with tempfile.TemporaryDirectory(prefix="caetune-ckpt-") as folder:
        model = trainer.save_checkpoint(Path(folder) / CHECKPOINT_MODEL)
        # The recorder never takes a cut-short copy for the model.
        metrics[MODEL_BYTES] = model.stat().st_size
        (Path(folder) / CHECKPOINT_METRICS).write_text(json.dumps(metrics), encoding="utf-8")
        # Ray copies the folder into the run's storage before report returns.
        tune.report(reported, checkpoint=tune.Checkpoint.from_directory(folder))


def _restore(fresh: Callable[[], Any], checkpoints: list) -> tuple[Any, dict | None, str | None]:
    """A trainer at the newest readable checkpoint: (trainer, its metrics.json, what happened).

    Tries ``checkpoints`` (Ray's restore point, an earlier session's), each
    followed by the older checkpoints Ray kept beside it (``num_to_keep``), and
    reads each with the safe reader (no code runs). A damaged one is passed
    over; when none reads, the trial starts again from epoch 0. The note names
    every damaged checkpoint, why, and what was done; ``None`` when nothing
    was damaged.
    """
    trainer, damaged = fresh(), []
    for checkpoint in _with_older(c for c in checkpoints if c is not None):
        try:
            with checkpoint.as_directory() as folder:
                before = json.loads((Path(folder) / CHECKPOINT_METRICS).read_text(encoding="utf-8"))
                trainer.load_checkpoint(Path(folder) / CHECKPOINT_MODEL)
        except Exception as err:  # noqa: BLE001 -- any damage: try the next one
            why = _first_sentence(failure_reason(err))
            damaged.append(f"{_checkpoint_name(checkpoint)} unreadable ({why})")
            trainer = fresh()  # a load that failed half-way must not leave part of its state behind
            continue
        done = f"resumed from {_checkpoint_name(checkpoint)} (epoch {trainer.epoch})"
        return trainer, before, "; ".join([*damaged, done]) if damaged else None
    return trainer, None, "; ".join([*damaged, "restarted from epoch 0"]) if damaged else None


def _with_older(checkpoints):
    """Each checkpoint, then its trial's older ``checkpoint_NNNNNN`` folders, newest first.

    Each is yielded once, though several of ``checkpoints`` may share a trial folder.
    """
    from ray import tune

    seen = set()
    for checkpoint in checkpoints:
        found = [checkpoint]
        parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
        if CHECKPOINT_DIR.fullmatch(name):
            try:
                infos = checkpoint.filesystem.get_file_info(_selector(parent))
            except OSError:
                infos = []  # the trial folder cannot be listed: only the checkpoint itself
            # Same-width numbers (checkpoint_000007): the names sort as the epochs do.
            older = sorted(
                (i.base_name for i in infos if CHECKPOINT_DIR.fullmatch(i.base_name)), reverse=True
            )
            found += [
                tune.Checkpoint(f"{parent}/{n}", filesystem=checkpoint.filesystem)
                for n in older
                if n < name
            ]
        for item in found:
            if item.path not in seen:
                seen.add(item.path)
                yield item


def _selector(folder: str):
    import pyarrow.fs

    return pyarrow.fs.FileSelector(folder, allow_not_found=True)


def _checkpoint_name(checkpoint) -> str:
    """``<trial folder>/checkpoint_NNNNNN``: enough to find it in the run folder."""
    return "/".join(checkpoint.path.rstrip("/").split("/")[-2:])


def _first_sentence(reason: str) -> str:
    """A :func:`failure_reason` without the advice torch appends.

    For instance ``RuntimeError: ... archive (at _train.py:405)``.
    """
    head, dot, rest = reason.partition(". ")
    where = rest[rest.rfind(" (at ") :] if dot and " (at " in rest else ""
    return head + where


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
