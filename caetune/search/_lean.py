"""A lean run folder: after a search, the best trials keep their models, the promotable their state.

Each trial's ``model.pt`` is a whole Trainer checkpoint, and Adam keeps two
moment estimates per weight: two thirds of the file are optimizer state.
Readers need less, and of few trials:

* ``caetune report`` and ``caetune export`` read the weights, config, epoch
  and history (:func:`caetune._runs.read_trial`) of the best complete trials
  by the run's one ranking (:func:`caetune._runs.rank_trials`: the confirmed
  trials first); the seed confirmation reads only ``results.csv``;
* a warm start (:mod:`caetune.search._warm`) continues the optimizer too, of
  the trial :func:`~caetune.search._warm.find_warm_start` picks.

Which trials may a later trial continue? A ``--resume`` with a larger
``--num-samples`` spends its trials first on ASHA's promotions
(:func:`caetune.search._explore.promotions`): a config among the best
``1 / reduction_factor`` at its highest rung, whose trials all stopped
before the next rung, runs again to the next rung and continues its
longest-trained trial. Those trials keep their whole ``model.pt``.

After a search that finished, :func:`make_lean` keeps

1. the whole ``model.pt`` of each trial a promotion would continue;
2. the weights alone (optimizer state emptied; ``Trainer.load_checkpoint``
   still reads it, to evaluate or export; training it further would restart
   Adam's moments) of the best ``max(top_k, 3)`` complete trials: those the
   search's report and confirmation take, ``caetune report``'s default 3
   and ``caetune export``'s 1, also under the ranking an earlier
   ``confirm.csv`` gives;
3. no ``model.pt`` of any other finished trial (its ``config.yaml`` and
   ``metrics.json`` stay, so results, report tables and the study are
   unchanged): :data:`~caetune._runs.TRIAL_MODEL_DROPPED` takes its place,
   so that a reader asking for it says why it is gone.

It deletes Ray's ``checkpoint_*`` folders that remain under ``tune/`` too.
The study records the stripped and the dropped trials first
(:data:`WEIGHTS_ONLY_ATTR`, :data:`DROPPED_ATTR`), so that no warm start
picks one of them, even for a point run again (a start point, or a space
whose every point is measured): such a trial trains from scratch.
``--keep-all-state`` (``SearchSettings.keep_all_state``) keeps everything.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caetune._errors import InputError
from caetune._runs import CONFIRM_CSV, MODEL_DROPPED, TRIAL_MODEL_DROPPED, confirm_rows, rank_trials
from caetune.search._attrs import DROPPED_ATTR, TRIAL_ATTR, WEIGHTS_ONLY_ATTR
from caetune.search._confirm import candidates
from caetune.search._explore import promotions
from caetune.search._results import RunFiles, model_path, trial_dir
from caetune.search._warm import continuation_order, never_continued

TUNE_DIR = "tune"  # Ray Tune's experiment folder in the run folder (RunConfig's name)
READERS_TOP_K = 3  # caetune report's default K (export's is 1): their models stay


@dataclass(frozen=True)
class LeanOutcome:
    """What :func:`make_lean` did.

    Attributes:
        whole: Trials whose whole ``model.pt`` stays (a promotion would continue them).
        weights: Trials whose weights stay, without optimizer state (the best ones).
        stripped: Trials whose ``model.pt`` lost its optimizer state now.
        dropped: Trials whose ``model.pt`` was deleted now.
        skipped: ``(trial_id, why)`` of the files it could not rewrite (left whole).
        bytes_before: The rewritten and deleted files' size before.
        bytes_after: ... and after.
        checkpoints_deleted: Ray ``checkpoint_*`` folders deleted.
    """

    whole: tuple[str, ...]
    weights: tuple[str, ...]
    stripped: tuple[str, ...]
    dropped: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    bytes_before: int
    bytes_after: int
    checkpoints_deleted: int

    def lines(self) -> list[str]:
        """What the search prints about it: what was dropped, and each file left whole."""
        lines = []
        if self.stripped or self.dropped:
            saved = (self.bytes_before - self.bytes_after) / 1e6
            lines.append(
                f"  lean run folder: dropped {len(self.dropped)} models and the optimizer state "
                f"of {len(self.stripped)} ({saved:.0f} MB); models kept: "
                f"{', '.join(self.weights) or 'none'}; with optimizer state, for a later "
                f"promotion: {', '.join(self.whole) or 'none'} (--keep-all-state keeps all)"
            )
        lines += [
            f"  lean run folder: {model_path(trial_id)} left whole: {why}"
            for trial_id, why in self.skipped
        ]
        return lines


def continuable_trials(
    study: Any, *, rungs: Sequence[int], reduction_factor: float, n_epochs_dist: Any
) -> set[str]:
    """The trials ASHA's promotions would continue: each promoted config's longest-trained trial.

    Args:
        study: The search's study (finished trials carry ``trial_id`` and ``epochs_run``).
        rungs: ASHA's rungs in epochs, ending with the largest Ne.
        reduction_factor: ASHA's.
        n_epochs_dist: Ne's distribution in the space (``None``: Ne is fixed, no promotion).
    """
    promoted = promotions(
        study, rungs=rungs, reduction_factor=reduction_factor, n_epochs_dist=n_epochs_dist
    )
    order = continuation_order(study)  # find_warm_start's: the first is the one continued
    return {order[key][0][1] for key, _ in promoted if key in order}


def needed_trials(files: RunFiles, results: Any, *, top_k: int, pareto: bool) -> set[str]:
    """The trials whose models the report, export and confirmation read: the best complete ones.

    The ranking puts the trials the confirmation is about to run first
    (:func:`~caetune.search._confirm.candidates`); those and the best
    ``K = max(top_k, 3)`` by the plain ranking hold the first K of the
    ranking it gives. An earlier ``confirm.csv`` (a resumed run that
    confirms nothing now) ranks its trials first: its top K stay too.

    Args:
        files: The run folder.
        results: ``results.csv`` as a DataFrame.
        top_k: The search's ``top_k``.
        pareto: Whether the search confirms the Pareto front.
    """
    k = max(top_k, READERS_TOP_K)
    keep = set(candidates(results, top_k=top_k, pareto=pareto))
    keep |= {r.trial_id for r in rank_trials(results)[:k]}
    if files.exists(CONFIRM_CSV):
        try:
            rows = confirm_rows(files.read_bytes(CONFIRM_CSV))
        except InputError:
            rows = []  # a damaged confirm.csv ranks nothing; the readers refuse it themselves
        keep |= {r.trial_id for r in rank_trials(results, confirm=rows)[:k]}
    return keep


def make_lean(
    study: Any,
    files: RunFiles,
    *,
    results: Any,
    top_k: int,
    pareto: bool = False,
    rungs: Sequence[int] = (),
    reduction_factor: float = 2.0,
    n_epochs_dist: Any = None,
    on_study_change=None,
) -> LeanOutcome:
    """Drops the models and optimizer state no reader or later trial will use.

    Call it once the search has finished (no trial running). Each file is
    rewritten atomically or deleted (:class:`RunFiles`: local or S3); one that
    cannot be read is left as it is.

    Args:
        study: The search's study.
        files: The run folder.
        results: ``results.csv`` as a DataFrame (the ranking).
        top_k: The search's ``top_k``.
        pareto: Whether the search confirms the Pareto front.
        rungs: ASHA's rungs in epochs, ending with the largest Ne (empty: no promotion).
        reduction_factor: ASHA's.
        n_epochs_dist: Ne's distribution in the space (``None``: Ne is fixed, no promotion).
        on_study_change: Called after the study is written (uploads it on S3).
    """
    # A file stripped or dropped before is never continued, whatever a promotion would want.
    whole = continuable_trials(
        study, rungs=rungs, reduction_factor=reduction_factor, n_epochs_dist=n_epochs_dist
    )
    whole -= never_continued(study)
    weights = needed_trials(files, results, top_k=top_k, pareto=pareto) - whole
    stripped_before = set(study.user_attrs.get(WEIGHTS_ONLY_ATTR) or ())
    dropped_before = set(study.user_attrs.get(DROPPED_ATTR) or ())
    present = [
        str(trial.user_attrs[TRIAL_ATTR])
        for trial in study.get_trials(deepcopy=False)
        if trial.state.is_finished() and TRIAL_ATTR in trial.user_attrs
    ]
    present = [t for t in present if t not in whole and files.exists(model_path(t))]
    strip = [t for t in present if t in weights and t not in stripped_before]
    drop = [t for t in present if t not in weights]
    if strip or set(drop) - dropped_before:
        # Recorded first: a file half-way through is never a warm start's.
        study.set_user_attr(WEIGHTS_ONLY_ATTR, sorted(stripped_before | set(strip)))
        study.set_user_attr(DROPPED_ATTR, sorted(dropped_before | set(drop)))
        if on_study_change is not None:
            on_study_change()
    stripped: list[str] = []
    dropped: list[str] = []
    skipped: list[tuple[str, str]] = []
    before = after = 0
    for trial_id in strip + drop:
        try:
            if trial_id in weights:
                sizes = _strip_optimizer(files, model_path(trial_id))
            else:
                sizes = _drop_model(files, trial_id)
        except Exception as err:  # noqa: BLE001 -- a damaged file stays as it is; the search is done
            skipped.append((trial_id, f"{type(err).__name__}: {err}"))
            continue
        (stripped if trial_id in weights else dropped).append(trial_id)
        before, after = before + sizes[0], after + sizes[1]
    return LeanOutcome(
        whole=tuple(sorted(whole)),
        weights=tuple(sorted(weights)),
        stripped=tuple(stripped),
        dropped=tuple(dropped),
        skipped=tuple(skipped),
        bytes_before=before,
        bytes_after=after,
        checkpoints_deleted=_delete_ray_checkpoints(files),
    )


def _drop_model(files: RunFiles, trial_id: str) -> tuple[int, int]:
    """Deletes a trial's ``model.pt``, leaving the note readers explain it with; its sizes."""
    rel = model_path(trial_id)
    fs = files.fs()
    size = fs.get_file_info(files.path(rel)).size or 0
    files.write_text(f"{trial_dir(trial_id)}/{TRIAL_MODEL_DROPPED}", MODEL_DROPPED + "\n")
    fs.delete_file(files.path(rel))
    return size, 0


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
