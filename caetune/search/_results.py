"""The run folder's files: the results table, the trial folders, and the seam to the storage.

Every write goes through :class:`RunFiles`, which sits on
:mod:`caetune._storage` (a local folder or ``s3://bucket/prefix``), and is
atomic: a reader (``caetune report`` on a running search, a resumed search)
sees a whole old file or a whole new one.

``results.csv``/``results.parquet`` hold one row per trial (the columns
:mod:`caetune._runs` promises), rewritten whole each time a trial starts
or ends; rows already there when a search resumes are kept.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caetune._runs import (
    RESULTS_CSV,
    RESULTS_PARQUET,
    RUNNING,
    STATUSES,
    TRIAL_CONFIG,
    TRIAL_METRICS,
    TRIAL_MODEL,
    TRIALS_DIR,
    rank_trials,
)
from caetune._storage import Storage, exists, read_bytes, write_bytes

# Leading columns, in this order; params, then layer metrics follow.
LEAD_COLUMNS = ("trial_id", "status", "error", "recovery")
METRIC_COLUMNS = (
    "val_mse",
    "best_val_mse",
    "objective",
    "utilisation",
    "epochs_run",
    "n_epochs",
    "epochs_trained",
    "warm_start",
    "seconds",
    "cpu_seconds",
)


@dataclass
class RunFiles:
    """One run's folder (``RUN_ROOT/NAME``) on a local disk or S3.

    Args:
        storage: The run folder itself (``parse_storage(url).child(name)``).
    """

    storage: Storage

    @property
    def url(self) -> str:
        return self.storage.url

    def fs(self):
        return self.storage.filesystem()

    def path(self, *parts: str) -> str:
        """A path within :meth:`fs` (what Ray and pyarrow take)."""
        return self.storage.join(*parts)

    def exists(self, *parts: str) -> bool:
        return exists(self.storage, "/".join(parts))

    def read_bytes(self, *parts: str) -> bytes:
        return read_bytes(self.storage, "/".join(parts))

    def write_bytes(self, rel: str, data: bytes) -> None:
        write_bytes(self.storage, rel, data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def copy_in(self, fs_path: str, rel: str) -> None:
        """Copies a file of the same filesystem (a Ray checkpoint's model.pt) into the run folder.

        On a local disk a hard link (no second copy of a possibly large model;
        the checkpoint keeps its own name for it until it is deleted), on S3 a
        server-side copy.
        """
        fs = self.fs()
        target = self.path(rel)
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        if self.storage.local_path is not None:
            tmp = f"{target}.link{os.getpid()}"
            try:
                os.link(fs_path, tmp)
                os.replace(tmp, target)
                return
            except OSError:
                Path(tmp).unlink(missing_ok=True)  # another device, or no hard links: copy
        fs.copy_file(fs_path, target)

    def delete_dir(self, fs_path: str) -> None:
        fs = self.fs()
        if fs.get_file_info(fs_path).type.name == "Directory":
            fs.delete_dir(fs_path)


def trial_dir(trial_id: str) -> str:
    return f"{TRIALS_DIR}/{trial_id}"


class ResultsTable:
    """``results.csv`` and ``results.parquet``: one row per trial, keyed by ``trial_id``.

    Args:
        files: The run folder.
        params: The searched field names (their columns come after the lead ones).
    """

    def __init__(self, files: RunFiles, params: Iterable[str]) -> None:
        self.files = files
        self.params = list(params)
        self.rows: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Reads the rows an earlier session wrote (nothing when there are none)."""
        if not self.files.exists(RESULTS_PARQUET):
            return
        import pandas as pd

        frame = pd.read_parquet(io.BytesIO(self.files.read_bytes(RESULTS_PARQUET)))
        for row in frame.to_dict(orient="records"):
            self.rows[str(row["trial_id"])] = {k: _plain(v) for k, v in row.items()}

    def update(self, trial_id: str, **values: Any) -> dict[str, Any]:
        row = self.rows.setdefault(trial_id, {"trial_id": trial_id})
        row.update({k: _plain(v) for k, v in values.items()})
        return row

    def frame(self):
        import pandas as pd

        rows = [self.rows[k] for k in sorted(self.rows)]
        frame = pd.DataFrame(rows)
        first = [
            c
            for c in dict.fromkeys((*LEAD_COLUMNS, *self.params, *METRIC_COLUMNS))
            if c in frame.columns
        ]
        layers = sorted(c for c in frame.columns if c.startswith(("layer3_", "layer4_")))
        rest = [c for c in frame.columns if c not in first and c not in layers]
        if not len(frame):
            return frame
        # A column no trial has filled yet (``recovery`` mostly): missing numbers, which parquet and
        # CSV both read back as NaN (an all-None column would come back from parquet as None).
        empty = [c for c in frame.columns if frame[c].isna().all()]
        frame[empty] = frame[empty].astype("float64")
        return frame[first + rest + layers]

    def write(self) -> None:
        frame = self.frame()
        self.files.write_text(RESULTS_CSV, frame.to_csv(index=False))
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.files.write_bytes(RESULTS_PARQUET, buffer.getvalue())

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for row in self.rows.values():
            status = row.get("status", RUNNING)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def best(self, key: str = "objective") -> dict[str, Any] | None:
        """The best complete trial by ``key`` (the run's one ranking), or ``None``."""
        ranked = rank_trials(self.rows.values(), key=key)
        return ranked[0].row if ranked else None


def write_trial_files(
    files: RunFiles, trial_id: str, *, config_yaml: str, metrics: dict[str, Any]
) -> None:
    """``trials/<id>/config.yaml`` and ``metrics.json`` (model.pt is moved in by the caller)."""
    folder = trial_dir(trial_id)
    files.write_text(f"{folder}/{TRIAL_CONFIG}", config_yaml)
    files.write_text(f"{folder}/{TRIAL_METRICS}", json.dumps(_json_safe(metrics), indent=1))


def model_path(trial_id: str) -> str:
    return f"{trial_dir(trial_id)}/{TRIAL_MODEL}"


def _plain(value: Any) -> Any:
    """NumPy scalars -> Python; pandas' missing values -> None."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_safe(value: Any) -> Any:
    """JSON without NaN/Infinity (they are not JSON): non-finite floats become None."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
