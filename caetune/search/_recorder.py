"""The driver-side record of a search: study, results table, trial folders, progress lines.

A :class:`ray.tune.Callback` sees every trial start, result, checkpoint and
end on the driver. When a trial ends, the recorder, in this order,

1. copies its last checkpoint's ``model.pt`` into ``trials/<id>/`` (only
   when it reads back as the trial wrote it: see below) and writes
   ``config.yaml`` and ``metrics.json`` beside it,
2. rewrites ``results.csv``/``results.parquet``,
3. tells the Optuna study how the trial ended (and uploads the study when
   the run lives on S3),
4. deletes the trial's Ray checkpoints: only unfinished trials need them,
5. once Tune is done with the trial, drops Tune's own copy of its results
   (see :func:`_forget_results`): the driver would otherwise grow with
   every trial of the search.

The study is what a resumed search trusts, so it hears after the files are
written: a driver killed half-way leaves the trial ``RUNNING`` there, and it
is run again from its last checkpoint (all epochs done: it only re-reports).

How a trial ended: ``failed`` when it reported a ``failed`` reason (or Ray
gave up on it), ``complete`` when it ran its own ``n_epochs``, ``pruned``
when ASHA stopped it before that. A trial that stopped for none of these
reasons (the search was interrupted) stays ``running``, to be resumed.
A trial that got past a damaged checkpoint (see :mod:`caetune.search._trainable`)
carries the note in ``recovery``: its row, metrics.json, the study's user
attribute of that name, and a ``recovered`` progress line when it happens.

A trial whose final checkpoint was damaged after it wrote it (its
``metrics.json`` unreadable, or its ``model.pt`` not of the size written)
has no model to keep, so it is not recorded: it stays ``RUNNING`` in the
study, its checkpoints stay, and it runs again in the same session (the
searcher's :meth:`~caetune.search._searcher.StudySearcher.run_again`) from
that checkpoint, which its restore passes over for the older one Ray kept
(else it starts over). Training is deterministic, so it ends with the model it
would have had. The note (which checkpoint, why) goes into its ``recovery``
at once (study attribute, results row, a ``rerun`` progress line), so a
search interrupted before the re-run resumes it with the note; after
:data:`MAX_RERUNS` re-runs a trial is recorded failed with the reason.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from typing import Any, TextIO

import yaml
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from caetune._runs import COMPLETE, FAILED, PRUNED, RUNNING, TRIAL_METRICS, TRIAL_MODEL
from caetune.search._attrs import (
    CHECKPOINT_ATTR,
    EPOCHS_RUN_ATTR,
    EPOCHS_TRAINED_ATTR,
    FAILED_ATTR,
    RECOVERY,
    RERUNS_ATTR,
    SECONDS_ATTR,
    STATUS_ATTR,
    UTILISATION_ATTR,
    VAL_MSE_ATTR,
)
from caetune.search._compat import forget_trial_results, trial_folder, trial_handle
from caetune.search._objective import Objective
from caetune.search._results import ResultsTable, RunFiles, model_path, write_trial_files
from caetune.search._searcher import Resumable, StudySearcher
from caetune.search._trainable import FAILED_RESULT, MODEL_BYTES
from caetune.search._warm import WarmStart

STATUS_EVERY_S = 30.0
# Re-runs of one trial whose final checkpoint was damaged each time, before it is recorded failed:
# storage that damages every file it stores would otherwise keep the search going for ever.
MAX_RERUNS = 2


class RecordingASHA(AsyncHyperBandScheduler):
    """ASHA that remembers which trials it stopped, to tell them apart from interrupted ones."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_tune_ids: set[str] = set()  # Ray's ids of the trials it stopped

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.stopped_tune_ids.add(trial.trial_id)  # Ray's Trial.trial_id: a tune_id
        return action


class Recorder(Callback):
    """Writes everything a search produces as its trials run.

    Args:
        study: The open Optuna study.
        objective: The search's objective.
        files: The run folder.
        table: The results table (rows of earlier sessions loaded).
        scheduler: The ASHA scheduler (to know which trials it stopped).
        searcher: The searcher: its factory gives a trial's TrainConfig (for its
            config.yaml), and it runs a trial again when its final checkpoint is damaged.
        total: Trials the study will hold at the end (for progress lines).
        on_study_change: Called after each tell (uploads the study on S3).
        stream: Where progress lines go.
    """

    def __init__(
        self,
        *,
        study,
        objective: Objective,
        files: RunFiles,
        table: ResultsTable,
        scheduler: RecordingASHA,
        searcher: StudySearcher,
        total: int,
        on_study_change=None,
        stream: TextIO | None = None,
    ) -> None:
        self.study = study
        self.objective = objective
        self.files = files
        self.table = table
        self.scheduler = scheduler
        self.searcher = searcher
        self.total = total
        self.on_study_change = on_study_change or (lambda: None)
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last_status = time.monotonic()
        self.epochs: dict[str, str] = {}  # running trial id -> "epoch/Ne", for the status line
        self._handles: dict[int, Any] = {}  # trial number -> optuna.Trial
        self._recoveries: dict[str, str] = {}  # running trial id -> its recovery note, once printed
        # Tune trials that ended, their results not yet dropped (see on_step_end).
        self._ended: list = []

    def __getstate__(self) -> dict:
        # Tuner pickles its RunConfig for Tuner.restore, which caetune does not use.
        return {"total": self.total}

    # -- Ray Tune hooks ----------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        config = trial.config
        row = _row_params(config, seed=self.searcher.factory.seed)
        self.table.update(config["trial_id"], status=RUNNING, error=None, **row)
        self.epochs[config["trial_id"]] = f"0/{config['n_epochs']}"
        self.table.write()
        warm = _warm_start(config)
        since = f"  (continues {warm['trial_id']} after epoch {warm['epochs']})" if warm else ""
        self._say(f"{config['trial_id']} start     {_describe(config['params'])}{since}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        trial_id = trial.config["trial_id"]
        if result.get(RECOVERY) and result[RECOVERY] != self._recoveries.get(trial_id):
            self._recoveries[trial_id] = result[RECOVERY]
            self._say(f"{trial_id} recovered {result[RECOVERY]}")
        if FAILED_RESULT in result:
            return
        self.epochs[trial.config["trial_id"]] = f"{result['epoch']}/{trial.config['n_epochs']}"
        value = float(result["objective"])
        # Optuna takes no intermediate values for several objectives.
        if len(self.study.directions) == 1 and math.isfinite(value):
            with warnings.catch_warnings():
                # A trial resumed from its final checkpoint reports that epoch again; Optuna keeps
                # the first.
                warnings.simplefilter("ignore")
                self._handle(trial.config["trial_number"]).report(value, int(result["epoch"]))

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        self._handle(trial.config["trial_number"]).set_user_attr(
            CHECKPOINT_ATTR, self._relative(checkpoint.path)
        )

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get(FAILED_RESULT):
            self._finish(trial, FAILED, reason=str(result[FAILED_RESULT]))
        elif diverged := _non_finite(result):
            # Training only checks its own loss: a NaN validation MSE would pass for pruned.
            self._finish(
                trial, FAILED, reason=f"TrainingDiverged: {diverged} at epoch {result.get('epoch')}"
            )
        elif "epoch" in result and int(result["epoch"]) >= int(trial.config["n_epochs"]):
            self._finish(trial, COMPLETE)
        elif trial.trial_id in self.scheduler.stopped_tune_ids:
            self._finish(trial, PRUNED)
        # else: stopped by an interruption; it stays RUNNING in the study and resumes later.
        self._ended.append(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        # Ray lost the trial's worker (or node) and restarts it from its last checkpoint.
        self._say(
            f"{trial.config['trial_id']} restart   from its last checkpoint ({_ray_error(trial)})"
        )

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, FAILED, reason=_ray_error(trial))
        self._ended.append(trial)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        # A step later, not in on_trial_complete: Tune still stops the trial after its callbacks.
        still_stopping = []
        for trial in self._ended:
            if trial.is_finished():
                _forget_results(trial)
            else:
                still_stopping.append(trial)
        self._ended = still_stopping
        if time.monotonic() - self._last_status >= STATUS_EVERY_S:
            self._last_status = time.monotonic()
            self._say(self.status_line())

    # -- the record ----------------------------------------------------------

    def _finish(self, trial, status: str, *, reason: str | None = None) -> None:
        config = trial.config
        trial_id, number = config["trial_id"], config["trial_number"]
        result = dict(trial.last_result or {})
        metrics, damage = self._collect_metrics(trial)
        if damage and status != FAILED and self._run_again(trial, damage):
            return
        if metrics:
            result.update({k: v for k, v in metrics.items() if k != "history"})
        if damage:  # its last checkpoint was damaged after the trial wrote it: no model to keep
            given_up = f"gave up after {MAX_RERUNS} re-runs" if status != FAILED else None
            status = FAILED
            reason = "; ".join(n for n in (reason, damage, given_up, "no model kept") if n)
        epochs_run = int(result.get("epoch", 0) or 0)

        row = {
            "status": status,
            "error": reason,
            # The trial's last word on it is the newest (a failure after a fallback reports it,
            # no checkpoint does).
            RECOVERY: (trial.last_result or {}).get(RECOVERY) or result.get(RECOVERY),
            **_row_params(config, seed=self.searcher.factory.seed),
            "val_mse": result.get("val_mse"),
            "best_val_mse": result.get("best_val_mse"),
            "objective": None if status == FAILED else result.get("objective"),
            "utilisation": result.get("utilisation"),
            "epochs_run": epochs_run,
            "epochs_trained": int(result.get("epochs_trained", epochs_run) or 0),
            "seconds": result.get("seconds"),
            "cpu_seconds": result.get("cpu_seconds"),
            **{k: v for k, v in result.items() if k.startswith(("layer3_", "layer4_"))},
        }
        write_trial_files(
            self.files,
            trial_id,
            config_yaml=yaml.safe_dump(
                self.searcher.factory.train(config["params"]).to_dict(), sort_keys=False
            ),
            metrics={
                **(metrics or {}),
                **row,
                "trial_id": trial_id,
                "history": (metrics or {}).get("history", []),
            },
        )
        self.table.update(trial_id, **row)
        self.table.write()
        self._tell(number, status, row, reason)
        self._delete_checkpoints(trial)
        self.epochs.pop(trial_id, None)
        self._recoveries.pop(trial_id, None)

        if status == FAILED:
            detail = reason
        else:
            detail = (
                f"epochs {epochs_run}/{config['n_epochs']}  val_mse {_num(row['val_mse'])}  "
                f"U {_num(row['utilisation'], 3)}  objective {_num(row['objective'])}"
            )
        self._say(f"{trial_id} {status:<9} {detail}  ({_num(row['seconds'], 0)} s)")

    def _run_again(self, trial, damage: str) -> bool:
        """Queues the trial to run again from its damaged final checkpoint.

        False, and nothing queued, after :data:`MAX_RERUNS` re-runs.

        The study keeps it ``RUNNING`` with that checkpoint, and its
        checkpoints stay, so an interrupted search resumes it the same way.
        """
        config = trial.config
        trial_id, number = config["trial_id"], config["trial_number"]
        handle = self._handle(number)
        reruns = int(handle.user_attrs.get(RERUNS_ATTR) or 0) + 1
        if reruns > MAX_RERUNS:
            return False
        note = f"{damage}: run again ({reruns} of at most {MAX_RERUNS})"
        # What it reported it had got past already comes first: the re-run's recovery continues it.
        recovery = "; ".join(n for n in ((trial.last_result or {}).get(RECOVERY), note) if n)
        handle.set_user_attr(RERUNS_ATTR, reruns)
        handle.set_user_attr(RECOVERY, recovery)
        self.on_study_change()
        warm = _warm_start(config)
        self.searcher.run_again(
            Resumable(
                number,
                dict(config["params"]),
                trial.checkpoint,
                WarmStart(**warm) if warm else None,
                recovery,
            )
        )
        self.table.update(trial_id, **{RECOVERY: recovery})
        self.table.write()
        self.epochs.pop(trial_id, None)
        self._recoveries.pop(trial_id, None)
        self._say(f"{trial_id} {'rerun':<9} {note}")
        return True

    def _collect_metrics(self, trial) -> tuple[dict[str, Any] | None, str | None]:
        """The last checkpoint's metrics.json, and what is wrong with it (None: nothing).

        Its model.pt is copied into trials/<id>/ only when it has the size the
        trial wrote, so a cut-short file never passes for the trial's model.
        """
        checkpoint = trial.checkpoint
        if checkpoint is None:
            return None, None
        fs = self.files.fs()
        name = "/".join(checkpoint.path.rstrip("/").split("/")[-2:])
        try:
            with fs.open_input_stream(f"{checkpoint.path}/{TRIAL_METRICS}") as stream:
                metrics = json.loads(stream.readall())
            size = fs.get_file_info(f"{checkpoint.path}/{TRIAL_MODEL}").size
        except (OSError, ValueError) as err:  # pyarrow's errors are OSErrors, json's ValueErrors
            return None, f"final checkpoint {name} unreadable ({type(err).__name__}: {err})"
        written = metrics.get(MODEL_BYTES)
        if written is not None and size != written:
            return (
                metrics,
                f"final checkpoint {name} has a {size}-byte model.pt, {written} were written",
            )
        self.files.copy_in(f"{checkpoint.path}/{TRIAL_MODEL}", model_path(trial.config["trial_id"]))
        return metrics, None

    def _delete_checkpoints(self, trial) -> None:
        """A finished trial's Ray checkpoints, of this session and of earlier ones it continued."""
        import pyarrow.fs

        fs = self.files.fs()
        prefix = f"{trial.config['trial_id']}-"
        tune_dir = trial_folder(trial).rsplit("/", 1)[0]
        for folder in fs.get_file_info(pyarrow.fs.FileSelector(tune_dir, allow_not_found=True)):
            if folder.type.name != "Directory" or not folder.base_name.startswith(prefix):
                continue
            for info in fs.get_file_info(
                pyarrow.fs.FileSelector(folder.path, allow_not_found=True)
            ):
                if info.type.name == "Directory" and info.base_name.startswith("checkpoint_"):
                    fs.delete_dir(info.path)

    def _tell(self, number: int, status: str, row: dict, reason: str | None) -> None:
        from optuna.trial import TrialState

        if self.study.get_trials(deepcopy=False)[number].state.is_finished():
            return  # recorded by an earlier session already
        handle = self._handle(number)
        attrs = {
            STATUS_ATTR: status,
            EPOCHS_RUN_ATTR: row["epochs_run"],
            EPOCHS_TRAINED_ATTR: row["epochs_trained"],
            SECONDS_ATTR: row["seconds"],
            CHECKPOINT_ATTR: None,
        }
        if row.get("utilisation") is not None:
            attrs.update({UTILISATION_ATTR: row["utilisation"], VAL_MSE_ATTR: row["val_mse"]})
        if status == FAILED:
            attrs[FAILED_ATTR] = reason
        if row.get(RECOVERY):
            attrs[RECOVERY] = row[RECOVERY]
        for key, value in attrs.items():  # checkpoint: None, it is deleted next
            handle.set_user_attr(key, value)
        if status == COMPLETE:
            self.study.tell(number, self.objective.values(row))
        else:
            self.study.tell(
                number, state=TrialState.PRUNED if status == PRUNED else TrialState.FAIL
            )
        self._handles.pop(number, None)
        self.on_study_change()

    def _handle(self, number: int):
        if number not in self._handles:
            self._handles[number] = trial_handle(self.study, number)
        return self._handles[number]

    def _relative(self, fs_path: str) -> str:
        root = self.files.path()
        return fs_path[len(root) + 1 :] if fs_path.startswith(root + "/") else fs_path

    # -- progress ------------------------------------------------------------

    def status_line(self) -> str:
        counts = self.table.counts()
        best = self.table.best("val_mse" if self.objective.multi else "objective")
        text = (
            f"[{_clock(time.monotonic() - self.started)}] {counts[COMPLETE]} complete, "
            f"{counts[PRUNED]} pruned, {counts[FAILED]} failed, {counts[RUNNING]} running "
            f"of {self.total}"
        )
        if best is not None:
            text += f"; best {best['trial_id']} objective {_num(best['objective'])}"
        if self.epochs:
            text += "; epochs " + ", ".join(f"{t} {e}" for t, e in sorted(self.epochs.items()))
        return text

    def _say(self, line: str) -> None:
        print(f"  {line}", file=self.stream, flush=True)


# What Tune keeps of a finished trial's last result: enough to tell how it ended.
_KEPT_RESULT_KEYS = frozenset(
    # "trial_id": Tune's own (a tune_id).
    {"trial_id", "done", "training_iteration", "epoch", "val_mse", "objective", FAILED_RESULT}
)


def _forget_results(trial) -> None:
    """Drops Ray Tune's copy of an ended trial's results; the recorder has written its own.

    Tune keeps every trial of an experiment until ``Tuner.fit`` returns: its
    last result (with the config), running statistics of every number it
    reported (min, max, mean, means of the last 5 and 10, with the values),
    and a cached JSON of both that its experiment-state snapshot rewrites: a
    large share of the driver's growth per trial on short trials, which
    caetune never reads. The results table, the trial folders and the study
    are its record, and a resumed search starts from the study. Tune has no
    setting to drop it, so the fields are emptied in place.
    """
    forget_trial_results(trial, keep=_KEPT_RESULT_KEYS)


def _row_params(config: dict, *, seed: int) -> dict[str, Any]:
    warm = _warm_start(config)
    return {
        **config["params"],
        "n_epochs": config["n_epochs"],
        "seed": seed,
        "trial_number": config["trial_number"],
        # Only where there is one: the column appears once a trial continued another
        # (caetune._runs).
        **({"warm_start": warm["trial_id"]} if warm else {}),
    }


def _warm_start(config: dict) -> dict | None:
    """The trial's ``warm_start`` entry when it does start from another trial's model."""
    warm = config.get("warm_start")
    return warm if warm and warm.get("checkpoint") is not None else None


def _non_finite(result: dict) -> str | None:
    """``val_mse is nan`` when the last result's MSE or objective is NaN or infinite, else None."""
    for key in ("val_mse", "objective"):
        value = result.get(key)
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"{key} is {value}"
    return None


def _describe(params: dict[str, Any]) -> str:
    short = {"n_neurons": "Nn", "n_maps": "Nm", "n_epochs": "Ne", "batch_size": "bs"}
    parts = []
    for key, value in params.items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{short.get(key, key)}={shown}")
    return " ".join(parts)


def _num(value: Any, digits: int = 4) -> str:
    """Four significant digits (``0.01234``); ``digits=0`` for whole seconds."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if digits == 0 else f"{value:.{digits}g}"
    return str(value)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _ray_error(trial) -> str:
    """The last line of the error Ray recorded for a trial it gave up on."""
    text = ""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 -- an unreadable error file must not stop the search
        pass
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    tail = next(
        (line for line in reversed(lines) if "Error" in line),
        lines[-1] if lines else "the trial's worker died",
    )
    return tail[:300]
