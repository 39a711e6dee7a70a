"""Never train the same epochs twice: a trial continues from an earlier trial of the same config.

Training does not depend on Ne (no learning-rate schedule, a seeded
permutation per epoch, deterministic kernels on CPU), so epoch ``e`` of a
trial that runs Ne = 20 *is* the model of the same config run with Ne = ``e``,
bit for bit (``tests/search/test_warm.py`` checks it). Trials of a search share
the seed, so two trials with the same params but Ne differ only in how long
they train. When the sampler proposes such a config again,

* a finished trial of it (complete, or pruned by ASHA) that ran ``j <= Ne``
  epochs and left its model (``trials/<id>/model.pt``, the full Trainer
  state) is where the new trial starts: it trains only epochs ``j+1 .. Ne``;
* with ``j == Ne`` (the exact same proposal) it trains nothing: it loads the
  model, computes the metrics and reports them, so the sampler hears the same
  value again without paying for it.

The new trial's row says so: ``warm_start`` (the trial it continued from) and
``epochs_trained`` (its own epochs; ``epochs_run`` counts the model's). Its
``seconds`` are its own. A proposal whose every earlier trial ran *more*
epochs than its Ne trains from scratch: only a trial's final model is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from caetune.search._attrs import DROPPED_ATTR, EPOCHS_RUN_ATTR, TRIAL_ATTR, WEIGHTS_ONLY_ATTR


@dataclass(frozen=True)
class WarmStart:
    """An earlier trial whose saved model a new trial continues from.

    Attributes:
        trial_id: The earlier trial (``t0003``).
        epochs: The epochs its model was trained for (``epochs_run``).
        checkpoint: A ``ray.tune.Checkpoint`` of its folder (``trials/<id>/``), or
            ``None`` when its model is gone (the new trial then starts over).
    """

    trial_id: str
    epochs: int
    checkpoint: Any = None

    def to_config(self) -> dict[str, Any]:
        """The trial config's ``warm_start`` entry (read by the trainable and the recorder)."""
        return {"trial_id": self.trial_id, "epochs": self.epochs, "checkpoint": self.checkpoint}


def config_key(params: dict[str, Any]) -> tuple:
    """What two trials of a search share when they train the same model: every param but Ne."""
    return tuple(
        sorted(((k, v) for k, v in params.items() if k != "n_epochs"), key=lambda kv: kv[0])
    )


def finished_runs(study):
    """``(trial, config_key, epochs_run)`` of each finished trial (complete, or pruned by ASHA).

    Its objective after every epoch up to ``epochs_run`` is known, and its
    saved model (if kept) is the config's model after ``epochs_run`` epochs.
    """
    import optuna

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for trial in study.get_trials(deepcopy=False, states=finished):
        yield trial, config_key(trial.params), int(trial.user_attrs.get(EPOCHS_RUN_ATTR) or 0)


def never_continued(study) -> frozenset[str]:
    """The trials a lean run folder left without optimizer state or model (:mod:`._lean`)."""
    attrs = study.user_attrs
    return frozenset(attrs.get(WEIGHTS_ONLY_ATTR) or ()) | frozenset(attrs.get(DROPPED_ATTR) or ())


def continuation_order(study) -> dict[tuple, list[tuple[int, str]]]:
    """Each config's finished trials with a model, in the order a continuation prefers them.

    ``config_key -> [(epochs_run, trial_id), ...]``: most epochs first, then
    the oldest trial (the one the study numbered first).
    """
    ranked = sorted(
        (-epochs, trial.number, key, str(trial.user_attrs[TRIAL_ATTR]))
        for trial, key, epochs in finished_runs(study)
        if epochs > 0 and TRIAL_ATTR in trial.user_attrs
    )
    order: dict[tuple, list[tuple[int, str]]] = {}
    for negative_epochs, _, key, trial_id in ranked:
        order.setdefault(key, []).append((-negative_epochs, trial_id))
    return order


def find_warm_start(
    study, params: dict[str, Any], n_epochs: int, *, saved_model_of: Callable[[str], Any]
) -> WarmStart | None:
    """The finished trial of the config that ran the most epochs, at most ``n_epochs``, model kept.

    A trial the lean run folder stripped or dropped (:func:`never_continued`)
    is never picked: its optimizer state is gone, even while its file is not.

    Args:
        study: The search's Optuna study (its finished trials carry ``trial_id``, ``epochs_run``).
        params: The proposed params.
        n_epochs: The proposal's Ne.
        saved_model_of: ``trial_id -> Checkpoint | None`` (``None``: no model saved).
    """
    gone = never_continued(study)
    for epochs, trial_id in continuation_order(study).get(config_key(params), []):
        if epochs > n_epochs or trial_id in gone:
            continue
        checkpoint = saved_model_of(trial_id)
        if checkpoint is not None:
            return WarmStart(trial_id, epochs, checkpoint)
    return None
