"""``caetune export``: a run's best trials as portable, checked, retrainable files.

An export is a folder, local or ``s3://bucket/prefix``::

    DEST/
      manifest.json       every file's sha256 and size, the run, K, the ranking, caetune's version
      1-t0003/            rank 1: the best finished trial, t0003
        config.yaml       its full TrainConfig, plus an ``export:`` section of metadata
        model.pt          the CAE's weights: a plain ``state_dict`` (no optimizer, no objects)
      2-t0007/ ...

``caetune train --config DEST/1-t0003/config.yaml`` retrains the trial
(:meth:`~caetune.models.TrainConfig.from_yaml` ignores ``export:``). On the
CPU a seeded run is deterministic: on the same machine and torch build it
lands within :data:`RTOL_SAME_MACHINE` of the exported ``val_mse`` (the
thread count only moves the last digits); another CPU's kernels round
differently and the difference grows with the epochs much as a new seed's
would, so elsewhere expect :data:`RTOL_OTHER_MACHINE`. :func:`load_exported`
rebuilds the trained CAE in one call.

"Best" is the run's one ranking (:func:`caetune._runs.rank_trials`): trials
the search confirmed with extra seeds (``confirm.csv``) first, in that
order, then the other finished trials by ``objective``. Finished means
``complete``: a pruned trial's weights stopped short of its config's Ne.

Every check (the run, K, each trial's checkpoint against its config, the
destination) happens before the first byte is written. The export is built in
a temporary folder and published with :func:`caetune._runs.publish`
(manifest last), so a reader who finds a manifest finds the whole export.

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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from caetune import __version__
from caetune._errors import InputError
from caetune._export_checks import (
    FORMAT,
    MANIFEST,
    SCAN_CHUNK,
    check_no_secrets,
    check_target,
    parse_location,
    read_manifest,
)
from caetune._publish import publish
from caetune._runs import (
    TRIAL_MODEL,
    Ranked,
    TrialCheckpoint,
    check_top_k,
    first_line,
    load_trials,
    rank_trials,
    read_experiment,
    read_run,
)
from caetune._storage import exists, read_bytes

if TYPE_CHECKING:
    from caetune._storage import Storage
    from caetune.models import CAE, TrainConfig

FORMAT_VERSION = 1
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
    """What :func:`export_run` wrote: where (a local path or ``s3://`` URL) and its trials."""

    url: str
    trials: tuple[ExportedTrial, ...]
    manifest: dict[str, Any]


def export_run(run: str | os.PathLike, *, top: int = 1, to: str | os.PathLike) -> ExportResult:
    """Exports the best ``top`` finished trials of a search run.

    Args:
        run: The run folder ``RUN_ROOT/NAME``, local or ``s3://bucket/prefix/NAME``.
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
    top = check_top_k(top)
    source = parse_location(run, field="RUN")
    target = parse_location(to, field="--to")
    with tempfile.TemporaryDirectory(prefix="caetune-export-") as work:
        work_dir = Path(work)
        local_run, results, confirm = read_run(source, work_dir / "run")
        chosen = rank_trials(results, confirm=confirm)
        if len(chosen) < top:
            have = (
                f"only {len(chosen)} finished trial{'s' * (len(chosen) != 1)}"
                if chosen
                else "no finished trial"
            )
            raise InputError("--top-k", f"{source.url} has {have}, cannot export {top}")
        chosen = chosen[:top]
        old_manifest = check_target(target)
        checkpoints = load_trials(local_run, source, [c.trial_id for c in chosen])
        experiment = read_experiment(local_run)

        stage = work_dir / "export"
        trials = [
            _stage_trial(stage, choice, checkpoint, experiment, rank=rank, run_url=source.url)
            for rank, (choice, checkpoint) in enumerate(zip(chosen, checkpoints, strict=True), 1)
        ]
        manifest = _manifest(stage, source, experiment, trials)
        _write_json(stage / MANIFEST, manifest)
        check_no_secrets(stage)
        replaces = set((old_manifest or {}).get("files", {})) | {MANIFEST}
        publish(stage, target, last=MANIFEST, field="--to", replaces=replaces)
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
        why = first_line(err)
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
    storage = parse_location(path, field="EXPORT")
    manifest = read_manifest(storage)
    if manifest is None:
        raise InputError("EXPORT", f"{storage.url} is not a caetune export (no {MANIFEST})")
    for rel, entry in manifest["files"].items():
        data = _read(storage, rel)
        if len(data) != entry["size"] or _sha256(data) != entry["sha256"]:
            raise InputError(
                "EXPORT", f"{storage.url}/{rel} differs from the manifest (damaged or replaced)"
            )
    return manifest


# -- a trial ------------------------------------------------------------------------------


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
    size = (experiment.get("dataset") or {}).get("image_size")  # the search records it
    if isinstance(size, list) and len(size) == 2:
        return channels, int(size[0]), int(size[1])
    from caetune.models import load_data

    height, width = load_data(config).image_size  # an older run: the data itself tells
    return channels, height, width


# -- writing -----------------------------------------------------------------------------


def _stage_trial(
    stage: Path,
    choice: Ranked,
    checkpoint: TrialCheckpoint,
    experiment: dict,
    *,
    rank: int,
    run_url: str,
) -> ExportedTrial:
    """Checks one trial's weights; writes its ``config.yaml`` and ``model.pt`` under ``stage``."""
    import torch

    from caetune.models._config import EXPORT_KEY

    trial_id = choice.trial_id
    shape = _input_shape(checkpoint.config, checkpoint.weights, experiment, checkpoint.where)
    # The weights must fit the config they are exported with.
    model = checkpoint.model(in_channels=shape[0], image_size=(shape[1], shape[2]))
    folder = f"{rank}-{trial_id}"
    (stage / folder).mkdir(parents=True)

    weights_path = stage / folder / EXPORT_WEIGHTS
    torch.save(model.state_dict(), weights_path)
    last = checkpoint.history[-1]
    metrics = {
        "val_mse": float(last["val_mse"]),
        "train_mse": float(last["train_mse"]),
        "best_val_mse": min(float(m["val_mse"]) for m in checkpoint.history),
        "epochs_run": len(checkpoint.history),
        **{k: choice.row.get(k) for k in SUMMARY_METRICS},
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "caetune_version": __version__,
        "run": run_url,
        "run_name": experiment.get("name") or Path(run_url).name,
        "trial_id": trial_id,
        "rank": rank,
        "ranked_by": choice.ranked_by,
        "objective": experiment.get("objective"),
        "metrics": metrics,
        "confirm": {k: choice.confirm.get(k) for k in CONFIRM_METRICS} if choice.confirm else None,
        "input_shape": list(shape),
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
        f"# {trial_id} of the run {meta['run_name']}, rank {rank}, "
        f"exported by caetune {__version__}.\n"
        f"# Retrain:  caetune train --config {EXPORT_CONFIG}   (the export: section is metadata)\n"
        "# Load:     from caetune.search import load_exported; model = load_exported(THIS_FOLDER)\n"
    )
    body = yaml.safe_dump(
        {**checkpoint.config.to_dict(), EXPORT_KEY: _json_safe(meta)}, sort_keys=False
    )
    (stage / folder / EXPORT_CONFIG).write_text(header + body, encoding="utf-8")
    val_mse, objective = float(last["val_mse"]), metrics["objective"]
    return ExportedTrial(rank, trial_id, folder, val_mse, objective, choice.ranked_by)


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


# -- reading an export ----------------------------------------------------------------------


def _trial_folder(path: str | os.PathLike, rank: int) -> Storage:
    storage = parse_location(path, field="path")
    if exists(storage, EXPORT_CONFIG):
        return storage
    manifest = read_manifest(storage)
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
    try:
        return read_bytes(storage, rel)
    except FileNotFoundError:
        raise InputError("path", f"{storage.url}/{rel} is missing") from None
    except OSError as err:
        raise InputError("path", f"cannot read {storage.url}/{rel}: {first_line(err)}") from None


# -- small helpers ------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(SCAN_CHUNK):
            digest.update(piece)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``None`` (neither JSON nor a portable YAML number)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
