"""The on-disk layout of a search run: the contract between search and analysis.

``caetune search`` writes it, ``caetune report``/``export`` read it; neither
imports the other. A run lives at ``RUN_ROOT/NAME/`` where RUN_ROOT is a local
folder or ``s3://bucket/prefix``::

    NAME/
      experiment.yaml        search settings: space, objective, weight, dataset, seed ...
      study.db               the Optuna study (SQLite), unless an RDB URL was given
      results.csv            one row per trial (also results.parquet)
      results.parquet
      confirm.csv            top configs re-trained with extra seeds (mean, sd)
      trials/<trial_id>/
        config.yaml          the trial's full TrainConfig (caetune.models.TrainConfig)
        metrics.json         {"history": [EpochMetrics...], "val_mse": ..., "utilisation": {...}}
        model.pt             the final Trainer checkpoint (Trainer.load_checkpoint), or
        model-dropped.txt    ... in its place: the lean run folder dropped it (caetune.search._lean)
      report/                written by ``caetune report`` (index.html + figures)

Columns of results.csv that every reader may rely on: ``trial_id``, ``status``
(``complete``, ``pruned``, ``failed``, ``running``), ``error``, ``recovery``
(empty, or which checkpoint of the trial was unreadable, why, and whether it
resumed from an older one or restarted from epoch 0), the
searched params by their TrainConfig names (``n_neurons``, ``n_maps``,
``n_epochs``, ``model``, ``lr``, ``batch_size`` ...), ``val_mse`` (last epoch),
``best_val_mse``, ``utilisation`` (U), ``objective``, ``epochs_run`` (the
epochs its model was trained), ``epochs_trained`` (by this trial itself),
``seconds`` (this trial's own), and the per-layer metrics ``layer3_*`` /
``layer4_*``. ``warm_start`` names the trial whose model a trial continued
(the column is there once any trial did).

Everything that reads a run goes through this module: ``caetune report``,
``caetune export``, the seed confirmation and the search's summary. They
share the readers of these files, the one ranking of "the best trials"
(:func:`rank_trials`), the strict reader of a trial's checkpoint
(:func:`read_trial`); :mod:`caetune._publish` puts a staged folder in
place so that a reader sees all of it or none.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caetune._errors import InputError
from caetune._storage import Storage, download_dir

if TYPE_CHECKING:
    import pandas as pd

    from caetune.models import CAE, TrainConfig


EXPERIMENT_FILE = "experiment.yaml"
STUDY_FILE = "study.db"
RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"
CONFIRM_CSV = "confirm.csv"
TRIALS_DIR = "trials"
TRIAL_CONFIG = "config.yaml"
TRIAL_METRICS = "metrics.json"
TRIAL_MODEL = "model.pt"
# Left in a trial's folder when a lean run folder deleted its model.pt: readers say so.
TRIAL_MODEL_DROPPED = "model-dropped.txt"
MODEL_DROPPED = (
    f"its {TRIAL_MODEL} was dropped by the lean run folder (only the best trials keep theirs); "
    "caetune search --keep-all-state keeps every model"
)
REPORT_DIR = "report"

# A trial's ``status`` in results.csv (and what every reader filters on).
COMPLETE = "complete"
PRUNED = "pruned"
FAILED = "failed"
RUNNING = "running"
STATUSES = (COMPLETE, PRUNED, FAILED, RUNNING)

# What "the best trials" of a run are, for every reader: one rule (:func:`rank_trials`).
OBJECTIVE = "objective"
VAL_MSE = "val_mse"
# A trial id names a folder to read and files to write: one safe path component, as
# ``caetune search`` makes them; anything else in a results.csv is refused.
_TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# -- reading a run -----------------------------------------------------------------------


def fetch_run(storage: Storage, local: Path, patterns: list[str]) -> Path:
    """The run as a local folder: itself, or the files matching ``patterns`` downloaded from S3.

    Raises:
        InputError: (``RUN``) the bucket cannot be reached or read.
    """
    if storage.local_path is not None:
        return storage.local_path
    try:
        storage.check_reachable()
        download_dir(storage, "", local, include=patterns)
    except InputError as err:
        raise InputError("RUN", err.expected) from None
    except OSError as err:
        raise InputError("RUN", f"cannot read {storage.url}: {first_line(err)}") from None
    local.mkdir(parents=True, exist_ok=True)
    return local


def read_run(
    storage: Storage, local: Path, *, extra: tuple[str, ...] = ()
) -> tuple[Path, pd.DataFrame, list[dict[str, Any]]]:
    """A run's tables: its local folder, ``results.csv`` and ``confirm.csv``'s rows.

    Args:
        storage: The run (``parse_storage(RUN)``).
        local: Where an S3 run's files go.
        extra: More files to fetch from S3 (``study.db``).

    Raises:
        InputError: Not a run, or a table that cannot be read.
    """
    files = [RESULTS_CSV, EXPERIMENT_FILE, CONFIRM_CSV, *extra]
    run = fetch_run(storage, local, files)
    return run, read_results(run, name=storage.url), read_confirm(run)


def load_trials(run: Path, storage: Storage, trial_ids: Iterable[Any]) -> list[TrialCheckpoint]:
    """The chosen trials' checkpoints (:func:`read_trial`), their folders fetched from S3.

    Raises:
        InputError: A trial id that is not a folder name, or a trial's files
            missing, unreadable or in disagreement.
    """
    ids = [check_trial_id(t, run_name=storage.url) for t in trial_ids]
    if storage.local_path is None:
        fetch_run(storage, run, [f"{TRIALS_DIR}/{t}/*" for t in ids])
    return [read_trial(run, t, run_name=storage.url) for t in ids]


def read_results(run: Path, *, name: str | None = None) -> pd.DataFrame:
    """The run's ``results.csv`` as a DataFrame, ``trial_id`` as text.

    Args:
        run: The (local) run folder.
        name: How to name the run in errors (its URL); default ``run``.

    Raises:
        InputError: ``run`` is not a run folder or the table is unreadable.
    """
    import pandas as pd

    label = name or str(run)
    path = Path(run) / RESULTS_CSV
    if not Path(run).is_dir():
        raise InputError("RUN", f"expected a search run folder, but {label} is not a folder")
    if not path.is_file():
        raise InputError("RUN", f"{label} is not a search run (no {RESULTS_CSV})")
    try:
        results = pd.read_csv(path, dtype={"trial_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError("RUN", f"cannot read {path}: {first_line(err)}") from None
    missing = [c for c in ("trial_id", "status") if c not in results]
    if missing or not ({OBJECTIVE, VAL_MSE} & set(results.columns)):
        need = ", ".join(missing or ["objective or val_mse"])
        raise InputError("RUN", f"{path} lacks the column(s) {need}")
    return results


def read_confirm(run: Path) -> list[dict[str, Any]]:
    """``confirm.csv`` rows by rank; none when the search confirmed nothing.

    Raises:
        InputError: The file is there but unreadable, or lacks ``rank``/``trial_id``.
    """
    path = run / CONFIRM_CSV
    if not path.is_file():
        return []
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError("RUN", f"cannot read {CONFIRM_CSV}: {first_line(err)}") from None
    return confirm_rows(raw)


def confirm_rows(raw: bytes) -> list[dict[str, Any]]:
    """The rows of a ``confirm.csv`` given as bytes (local or on S3), by rank.

    Raises:
        InputError: It is not a CSV, or lacks ``rank``/``trial_id``.
    """
    import io

    import pandas as pd

    try:
        confirm = pd.read_csv(io.BytesIO(raw), dtype={"trial_id": str, "seeds": str})
    except (ValueError, pd.errors.ParserError) as err:
        raise InputError("RUN", f"cannot read {CONFIRM_CSV}: {first_line(err)}") from None
    if not {"rank", "trial_id"} <= set(confirm.columns):
        raise InputError("RUN", f"{CONFIRM_CSV} lacks the columns rank and trial_id")
    return [plain_row(r) for r in confirm.sort_values("rank").to_dict("records")]


def read_experiment(run: Path) -> dict[str, Any]:
    """``experiment.yaml`` as a mapping; empty when the run has none or it is unreadable.

    The search settings only describe a run; a run without them is still a run.
    """
    from caetune.models import read_yaml_mapping

    path = run / EXPERIMENT_FILE
    if not path.is_file():
        return {}
    try:
        return read_yaml_mapping(path, field=EXPERIMENT_FILE)
    except InputError:
        return {}


# -- the best trials ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ranked:
    """One finished trial in the run's ranking.

    Attributes:
        row: Its ``results.csv`` row (plain Python values, missing ones ``None``).
        ranked_by: Why it stands where it does, for people (``results.csv: objective``).
        confirm: Its ``confirm.csv`` row when the search confirmed it with extra seeds.
    """

    row: dict[str, Any]
    ranked_by: str
    confirm: dict[str, Any] | None = None

    @property
    def trial_id(self) -> str:
        return str(self.row["trial_id"])


def score_key(rows: Iterable[Mapping[str, Any]]) -> str:
    """The column a run's trials are ranked by.

    ``objective``; ``val_mse`` when no complete trial has a finite objective
    (a run written without a scalar objective).
    """
    done = finished(rows)
    return OBJECTIVE if any(_number(r.get(OBJECTIVE)) is not None for r in done) else VAL_MSE


def best_first(rows: Iterable[Mapping[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows with a finite ``key``, lowest first, ties by ``trial_id``; the others dropped.

    A missing, non-numeric, NaN or infinite value cannot be compared with the
    others, so such a row is never among the best.
    """
    scored = []
    for row in rows:
        score = _number(row.get(key))
        if score is not None:
            scored.append((score, str(row.get("trial_id")), dict(row)))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [row for _, _, row in scored]


def rank_trials(
    results: pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    confirm: Iterable[Mapping[str, Any]] = (),
    key: str | None = None,
) -> list[Ranked]:
    """The run's finished trials, best first: the one ranking of every reader of a run.

    Finished means ``complete`` (a pruned trial's model stopped short of its
    Ne). Trials the search confirmed with extra seeds come first, in
    ``confirm.csv``'s order (their mean objective); the others follow by
    :func:`best_first` on ``key`` (default :func:`score_key`). A trial
    without a finite score is not ranked, confirmed or not.

    Args:
        results: ``results.csv`` as a DataFrame, or its rows.
        confirm: ``confirm.csv``'s rows, by rank (:func:`read_confirm`).
        key: The column to rank by.
    """
    rows = [plain_row(r) for r in _records(results)]
    key = key or score_key(rows)
    done = {r["trial_id"]: r for r in best_first(finished(rows), key)}
    ranked = []
    for entry in confirm:
        row = done.pop(str(entry.get("trial_id")), None)
        if row is None:
            continue  # an older confirmation of a trial that is no longer complete
        seeds = entry.get("seeds") or ""
        why = f"{CONFIRM_CSV}: mean objective over seeds {seeds}".strip()
        ranked.append(Ranked(row, why, dict(entry)))
    return ranked + [Ranked(row, f"{RESULTS_CSV}: {key}") for row in done.values()]


def check_top_k(value: Any, *, field: str = "--top-k") -> int:
    """K, how many of the best trials to take: an integer >= 1.

    Raises:
        InputError: Anything else, naming ``field``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(field, f"expected an integer K >= 1, got {value!r}")
    return value


def finished(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ``complete`` rows."""
    return [r for r in rows if r.get("status") == COMPLETE]


def check_trial_id(trial_id: Any, *, run_name: str) -> str:
    """``trial_id`` as a folder name; a hostile ``results.csv`` (``../../x``, ``/abs``) must not
    steer reads or writes out of their folders.

    Raises:
        InputError: It is not one safe path component.
    """
    text = str(trial_id)
    if not _TRIAL_ID.fullmatch(text):
        raise InputError(
            "RUN", f"{run_name}/{RESULTS_CSV} names a trial {text!r} that is not a folder name"
        )
    return text


# -- a trial's checkpoint ----------------------------------------------------------------


@dataclass
class TrialCheckpoint:
    """A finished trial's files, read and checked against each other.

    Attributes:
        trial_id: The trial.
        where: How errors name its folder (``RUN/trials/<id>``).
        config: Its TrainConfig (``config.yaml``, the same as inside ``model.pt``).
        weights: The CAE's ``state_dict`` from ``model.pt``.
        history: Its per-epoch metrics (dicts of EpochMetrics), oldest first.
    """

    trial_id: str
    where: str
    config: TrainConfig
    weights: dict
    history: list[dict]

    def model(self, *, in_channels: int, image_size: tuple[int, int]) -> CAE:
        """The trained CAE for images of this shape, in eval mode.

        Raises:
            InputError: The weights do not fit the config (and this shape).
        """
        from caetune.models import build_model

        model = build_model(self.config, in_channels=in_channels, image_size=image_size)
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as err:
            raise InputError(
                self.where, f"{TRIAL_MODEL} does not fit {TRIAL_CONFIG}: {first_line(err)}"
            ) from None
        return model.eval()


def read_trial(run: Path, trial_id: str, *, run_name: str) -> TrialCheckpoint:
    """Reads a finished trial's ``config.yaml`` and ``model.pt``, strictly.

    The checkpoint is read without running code (a run may come from a shared
    bucket), must be a whole Trainer checkpoint at the config's last epoch,
    and must hold the very config of ``config.yaml``.

    Args:
        run: The local run folder.
        trial_id: A trial id already checked by :func:`check_trial_id`.
        run_name: How errors name the run (its URL or path).

    Raises:
        InputError: A file is missing, unreadable, refused or disagrees.
    """
    import pickle

    from caetune.models import TrainConfig, read_checkpoint

    folder = run / TRIALS_DIR / trial_id
    where = f"{run_name}/{TRIALS_DIR}/{trial_id}"
    if not (folder / TRIAL_MODEL).is_file() and (folder / TRIAL_MODEL_DROPPED).is_file():
        raise InputError(where, MODEL_DROPPED)
    for name in (TRIAL_CONFIG, TRIAL_MODEL):
        if not (folder / name).is_file():
            raise InputError(where, f"{name} is missing; the trial cannot be read")
    config = TrainConfig.from_yaml(folder / TRIAL_CONFIG)
    model_file = f"{where}/{TRIAL_MODEL}"
    try:
        state = read_checkpoint(folder / TRIAL_MODEL)
    except pickle.UnpicklingError:
        raise InputError(
            model_file, "refused: the checkpoint holds Python objects beyond tensors and plain data"
        ) from None
    except Exception as err:  # torch.load raises many kinds (pickle, zip, EOF, OS) for one cause
        raise InputError(
            model_file, f"unreadable checkpoint ({type(err).__name__}: {first_line(err)})"
        ) from None
    if not isinstance(state, dict) or not {"config", "model", "epoch", "history"} <= set(state):
        raise InputError(
            model_file, "not a Trainer checkpoint (expected config, model, epoch, history)"
        )
    try:
        inside = TrainConfig.from_dict(dict(state["config"]), source=f"{model_file}: config")
    except (TypeError, ValueError) as err:
        raise InputError(model_file, f"bad config in checkpoint: {first_line(err)}") from None
    if inside != config:
        raise InputError(where, f"{TRIAL_CONFIG} and the config inside {TRIAL_MODEL} disagree")
    if int(state["epoch"]) != config.n_epochs or not state["history"]:
        raise InputError(
            where, f"{TRIAL_MODEL} holds epoch {state['epoch']} of n_epochs {config.n_epochs}"
        )
    if config.precision == "auto" and state.get("precision") in ("fp32", "bf16"):
        # What the trial trained in: an exported config must retrain the same way.
        config = dataclasses.replace(config, precision=state["precision"])
    return TrialCheckpoint(trial_id, where, config, state["model"], list(state["history"]))


# -- small helpers -------------------------------------------------------------------------


def plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A pandas row as plain Python: NumPy scalars unwrapped, missing values ``None``."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[str(key)] = value
    return out


def first_line(err: BaseException) -> str:
    """An exception's first line (its type when it says nothing), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _number(value: Any) -> float | None:
    """``value`` as a finite float, else ``None`` (as pandas' ``to_numeric(errors="coerce")``)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _records(results: Any) -> Iterable[Mapping[str, Any]]:
    return results.to_dict("records") if hasattr(results, "to_dict") else results
