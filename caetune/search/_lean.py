"""A lean run folder: after a search, optimizer state stays where a later trial may continue it.

Each trial's ``model.pt`` is a whole Trainer checkpoint, and Adam keeps two
moment estimates per weight: two thirds of the file are optimizer state.
Readers need less:

* ``caetune report`` and ``caetune export`` read a complete trial's weights,
  config, epoch and history (:func:`caetune._runs.read_trial`);
* a warm start (:mod:`caetune.search._warm`) continues the optimizer too, of
  the trial :func:`~caetune.search._warm.find_warm_start` picks.

Which trial can a later trial continue? The explorer never runs a measured
point again (:mod:`caetune.search._explore`: a config's Ne at or below the
epochs a trial of it ran), so a new trial of a config has a larger Ne than
every earlier run of it and continues the config's longest-trained trial
(the oldest among equals). A trial that ran the space's largest Ne is
continued by none: a resumed run keeps its ``max_epochs``, so no trial asks
for more. Those longest trials below the largest Ne are the ones a
``--resume`` with a larger ``--num-samples`` may continue.

After a search that finished, :func:`make_lean` drops the optimizer's
per-weight state from every other trial's ``model.pt`` (what is left is
still a checkpoint ``Trainer.load_checkpoint`` reads, to evaluate or export;
training it further would restart Adam's moments), and deletes Ray's
``checkpoint_*`` folders that remain under ``tune/``. The study records
those trials first (:data:`WEIGHTS_ONLY_ATTR`), so that no warm start picks
one of them, even for a point run again (a start point, or a space whose
every point is measured): such a trial trains from scratch.
``--keep-all-state`` (``SearchSettings.keep_all_state``) keeps everything.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caetune.search._attrs import TRIAL_ATTR, WEIGHTS_ONLY_ATTR
from caetune.search._results import RunFiles, model_path
from caetune.search._warm import finished_runs

TUNE_DIR = "tune"  # Ray Tune's experiment folder in the run folder (RunConfig's name)


@dataclass(frozen=True)
class LeanOutcome:
    """What :func:`make_lean` did.

    Attributes:
        kept: Trials whose optimizer state stays (a later trial may continue them).
        stripped: Trials whose ``model.pt`` lost its optimizer state now.
        skipped: ``(trial_id, why)`` of the files it could not rewrite (left whole).
        bytes_before: The rewritten files' size before.
        bytes_after: ... and after.
        checkpoints_deleted: Ray ``checkpoint_*`` folders deleted.
    """

    kept: tuple[str, ...]
    stripped: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    bytes_before: int
    bytes_after: int
    checkpoints_deleted: int

    def lines(self) -> list[str]:
        """What the search prints about it: what was dropped, and each file left whole."""
        lines = []
        if self.stripped:
            saved = (self.bytes_before - self.bytes_after) / 1e6
            lines.append(
                f"  lean run folder: dropped the optimizer state of {len(self.stripped)} trials "
                f"({saved:.0f} MB); kept where a later trial may continue: "
                f"{', '.join(self.kept) or 'none'} (--keep-all-state keeps all)"
            )
        lines += [
            f"  lean run folder: {model_path(trial_id)} left whole: {why}"
            for trial_id, why in self.skipped
        ]
        return lines


def continuable_trials(study: Any, *, max_epochs: int) -> set[str]:
    """The trials a later trial may continue: per config, the longest-trained below max_epochs.

    Args:
        study: The search's study (finished trials carry ``trial_id`` and ``epochs_run``).
        max_epochs: The space's largest Ne.
    """
    longest: dict[tuple, tuple[int, int, str]] = {}
    for trial, key, epochs in finished_runs(study):
        trial_id = trial.user_attrs.get(TRIAL_ATTR)
        if trial_id is None or epochs <= 0:
            continue
        # find_warm_start's order: most epochs first, then the oldest trial.
        rank = (-epochs, trial.number, str(trial_id))
        if key not in longest or rank < longest[key]:
            longest[key] = rank
    return {trial_id for negative, _, trial_id in longest.values() if -negative < max_epochs}


def weights_only_trials(study: Any) -> frozenset[str]:
    """The trials whose ``model.pt`` lost its optimizer state: never continued."""
    return frozenset(study.user_attrs.get(WEIGHTS_ONLY_ATTR) or ())


def make_lean(
    study: Any,
    files: RunFiles,
    *,
    max_epochs: int,
    on_study_change=None,
) -> LeanOutcome:
    """Drops optimizer state no later trial will use, and Ray's leftover checkpoints.

    Call it once the search has finished (no trial running). Each file is
    rewritten atomically (:meth:`RunFiles.write_bytes`: local or S3); one
    that cannot be read is left as it is.

    Args:
        study: The search's study.
        files: The run folder.
        max_epochs: The space's largest Ne.
        on_study_change: Called after the study is written (uploads it on S3).
    """
    keep = continuable_trials(study, max_epochs=max_epochs)
    done = weights_only_trials(study)
    todo = [
        str(trial.user_attrs[TRIAL_ATTR])
        for trial in study.get_trials(deepcopy=False)
        if trial.state.is_finished() and TRIAL_ATTR in trial.user_attrs
    ]
    todo = [t for t in todo if t not in keep and t not in done and files.exists(model_path(t))]
    if todo:
        # Recorded first: a file half-way through is never a warm start's.
        study.set_user_attr(WEIGHTS_ONLY_ATTR, sorted(done | set(todo)))
        if on_study_change is not None:
            on_study_change()
    stripped, skipped, before, after = [], [], 0, 0
    for trial_id in todo:
        try:
            sizes = _strip_optimizer(files, model_path(trial_id))
        except Exception as err:  # noqa: BLE001 -- a damaged file stays as it is; the search is done
            skipped.append((trial_id, f"{type(err).__name__}: {err}"))
            continue
        stripped.append(trial_id)
        before, after = before + sizes[0], after + sizes[1]
    outcome = LeanOutcome(
        kept=tuple(sorted(keep)),
        stripped=tuple(stripped),
        skipped=tuple(skipped),
        bytes_before=before,
        bytes_after=after,
        checkpoints_deleted=_delete_ray_checkpoints(files),
    )
    return outcome


def _strip_optimizer(files: RunFiles, rel: str) -> tuple[int, int]:
    """Rewrites a Trainer checkpoint with the optimizer's per-weight state emptied; its sizes."""
    import torch

    from caetune.models import read_checkpoint

    data = files.read_bytes(rel)
    with tempfile.TemporaryDirectory(prefix="caetune-lean-") as work:
        local = Path(work) / "model.pt"
        local.write_bytes(data)
        state = read_checkpoint(local)
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or not optimizer.get("state"):
        return len(data), len(data)  # nothing to drop
    # param_groups stay (a few numbers): Trainer.load_checkpoint reads the file as before.
    state["optimizer"] = {**optimizer, "state": {}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files.write_bytes(rel, buffer.getvalue())
    return len(data), buffer.getbuffer().nbytes


def _delete_ray_checkpoints(files: RunFiles) -> int:
    """Deletes the ``checkpoint_*`` folders left in Ray's trial folders; how many."""
    import pyarrow.fs

    fs, deleted = files.fs(), 0
    selector = pyarrow.fs.FileSelector(files.path(TUNE_DIR), allow_not_found=True)
    for trial in fs.get_file_info(selector):
        if trial.type.name != "Directory":
            continue
        inner = pyarrow.fs.FileSelector(trial.path, allow_not_found=True)
        for item in fs.get_file_info(inner):
            if item.type.name == "Directory" and item.base_name.startswith("checkpoint_"):
                fs.delete_dir(item.path)
                deleted += 1
    return deleted
