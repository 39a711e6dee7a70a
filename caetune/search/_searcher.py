"""Optuna proposes, Ray Tune runs: a small :class:`ray.tune.search.Searcher` over an Optuna study.

The study lives in a real Optuna storage (SQLite in the run folder, or any
RDB URL), so it holds every trial of the search, across sessions:

* its params (asked with ``study.ask(distributions)``, the preset's start
  points first via ``study.enqueue_trial``),
* one intermediate value per epoch (``objective``; ``pareto`` searches skip
  them, Optuna takes none for several objectives),
* its end: ``COMPLETE`` with its value(s), ``PRUNED`` when ASHA stopped it
  before its own Ne, ``FAIL`` with the reason in the user attribute
  ``failed_reason``,
* user attributes ``trial_id`` (``t0007``, the Optuna trial number: the same
  id in results.csv, ``trials/`` and the dashboard) and ``checkpoint`` (its
  latest checkpoint, relative to the run folder).

A proposal whose config (every param but Ne) an earlier trial already
trained continues from that trial's saved model (:mod:`caetune.search._warm`,
user attributes ``warm_start`` and ``warm_epochs``).

The trial number is the search's stable trial id; Ray's own trial ids change
from session to session. A resumed search re-opens the study by name: trials
still ``RUNNING`` there were cut off and are proposed again, first, with
their params and their last checkpoint; new trials are asked until the study
holds ``num_samples``. A trial of this session whose final checkpoint the
recorder found damaged is queued the same way (:meth:`StudySearcher.run_again`),
so the searcher ends the session (``Searcher.FINISHED``) only once no trial
of it is still running and nothing is left to run or run again. The session
runs its trials in a series of ``Tuner.fit`` calls of at most
``max_trials`` each (:meth:`StudySearcher.begin_fit`, see
:mod:`caetune.search._run`): a fit ends the same way once its share is
suggested. Sampling is
seeded multivariate TPE with the constant liar (so concurrent trials are not
proposed on top of each other); with concurrent trials the order results
arrive in, hence the proposals, can still vary from run to run.

Only :meth:`StudySearcher.suggest` lives here; the recorder
(:mod:`caetune.search._recorder`) writes results and tells the study, so
that a trial's files are written before the study calls it finished.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune.search import Searcher

from caetune._errors import InputError
from caetune.search._attrs import (
    CHECKPOINT_ATTR,
    RECOVERY,
    START_POINT_ATTR,
    TRIAL_ATTR,
    WARM_ATTR,
    WARM_EPOCHS_ATTR,
)
from caetune.search._explore import ExploringSampler
from caetune.search._objective import Objective
from caetune.search._space import SearchSpace
from caetune.search._warm import WarmStart, find_warm_start


def trial_name(number: int) -> str:
    """The stable id of the study's trial ``number``: ``t0007``."""
    return f"t{number:04d}"


def default_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: a third of the budget, 3 to 10.

    Optuna's default (10) would leave a 12-trial search almost all random.
    """
    return max(3, min(10, num_samples // 3))


def search_sampler(
    *,
    seed: int,
    n_startup_trials: int,
    n_epochs_of: Callable[[dict[str, Any]], int] | None = None,
    rungs: tuple[int, ...] = (),
    reduction_factor: float = 2.0,
    neighbours: bool = True,
):
    """The search's sampler: seeded multivariate TPE with the constant liar, maybe explored.

    Given ``n_epochs_of``, it is wrapped in an
    :class:`~caetune.search._explore.ExploringSampler` (see :func:`open_study`;
    ``neighbours`` is its option). ``benchmarks/peers.py`` builds caetune's
    search from this same function.
    """
    import optuna

    sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True, n_startup_trials=n_startup_trials
    )
    if n_epochs_of is None:
        return sampler
    return ExploringSampler(
        sampler,
        n_epochs_of=n_epochs_of,
        seed=seed,
        rungs=rungs,
        reduction_factor=reduction_factor,
        neighbours=neighbours,
    )


def open_study(
    url: str,
    *,
    name: str,
    objective: Objective,
    seed: int,
    n_startup_trials: int,
    start_points: tuple[dict, ...] = (),
    n_epochs_of: Callable[[dict[str, Any]], int] | None = None,
    rungs: tuple[int, ...] = (),
    reduction_factor: float = 2.0,
):
    """Creates the study, or loads it when the storage already holds one of that name.

    Start points are enqueued only into a new study (a resumed one has them already).
    Given ``n_epochs_of`` (``params -> Ne``), a proposal the search has already
    measured, or of a config a running trial is training, becomes an ASHA
    promotion (``rungs``, ``reduction_factor``: ASHA's, see
    :meth:`~caetune.search._asha.AshaSettings.rungs`), that config's next epoch, an
    unmeasured neighbour, or an unmeasured point (:mod:`caetune.search._explore`).

    Raises:
        InputError: The storage cannot be opened, or holds a study of that
            name with other directions (another objective).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = search_sampler(
        seed=seed,
        n_startup_trials=n_startup_trials,
        n_epochs_of=n_epochs_of,
        rungs=rungs,
        reduction_factor=reduction_factor,
    )
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 -- SQLAlchemy raises many kinds
        raise InputError(
            "--study-storage", f"cannot open {_redact(url)}: {_first_line(err)}"
        ) from None
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            directions=objective.directions,
            sampler=sampler,
            load_if_exists=True,
        )
    except ValueError as err:
        raise InputError("--study-storage", f"study {name!r}: {_first_line(err)}") from None
    wanted = [d.upper() for d in objective.directions]
    if [d.name for d in study.directions] != wanted:
        raise InputError(
            "--objective", f"study {name!r} optimises {study.directions}, not {wanted}"
        )
    if study.metric_names != objective.metric_names:
        # Named, optuna-dashboard and Optuna's plots label the objectives (else "Objective 0, 1").
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objective.metric_names)
    if not study.trials:
        for point in start_points:
            study.enqueue_trial(dict(point), user_attrs={START_POINT_ATTR: True})
    return study


@dataclass
class TrialFactory:
    """Turns a study trial into one Ray Tune trial's config, and that config into training settings.

    Tune keeps every trial's config several times over for the whole search
    (the trial, each result, the experiment-state JSON, the trial's tag), so
    the config holds only what differs between trials; what the whole search
    shares (the space, the objective, threads, util_images) reaches the
    trainable once, with the factory itself (:func:`ray.tune.with_parameters`).
    ``report_all``: each epoch reports every metric to Tune, not only what the
    search reads from a result (for ``--log``'s trackers, which see only those).
    """

    space: SearchSpace
    objective: Objective
    seed: int
    device: str
    threads: int
    util_images: int
    report_all: bool = False

    def config(
        self,
        number: int,
        params: dict[str, Any],
        resume_from: Any = None,
        warm_start: WarmStart | None = None,
        recovery: str | None = None,
    ) -> dict[str, Any]:
        return {
            "trial_number": number,
            "trial_id": trial_name(number),
            "params": {k: params[k] for k in self.space.params if k in params},  # the space's order
            "n_epochs": self.space.n_epochs(params),  # searched, or fixed by the space
            "resume_from": resume_from,
            "warm_start": warm_start.to_config() if warm_start else None,
            RECOVERY: recovery,
        }

    def train(self, params: dict[str, Any], *, seed: int | None = None):
        """The :class:`~caetune.models.TrainConfig` of a trial with these params.

        ``seed``: another seed than the search's (the confirmation runs).
        """
        return self.space.train_config(
            params, seed=self.seed if seed is None else seed, device=self.device
        )


@dataclass
class Resumable:
    """A study trial to run again from its checkpoint.

    Cut off by an earlier session, or its final checkpoint was damaged.
    """

    number: int
    params: dict[str, Any]
    checkpoint: Any = None  # a ray.tune.Checkpoint, or None to start over
    warm_start: WarmStart | None = None  # where it started, if it continued another trial
    # What it got past so far (its final checkpoint damaged ...), for its `recovery`.
    recovery: str | None = None


class StudySearcher(Searcher):
    """Ray Tune's searcher interface over an Optuna study (ask-and-tell).

    Args:
        study: The open study (:func:`open_study`).
        factory: Builds trial configs.
        num_samples: Trials the study should hold when the search is done.
        resumable: Trials of an earlier session to run first.
        saved_model_of: ``trial_id -> Checkpoint | None``, a finished trial's saved
            model; given, a proposal continues from the same config's earlier
            trial (:mod:`caetune.search._warm`).
    """

    def __init__(
        self,
        study,
        factory: TrialFactory,
        *,
        num_samples: int,
        resumable: Sequence[Resumable] = (),
        saved_model_of: Callable[[str], Any] | None = None,
    ):
        super().__init__(metric=None, mode=None)
        self.study = study
        self.factory = factory
        self.num_samples = num_samples
        self.resumable = list(resumable)
        self.saved_model_of = saved_model_of
        self.distributions = factory.space.distributions()
        self._started = started_trials(study)  # only this searcher asks: counted once
        self._live: set[str] = set()  # the tune_id of each trial suggested and not yet ended
        # Trials the current Tuner.fit may still start (None: any number).
        self._fit_left: int | None = None
        # The current Tuner.fit was told Searcher.FINISHED (it did not stop early).
        self.finished = False

    def begin_fit(self, *, max_trials: int) -> None:
        """Starts the next ``Tuner.fit``: it runs at most ``max_trials`` trials.

        Re-runs and resumed trials count among them.
        """
        if max_trials < 1:
            raise ValueError(f"max_trials must be at least 1, got {max_trials}")
        self._fit_left = max_trials
        self._live.clear()  # a fit that returned has no trial running
        self.finished = False

    def __getstate__(self) -> dict:
        # Tuner pickles its config once for Tuner.restore, which caetune does not use (it
        # resumes from the study); the live study and sampler cannot be pickled.
        return {"num_samples": self.num_samples}

    # Ray's annotation says dict | None, but Searcher.FINISHED, a str, is how a searcher ends a fit.
    def suggest(self, tune_id: str) -> dict | str | None:  # type: ignore[override]
        # Ray passes its own trial id (tune_id) positionally; Searcher names it trial_id.
        if self._fit_left == 0:
            return self._wait_or_finish()
        if self.resumable:
            job = self.resumable.pop(0)
            config = self.factory.config(
                job.number, job.params, job.checkpoint, job.warm_start, job.recovery
            )
        elif self._started < self.num_samples:
            config = self._ask()
        else:
            return self._wait_or_finish()
        if self._fit_left is not None:
            self._fit_left -= 1
        self._live.add(tune_id)
        return config

    def _wait_or_finish(self) -> str | None:
        if self._live:
            # Nothing to run now, but a running trial's final checkpoint may yet need a re-run.
            return None
        self.finished = True
        return Searcher.FINISHED

    def _ask(self) -> dict:
        """A new trial of the study, continuing an earlier trial of its config if there is one."""
        trial = self.study.ask(self.distributions)
        self._started += 1
        trial.set_user_attr(TRIAL_ATTR, trial_name(trial.number))
        config = self.factory.config(trial.number, dict(trial.params))
        if self.saved_model_of is None:
            return config
        warm = find_warm_start(
            self.study, trial.params, config["n_epochs"], saved_model_of=self.saved_model_of
        )
        if warm is not None:
            trial.set_user_attr(WARM_ATTR, warm.trial_id)
            trial.set_user_attr(WARM_EPOCHS_ATTR, warm.epochs)
            config["warm_start"] = warm.to_config()
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        # The recorder tells the study, once the trial's files are written. Tune calls this before
        # its callbacks' on_trial_complete, and asks for the next trial only after them, so a re-run
        # the recorder queues there is seen before the session can be called finished.
        # Ray passes its own trial id by keyword, as `trial_id`: here it is a tune_id.
        self._live.discard(trial_id)

    def run_again(self, job: Resumable) -> None:
        """Runs a trial of this session again, before any new one.

        The recorder found its final checkpoint damaged.
        """
        self.resumable.append(job)

    def pending(self) -> int:
        """Trials this session will still run, re-runs not foreseen."""
        return len(self.resumable) + max(0, self.num_samples - self._started)


def started_trials(study) -> int:
    """Trials asked so far (enqueued start points not yet asked do not count)."""
    import optuna

    return sum(
        1 for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING
    )


def resumable_trials(
    study,
    *,
    checkpoint_of: Callable[[str], Any],
    saved_model_of: Callable[[str], Any] | None = None,
) -> list[Resumable]:
    """The study's ``RUNNING`` trials, with their last checkpoint (``checkpoint_of(relpath)``).

    A trial that had continued another one gets that one's model again
    (``saved_model_of(trial_id)``), for when its own checkpoint is gone; one
    waiting to run again after its final checkpoint was damaged gets the note
    the recorder left in its ``recovery`` user attribute.
    """
    import optuna

    jobs = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        rel = trial.user_attrs.get(CHECKPOINT_ATTR)
        warm, source = None, trial.user_attrs.get(WARM_ATTR)
        if source:
            model = saved_model_of(source) if saved_model_of else None
            warm = WarmStart(source, int(trial.user_attrs.get(WARM_EPOCHS_ATTR) or 0), model)
        checkpoint = checkpoint_of(rel) if rel else None
        jobs.append(
            Resumable(
                trial.number, dict(trial.params), checkpoint, warm, trial.user_attrs.get(RECOVERY)
            )
        )
    return jobs


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _redact(url: str) -> str:
    """An RDB URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
