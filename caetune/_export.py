"""``caetune export``: a run's best trials as portable, checked, retrainable files.

An export is a folder, local or ``s3://bucket/prefix``::

    DEST/
      manifest.json       every file's sha256 and size, the run, K, the ranking, caetune's version
      1-t0003/            rank 1: the best finished trial, t0003
        config.yaml       its full TrainConfig, plus an ``export:`` section of metadata
        model.pt          the CAE's weights: a plain ``state_dict`` (no optimizer, no pickled objects)
      2-t0007/ ...

``caetune train --config DEST/1-t0003/config.yaml`` retrains the trial
(:meth:`~caetune.models.TrainConfig.from_yaml` ignores ``export:``). On the
CPU a seeded run is deterministic: on the same machine and torch build it
lands within :data:`RTOL_SAME_MACHINE` of the exported ``val_mse`` (the
thread count only moves the last digits); another CPU's kernels round
differently and the difference grows with the epochs much as a new seed's
would, so elsewhere expect :data:`RTOL_OTHER_MACHINE`. :func:`load_exported`
rebuilds the trained CAE in one call.

"Best" is the search's own final ranking: trials it confirmed with extra
seeds (``confirm.csv``) first, in that order, then the other finished trials
by ``objective`` (``val_mse`` for a Pareto search). Finished means
``complete``: a pruned trial's weights stopped short of its config's Ne.

Every check (the run, K, each trial's checkpoint against its config, the
destination) happens before the first byte is written. The export is built in
a temporary folder; locally it is renamed into place, on S3 the old manifest
goes first, then the files, the new manifest last, so a reader who finds a
manifest finds the whole export.

No secret leaves: only TrainConfig fields, numbers from the run and fixed
facts (versions, the run's location) are written, never the environment nor
the study's storage URL, and every file is scanned for AWS key ids, URLs with
a password and the values of credential-like environment variables before
anything is published.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from caetune import __version__
from caetune._errors import InputError
from caetune._runs import (
    CONFIRM_CSV,
    EXPERIMENT_FILE,
    RESULTS_CSV,
    TRIAL_CONFIG,
    TRIAL_MODEL,
    TRIALS_DIR,
)

if TYPE_CHECKING:
    from caetune._storage import Storage
    from caetune.models import CAE, TrainConfig

FORMAT = "caetune-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXPORT_CONFIG = "config.yaml"
EXPORT_WEIGHTS = "model.pt"
RTOL_SAME_MACHINE = 1e-6
RTOL_OTHER_MACHINE = 0.05
SUMMARY_METRICS = ("objective", "utilisation", "seconds")
CONFIRM_METRICS = (
    "n_seeds",
    "seeds",
    "val_mse_mean",
    "val_mse_sd",
    "objective_mean",
    "objective_sd",
)

_TRIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # becomes a folder name
_SECRET_PATTERNS = (
    (
        re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}(?![A-Z0-9])"),
        "an AWS access key id",
    ),
    (
        re.compile(
            rb"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~%!$&'()*+,;=-]+:[A-Za-z0-9._~%!$&'()*+,;=-]+@"
        ),
        "a URL with a password",
    ),
)
_URL_CREDENTIALS = re.compile(
    r"^[A-Za-z][A-Za-z0-9+.-]*://[^@]*:[^@]*@"
)  # user:secret@, whatever the secret holds
_SECRET_NAMES = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I
)
_SECRET_MIN_LEN = 12  # shorter values ("testing") would match innocent text
_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExportedTrial:
    """One exported trial, as listed in the manifest."""

    rank: int
    trial_id: str
    folder: str
    val_mse: float
    objective: float | None
    ranked_by: str


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote: the destination (a local path or ``s3://`` URL) and its trials."""

    url: str
    trials: tuple[ExportedTrial, ...]
    manifest: dict[str, Any]


def export_run(run: str | os.PathLike, *, top: int = 1, to: str | os.PathLike) -> ExportResult:
    """Exports the best ``top`` finished trials of a search run.

    Args:
        run: The run folder ``STORAGE/NAME``, local or ``s3://bucket/prefix/NAME``.
        top: K, how many trials (best first).
        to: The export folder, local or ``s3://bucket/prefix``: new, empty,
            or an earlier export (replaced whole).

    Returns:
        Where the export went and what it holds.

    Raises:
        InputError: ``run`` is not a run, K is not in ``1 .. finished
            trials``, a trial's files are missing or disagree, the
            destination cannot be written or holds other files, or a file
            would carry a credential; always before anything is written.
    """
    top = _check_top(top)
    source = _parse_location(run, field="RUN")
    target = _parse_location(to, field="--to")
    with tempfile.TemporaryDirectory(prefix="caetune-export-") as work:
        work = Path(work)
        local_run = _fetch(source, work / "run", [RESULTS_CSV, EXPERIMENT_FILE, CONFIRM_CSV])
        chosen = rank_finished(local_run, label=source.url)
        if len(chosen) < top:
            have = (
                f"only {len(chosen)} finished trial{'s' * (len(chosen) != 1)}"
                if chosen
                else "no finished trial"
            )
            raise InputError("--top", f"{source.url} has {have}, cannot export {top}")
        chosen = chosen[:top]
        old_manifest = _check_target(target)
        if source.is_s3:
            _fetch(source, local_run, [f"{TRIALS_DIR}/{c['trial_id']}/*" for c in chosen])
        experiment = _read_yaml(local_run / EXPERIMENT_FILE)

        stage = work / "export"
        trials = [
            _stage_trial(stage, local_run, choice, experiment, rank=rank, run_url=source.url)
            for rank, choice in enumerate(chosen, 1)
        ]
        manifest = _manifest(stage, source, experiment, trials)
        _write_json(stage / MANIFEST, manifest)
        _check_no_secrets(stage)
        if target.is_s3:
            _publish_s3(stage, target, manifest, old_manifest)
        else:
            _publish_local(stage, target.local_path)
    return ExportResult(target.url, tuple(trials), manifest)


def load_exported(path: str | os.PathLike, *, rank: int = 1, device: str = "cpu") -> CAE:
    """The trained CAE of an export, its weights checked against their sha256.

    Args:
        path: An export folder (then its trial ranked ``rank``) or one
            trial's folder (``DEST/1-t0003``), local or ``s3://``.
        rank: Which trial of an export folder (1: the best).
        device: Where the model goes (``cpu``, ``cuda``).

    Returns:
        The :class:`~caetune.models.CAE` in eval mode; ``model.shape`` tells
        its input (``in_channels``, ``image_size``), and ``model(x)`` takes
        ``float [B, C, H, W]`` in [0, 1].

    Raises:
        InputError: Not an export, no such rank, or files that fail their checksum.
    """
    import torch

    from caetune.models import build_model

    folder = _trial_folder(path, rank)
    config, meta = _read_exported_config(folder)
    weights = _read(folder, EXPORT_WEIGHTS)
    expected = (meta.get("weights") or {}).get("sha256")
    if _sha256(weights) != expected:
        raise InputError(
            "path", f"{folder.url}/{EXPORT_WEIGHTS} does not match its sha256 in {EXPORT_CONFIG}"
        )
    channels, height, width = meta["input_shape"]
    model = build_model(config, in_channels=int(channels), image_size=(int(height), int(width)))
    try:
        model.load_state_dict(
            torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        )
    except RuntimeError as err:
        why = _first_line(err)
        raise InputError(
            "path", f"{folder.url}/{EXPORT_WEIGHTS} does not fit {EXPORT_CONFIG}: {why}"
        ) from None
    return model.to(device).eval()


def verify_export(path: str | os.PathLike) -> dict[str, Any]:
    """Checks every file an export's manifest lists (size and sha256).

    Returns:
        The manifest.

    Raises:
        InputError: No manifest, or a file missing or different.
    """
    storage = _parse_location(path, field="EXPORT")
    manifest = _read_manifest(storage)
    if manifest is None:
        raise InputError("EXPORT", f"{storage.url} is not a caetune export (no {MANIFEST})")
    for rel, entry in manifest["files"].items():
        data = _read(storage, rel)
        if len(data) != entry["size"] or _sha256(data) != entry["sha256"]:
            raise InputError(
                "EXPORT", f"{storage.url}/{rel} differs from the manifest (damaged or replaced)"
            )
    return manifest


def rank_finished(run: Path, *, label: str | None = None) -> list[dict[str, Any]]:
    """A run's finished trials, best first, as ``results.csv`` rows plus ``ranked_by`` and ``confirm``.

    Raises:
        InputError: ``run`` is not a run folder.
    """
    import pandas as pd

    from caetune.analysis._report import read_results

    results = read_results(run, name=label)
    done = results[results["status"] == "complete"].copy()
    objective = pd.to_numeric(done.get("objective", pd.Series(dtype=float)), errors="coerce")
    score_column = (
        "objective" if objective.notna().any() else "val_mse"
    )  # a Pareto search has no scalar objective
    done["_score"] = pd.to_numeric(done[score_column], errors="coerce")
    done = done[done["_score"].map(math.isfinite)].sort_values(["_score", "trial_id"])
    rows = {
        str(r["trial_id"]): _plain_row(r) for r in done.drop(columns="_score").to_dict("records")
    }

    ranked = []
    for entry in _read_confirm(run):
        if entry["trial_id"] not in rows:
            continue  # an older confirmation of a trial that is no longer complete
        row = rows.pop(entry["trial_id"])
        seeds = entry.get("seeds") or ""
        ranked.append(
            {
                **row,
                "confirm": entry,
                "ranked_by": f"confirm.csv: mean objective over seeds {seeds}".strip(),
            }
        )
    ranked += [
        {**row, "confirm": None, "ranked_by": f"results.csv: {score_column}"}
        for row in rows.values()
    ]
    return ranked


# -- reading the run ---------------------------------------------------------------------


def _read_confirm(run: Path) -> list[dict[str, Any]]:
    """``confirm.csv`` rows by rank; none when the search confirmed nothing."""
    import pandas as pd

    path = run / CONFIRM_CSV
    if not path.is_file():
        return []
    try:
        confirm = pd.read_csv(path, dtype={"trial_id": str, "seeds": str})
    except (OSError, ValueError) as err:
        raise InputError("RUN", f"cannot read {CONFIRM_CSV}: {_first_line(err)}") from None
    if not {"rank", "trial_id"} <= set(confirm.columns):
        raise InputError("RUN", f"{CONFIRM_CSV} lacks the columns rank and trial_id")
    return [_plain_row(r) for r in confirm.sort_values("rank").to_dict("records")]


def _parse_location(url: str | os.PathLike, *, field: str) -> Storage:
    """:func:`~caetune._storage.parse_storage`, refusing ``scheme://user:secret@...`` first.

    A secret holding ``/`` (AWS secret keys may) ends the URL's host part
    early, so the ``@`` is not where ``parse_storage`` looks for it, and its
    error would echo the secret.
    """
    from caetune._storage import parse_storage

    if isinstance(url, (str, os.PathLike)) and _URL_CREDENTIALS.match(os.fspath(url)):
        raise InputError(
            field, "a location without credentials (use the AWS environment or ~/.aws)"
        )
    return parse_storage(url, field=field)


def _check_top(top: Any) -> int:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError("--top", f"expected an integer K >= 1, got {top!r}")
    return top


def _fetch(storage: Storage, local: Path, patterns: list[str]) -> Path:
    """The run as a local folder: itself, or the files matching ``patterns`` downloaded from S3."""
    from caetune._storage import download_dir

    if storage.local_path is not None:
        return storage.local_path
    try:
        storage.check_reachable()
        download_dir(storage, "", local, include=patterns)
    except InputError as err:
        raise InputError("RUN", err.expected) from None
    except OSError as err:
        raise InputError("RUN", f"cannot read {storage.url}: {_first_line(err)}") from None
    local.mkdir(parents=True, exist_ok=True)
    return local


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass
class _Loaded:
    """A trial read from the run and checked: its config, weights and input shape."""

    config: TrainConfig
    weights: dict
    history: list[dict]
    input_shape: tuple[int, int, int]  # (C, H, W)


def _load_trial(run: Path, trial_id: str, experiment: dict) -> _Loaded:
    import pickle

    from caetune.models import TrainConfig, build_model, read_checkpoint

    folder = run / TRIALS_DIR / trial_id
    where = f"RUN: {TRIALS_DIR}/{trial_id}"
    for name in (TRIAL_CONFIG, TRIAL_MODEL):
        if not (folder / name).is_file():
            raise InputError(where, f"{name} is missing; the trial cannot be exported")
    config = TrainConfig.from_yaml(folder / TRIAL_CONFIG)
    try:
        # A run may come from a shared bucket: reading its checkpoint must not run code.
        state = read_checkpoint(folder / TRIAL_MODEL)
    except pickle.UnpicklingError:
        raise InputError(
            where, f"refused {TRIAL_MODEL}: it holds Python objects beyond tensors and plain data"
        ) from None
    except Exception as err:  # torch.load raises many kinds (pickle, zip, EOF, OS) for one cause
        raise InputError(
            where, f"unreadable {TRIAL_MODEL} ({type(err).__name__}: {_first_line(err)})"
        ) from None
    if not isinstance(state, dict) or not {"config", "model", "epoch", "history"} <= set(state):
        raise InputError(
            where, f"{TRIAL_MODEL} is not a Trainer checkpoint (config, model, epoch, history)"
        )
    if TrainConfig.from_dict(dict(state["config"]), source=f"{where}/{TRIAL_MODEL}") != config:
        raise InputError(where, f"{TRIAL_CONFIG} and the config inside {TRIAL_MODEL} disagree")
    if int(state["epoch"]) != config.n_epochs or not state["history"]:
        raise InputError(
            where, f"{TRIAL_MODEL} holds epoch {state['epoch']} of n_epochs {config.n_epochs}"
        )
    weights = state["model"]
    shape = _input_shape(config, weights, experiment, where)
    model = build_model(config, in_channels=shape[0], image_size=shape[1:])
    try:
        model.load_state_dict(weights)  # the weights must fit the config they are exported with
    except RuntimeError as err:
        raise InputError(
            where, f"{TRIAL_MODEL} does not fit {TRIAL_CONFIG}: {_first_line(err)}"
        ) from None
    return _Loaded(config, model.state_dict(), list(state["history"]), shape)


def _input_shape(
    config: TrainConfig, weights: dict, experiment: dict, where: str
) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images the trial saw; the weights alone do not fix H and W."""
    try:
        channels = int(weights["encoder.0.weight"].shape[1])  # conv weight [Nm, C, 3, 3]
    except (KeyError, AttributeError, IndexError):
        raise InputError(where, f"{TRIAL_MODEL} does not hold a CAE's weights") from None
    if config.image_size is not None:
        return channels, config.image_size, config.image_size
    size = (experiment.get("dataset") or {}).get(
        "image_size"
    )  # the search records its data's shape
    if isinstance(size, list) and len(size) == 2:
        return channels, int(size[0]), int(size[1])
    from caetune.models import load_data

    height, width = load_data(config).image_size  # an older run: the data itself tells
    return channels, height, width


# -- writing -----------------------------------------------------------------------------


def _stage_trial(
    stage: Path, run: Path, choice: dict, experiment: dict, *, rank: int, run_url: str
) -> ExportedTrial:
    """Checks one trial and writes its ``config.yaml`` and ``model.pt`` under ``stage``."""
    import torch

    from caetune.models._config import EXPORT_KEY

    trial_id = str(choice["trial_id"])
    if not _TRIAL_ID.match(trial_id):
        raise InputError(
            "RUN", f"{RESULTS_CSV} names a trial {trial_id!r} that is not a folder name"
        )
    loaded = _load_trial(run, trial_id, experiment)
    folder = f"{rank}-{trial_id}"
    (stage / folder).mkdir(parents=True)

    weights_path = stage / folder / EXPORT_WEIGHTS
    torch.save(loaded.weights, weights_path)
    last = loaded.history[-1]
    metrics = {
        "val_mse": float(last["val_mse"]),
        "train_mse": float(last["train_mse"]),
        "best_val_mse": min(float(m["val_mse"]) for m in loaded.history),
        "epochs_run": len(loaded.history),
        **{k: choice.get(k) for k in SUMMARY_METRICS},
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "caetune_version": __version__,
        "run": run_url,
        "run_name": experiment.get("name") or Path(run_url).name,
        "trial_id": trial_id,
        "rank": rank,
        "ranked_by": choice["ranked_by"],
        "objective": experiment.get("objective"),
        "metrics": metrics,
        "confirm": {k: choice["confirm"].get(k) for k in CONFIRM_METRICS}
        if choice["confirm"]
        else None,
        "input_shape": list(loaded.input_shape),
        "weights": {
            "file": EXPORT_WEIGHTS,
            "sha256": _file_sha256(weights_path),
            "size": weights_path.stat().st_size,
        },
        "reproduce": {
            "command": f"caetune train --config {EXPORT_CONFIG}",
            "val_mse": metrics["val_mse"],
            "rtol_same_machine": RTOL_SAME_MACHINE,
            "rtol_other_machine": RTOL_OTHER_MACHINE,
        },
        "environment": {"python": platform.python_version(), "torch": str(torch.__version__)},
    }
    header = (
        f"# {trial_id} of the run {meta['run_name']}, rank {rank}, exported by caetune {__version__}.\n"
        f"# Retrain:  caetune train --config {EXPORT_CONFIG}   (the export: section is metadata)\n"
        "# Load:     from caetune.search import load_exported; model = load_exported(THIS_FOLDER)\n"
    )
    body = yaml.safe_dump(
        {**loaded.config.to_dict(), EXPORT_KEY: _json_safe(meta)}, sort_keys=False
    )
    (stage / folder / EXPORT_CONFIG).write_text(header + body, encoding="utf-8")
    objective = metrics["objective"]
    return ExportedTrial(rank, trial_id, folder, metrics["val_mse"], objective, choice["ranked_by"])


def _manifest(
    stage: Path, source: Storage, experiment: dict, trials: list[ExportedTrial]
) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        files[path.relative_to(stage).as_posix()] = {
            "sha256": _file_sha256(path),
            "size": path.stat().st_size,
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "caetune_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": source.url,
        "run_name": experiment.get("name") or Path(source.url).name,
        "k": len(trials),
        "trials": [_json_safe(dataclasses.asdict(t)) for t in trials],
        "files": files,
    }


def _check_no_secrets(stage: Path) -> None:
    """Refuses to publish when any staged file holds what looks like a credential."""
    values = {
        name: value.encode()
        for name, value in os.environ.items()
        if _SECRET_NAMES.search(name) and len(value) >= _SECRET_MIN_LEN
    }
    overlap = max([len(v) for v in values.values()] + [256])
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        what = _find_secret(_chunks(path, overlap), values)
        if what:
            rel = path.relative_to(stage).as_posix()
            raise InputError(
                "RUN", f"the export's {rel} would contain {what}; nothing was exported"
            )


def _find_secret(chunks: Iterator[bytes], values: dict[str, bytes]) -> str | None:
    for chunk in chunks:
        for pattern, what in _SECRET_PATTERNS:
            if pattern.search(chunk):
                return what
        for name, value in values.items():
            if value in chunk:
                return f"the value of ${name}"
    return None


def _chunks(path: Path, overlap: int) -> Iterator[bytes]:
    """The file in overlapping pieces, so a match across a boundary is still found."""
    tail = b""
    with open(path, "rb") as handle:
        while piece := handle.read(_SCAN_CHUNK):
            yield tail + piece
            tail = piece[-overlap:]


# -- the destination -----------------------------------------------------------------------


def _check_target(target: Storage) -> dict | None:
    """The destination must be writable and new, empty or an earlier export; returns that export's manifest."""
    if target.is_s3:
        try:
            target.check_reachable()
        except InputError as err:
            raise InputError("--to", err.expected) from None
        keys = _s3_keys(target)
    else:
        from caetune.models._cli import check_writable_dir

        check_writable_dir(target.local_path, field="--to")
        keys = [p.name for p in target.local_path.iterdir()] if target.local_path.is_dir() else []
    if not keys:
        return None
    manifest = _read_manifest(target)
    if manifest is None:
        raise InputError(
            "--to",
            f"{target.url} holds other files; give a new or empty folder, or an earlier export",
        )
    return manifest


def _read_manifest(storage: Storage) -> dict | None:
    """An export's manifest, or ``None`` where there is none (or not a caetune one)."""
    from caetune._storage import read_bytes

    try:
        manifest = json.loads(read_bytes(storage, MANIFEST))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    except OSError as err:
        raise InputError(storage.url, f"cannot read {MANIFEST}: {_first_line(err)}") from None
    ok = (
        isinstance(manifest, dict)
        and manifest.get("format") == FORMAT
        and isinstance(manifest.get("files"), dict)
    )
    return manifest if ok else None


def _s3_keys(storage: Storage) -> list[str]:
    import pyarrow.fs

    fs = storage.filesystem()
    selector = pyarrow.fs.FileSelector(storage.fs_path, recursive=True, allow_not_found=True)
    try:
        return [info.path for info in fs.get_file_info(selector) if info.type.name == "File"]
    except OSError as err:
        raise InputError("--to", f"cannot list {storage.url}: {_first_line(err)}") from None


def _publish_local(stage: Path, target: Path) -> None:
    """Moves the staged export into ``target`` with renames (an earlier export is swapped out whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{target.name}.incoming-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(incoming, 0o777 & ~umask)  # mkdtemp's 0700 would hide the export from everyone else
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    try:
        for path in stage.iterdir():
            shutil.move(path, incoming / path.name)  # a rename when /tmp shares the filesystem
        if target.exists():
            os.replace(target, old)
        os.replace(incoming, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _publish_s3(stage: Path, target: Storage, manifest: dict, old_manifest: dict | None) -> None:
    """Old manifest out, files up, manifest last, then the old export's leftovers out."""
    from caetune._storage import upload_file

    fs = target.filesystem()
    old_files = set((old_manifest or {}).get("files", {}))
    new_files = set(manifest["files"])
    try:
        if old_manifest is not None:
            fs.delete_file(target.join(MANIFEST))  # from here on no reader trusts the old files
        for rel in sorted(new_files):
            upload_file(target, stage / rel, rel)
        upload_file(target, stage / MANIFEST, MANIFEST)
    except BaseException as err:
        # Without its manifest a half-uploaded export is no export: leave the prefix empty.
        _remove_stale(fs, target, old=old_files | new_files | {MANIFEST}, new=set())
        if isinstance(err, OSError):
            raise InputError("--to", f"cannot write to {target.url}: {_first_line(err)}") from None
        raise
    _remove_stale(fs, target, old=old_files, new=new_files | {MANIFEST})


def _remove_stale(fs, target: Storage, *, old: set[str], new: set[str]) -> None:
    """Deletes the files of ``old`` not in ``new``; a trial folder no longer used goes whole.

    Whole folders, because pyarrow leaves a folder marker behind the last file deleted from one.
    """
    new_folders = {rel.split("/", 1)[0] for rel in new if "/" in rel}
    gone = sorted({rel.split("/", 1)[0] for rel in old if "/" in rel} - new_folders)
    files = sorted(
        rel for rel in old - new if "/" not in rel or rel.split("/", 1)[0] in new_folders
    )
    for delete, rels in ((fs.delete_dir, gone), (fs.delete_file, files)):
        for rel in rels:
            try:
                delete(target.join(rel))
            except (OSError, InputError):
                pass  # already gone, unreachable like the upload, or a name no export of ours writes


# -- reading an export ----------------------------------------------------------------------


def _trial_folder(path: str | os.PathLike, rank: int) -> Storage:
    from caetune._storage import exists

    storage = _parse_location(path, field="path")
    if exists(storage, EXPORT_CONFIG):
        return storage
    manifest = _read_manifest(storage)
    if manifest is None:
        raise InputError(
            "path", f"{storage.url} is neither a caetune export nor one trial's folder of one"
        )
    folders = {int(t["rank"]): t["folder"] for t in manifest.get("trials", [])}
    if rank not in folders:
        raise InputError(
            "rank", f"expected one of {', '.join(map(str, sorted(folders)))}, got {rank!r}"
        )
    return storage.child(folders[rank])


def _read_exported_config(folder: Storage) -> tuple[TrainConfig, dict[str, Any]]:
    from caetune.models import TrainConfig
    from caetune.models._config import EXPORT_KEY

    try:
        doc = yaml.safe_load(_read(folder, EXPORT_CONFIG))
    except yaml.YAMLError:
        doc = None
    meta = doc.get(EXPORT_KEY) if isinstance(doc, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "input_shape" not in meta:
        raise InputError(
            "path", f"{folder.url}/{EXPORT_CONFIG} is not an exported config (no export: section)"
        )
    fields = {k: v for k, v in doc.items() if k != EXPORT_KEY}
    return TrainConfig.from_dict(fields, source=f"{folder.url}/{EXPORT_CONFIG}"), meta


def _read(storage: Storage, rel: str) -> bytes:
    from caetune._storage import read_bytes

    try:
        return read_bytes(storage, rel)
    except FileNotFoundError:
        raise InputError("path", f"{storage.url}/{rel} is missing") from None
    except OSError as err:
        raise InputError("path", f"cannot read {storage.url}/{rel}: {_first_line(err)}") from None


# -- small helpers ------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(_SCAN_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A pandas row as plain Python: NumPy scalars unwrapped, missing values ``None``."""
    out = {}
    for key, value in row.items():
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[str(key)] = value
    return out


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``None`` (neither JSON nor a portable YAML number)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
