"""``run_search``: one search from settings to results, resumable.

The order matters:

1. Validate everything that can be checked without writing: the settings,
   the space, the run root (reachable), the name, an existing run's settings,
   the Ray cluster (reachable), the dataset (loads). Bad input here is an
   :class:`~caetune.InputError` and nothing has been written.
2. Take the run's lock (before Ray starts: a second search on the run stops
   there), join or start Ray, open (or create) the Optuna study, write
   ``experiment.yaml``.
3. Run the trials (Ray Tune + the study's searcher + ASHA + the recorder),
   in a series of ``Tuner.fit`` calls of at most :data:`TRIALS_PER_FIT`.
4. Confirm the top configs with extra seeds, write the report, print the
   summary.

A run is ``RUN_ROOT/NAME``. Running the same command again, or
``--resume NAME``, continues it: settings not given are taken from its
``experiment.yaml``, and settings that define the search (the space, the
dataset, the objective, the seed ...) must not change. Finished trials are
never run again; cut-off ones continue from their last checkpoint;
``--num-samples`` may grow to extend a search.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

from caetune._errors import InputError
from caetune._runs import TRIAL_MODEL
from caetune.search._asha import AshaSettings
from caetune.search._compat import keep_aws_keys_from_trials
from caetune.search._defaults import DEFAULT_RUN_ROOT
from caetune.search._experiment import stored_experiment, write_experiment
from caetune.search._lock import hold_run
from caetune.search._objective import Objective
from caetune.search._ray_setup import (
    check_ray_address,
    check_resources,
    connect_ray,
    quiet_ray,
    quiet_tune_environment,
)
from caetune.search._settings import (
    SearchSettings,
    check_name,
    check_study_url,
    default_name,
    display_url,
    resolve_settings,
    space_of,
)
from caetune.search._space import SearchSpace
from caetune.search._summary import print_summary, write_run_report
from caetune.search._tracking import check_tracking, tracking_callbacks

# Trials per Tuner.fit. Tune keeps every trial of a fit in the driver until the fit returns (Trial
# objects, their state, checkpoint bookkeeping, even with the results dropped), so a search runs as
# a series of fits sharing the searcher, ASHA and the recorder, and the driver grows with a fit, not
# with the whole search. Each fit costs a few seconds (new trial actors) and lets its last trials
# finish before the next one starts. Measured by benchmarks/driver_memory.py (figures in README.md).
TRIALS_PER_FIT = 100


@dataclass
class SearchOutcome:
    """What a finished (or interrupted) search left behind."""

    run: str
    name: str
    results: Any  # pandas.DataFrame, one row per trial
    confirm: Any = None  # pandas.DataFrame ranking, or None
    report: str | None = None
    interrupted: bool = False


def run_search(
    settings: SearchSettings,
    *,
    stream: TextIO | None = None,
    out: TextIO | None = None,
    callbacks: list | None = None,
) -> SearchOutcome:
    """Runs (or resumes) a search; see the module docstring.

    Args:
        settings: The validated settings.
        stream: Progress lines (default stderr).
        out: The final summary (default stdout).
        callbacks: Extra Ray Tune callbacks (for tests and tools).

    Raises:
        InputError: Bad input, before anything is written.
    """
    from caetune._storage import parse_storage
    from caetune._study import StudySync
    from caetune.search._results import RunFiles

    stream = stream or sys.stderr
    out = out or sys.stdout
    storage = parse_storage(settings.run_root or DEFAULT_RUN_ROOT, field="--run-root")
    name = settings.name or default_name(settings)
    check_name(name, field="--name")
    storage.check_reachable()
    files = RunFiles(storage.child(name))
    stored = stored_experiment(files)
    if settings.resume and stored is None:
        raise InputError("--resume", f"no run named {name!r} in {storage.url}")
    values = resolve_settings(settings, stored)
    space = space_of(values, stored)
    objective = Objective(values["objective"], values["utilisation_weight"])
    sync = StudySync(storage, name)
    check_study_url(values["study_storage"])
    study_url = values["study_storage"] or sync.url

    check_ray_address(settings.address)
    check_tracking(settings.log, files=files, mlflow_uri=settings.mlflow_uri)
    data = _load_data(space)
    # Before Ray starts: a second search on this run stops here, having started and written nothing.
    with hold_run(
        files,
        sync.local_path.parent,
        name=name,
        study_url=values["study_storage"],
        break_lease=settings.break_lease,
        stream=stream,
    ):
        owns_ray = connect_ray(settings.address)
        try:
            check_resources(values, strict=owns_ray, stream=stream)
            session = _Session(
                name,
                settings,
                values,
                space,
                objective,
                files,
                sync,
                study_url,
                data,
                stored,
                stream,
                out,
            )
            return session.run(callbacks or [])
        finally:
            if owns_ray:
                import ray

                ray.shutdown()


@dataclass
class _Session:
    """One session of a search, its inputs validated; :meth:`run` writes and runs."""

    name: str
    settings: SearchSettings
    values: dict[str, Any]
    space: SearchSpace
    objective: Objective
    files: Any  # RunFiles
    sync: Any  # caetune._study.StudySync
    study_url: str
    data: Any  # ImageData
    stored: dict | None
    stream: TextIO
    out: TextIO

    @property
    def cpus(self) -> float:
        return float(self.values["cpus_per_trial"])

    @property
    def gpus(self) -> float:
        return float(self.values["gpus_per_trial"])

    @property
    def asha(self) -> AshaSettings:
        return AshaSettings(
            grace_period=self.values["grace_period"],
            reduction_factor=self.values["reduction_factor"],
            max_t=self.space.max_epochs(),
        )

    def run(self, callbacks: list) -> SearchOutcome:
        import ray

        from caetune.search._confirm import run_confirm
        from caetune.search._lean import make_lean
        from caetune.search._results import ResultsTable, trial_dir
        from caetune.search._searcher import StudySearcher, TrialFactory, resumable_trials
        from caetune.search._trainable import data_payload

        values, files = self.values, self.files
        study = self._open_study()
        factory = TrialFactory(
            space=self.space,
            objective=self.objective,
            seed=values["seed"],
            device=self.settings.device or ("cuda" if self.gpus > 0 else "cpu"),
            threads=max(1, int(self.cpus)),
            util_images=values["util_images"],
            report_all=bool(self.settings.log),  # the trackers log only what Tune is told
        )
        fs = files.fs()

        def saved_model_of(trial_id: str):
            return _checkpoint_if_exists(fs, files.path(trial_dir(trial_id)), holding=TRIAL_MODEL)

        resumable = resumable_trials(
            study,
            checkpoint_of=lambda rel: _checkpoint_if_exists(fs, files.path(rel)),
            saved_model_of=saved_model_of,
        )
        searcher = StudySearcher(
            study,
            factory,
            num_samples=values["num_samples"],
            resumable=resumable,
            saved_model_of=saved_model_of,
        )
        table = ResultsTable(files, self.space.params)
        table.load()
        data_ref = ray.put(
            data_payload(self.data)
        )  # once; every trial and confirmation run maps it
        self._announce(study, searcher, resumable)

        interrupted = False
        if searcher.pending():
            self._tune(study, searcher, table, data_ref, callbacks)
            interrupted = _unfinished(study, values["num_samples"])
        if self.objective.multi:
            _mark_pareto(study, table)
        table.write()
        if interrupted:
            flag = f" --run-root {self.settings.run_root}" if self.settings.run_root else ""
            print(
                f"interrupted: continue with  caetune search --resume {self.name}{flag}",
                file=self.stream,
            )
            return SearchOutcome(files.url, self.name, table.frame(), interrupted=True)
        if not self.settings.keep_all_state:
            lean = make_lean(
                study,
                files,
                results=table.frame(),
                top_k=values["top_k"],
                pareto=self.objective.multi,
                rungs=self.asha.rungs(),
                reduction_factor=values["reduction_factor"],
                n_epochs_dist=self.space.distributions().get("n_epochs"),
                on_study_change=self.sync.push,
            )
            for line in lean.lines():
                print(line, file=self.stream)

        ranking = None
        if values["confirm_seeds"] > 0:
            ranking = run_confirm(
                files=files,
                table=table,
                factory=factory,
                data_ref=data_ref,
                seeds=[values["seed"] + k for k in range(1, values["confirm_seeds"] + 1)],
                top_k=values["top_k"],
                pareto=self.objective.multi,
                resources={"num_cpus": self.cpus, "num_gpus": self.gpus},
                stream=self.stream,
            )
        report = (
            write_run_report(files, values["top_k"], self.stream) if self.settings.report else None
        )
        print_summary(self.out, files, table, ranking, self.space, values, self.study_url, report)
        return SearchOutcome(files.url, self.name, table.frame(), ranking, report)

    def _open_study(self):
        from caetune.search._searcher import default_startup_trials, open_study

        quiet_tune_environment()
        self.sync.pull()
        study = open_study(
            self.study_url,
            name=self.name,
            objective=self.objective,
            seed=self.values["seed"],
            n_startup_trials=default_startup_trials(self.values["num_samples"]),
            start_points=self.space.start if self.values["start_point"] else (),
            n_epochs_of=self.space.n_epochs,
            rungs=self.asha.rungs(),
            reduction_factor=self.values["reduction_factor"],
        )
        write_experiment(
            self.files,
            name=self.name,
            values=self.values,
            space=self.space,
            objective=self.objective,
            asha=self.asha,
            study_url=self.study_url,
            data=self.data,
            stored=self.stored,
        )
        self.sync.push()
        return study

    def _announce(self, study, searcher, resumable) -> None:
        from caetune.search._searcher import started_trials

        data, space, stream = self.data, self.space, self.stream
        print(
            f"search {self.name}: space {space.name} on {data.name} ({len(data.train)} train / "
            f"{len(data.val)} val images), {self.objective.formula}; "
            f"{self.values['num_samples']} trials, Ne <= {space.max_epochs()}",
            file=stream,
        )
        print(
            f"  run folder {self.files.url}  (study {display_url(self.study_url)})",
            file=stream,
            flush=True,
        )
        started = started_trials(study)
        if started:
            print(
                f"  resuming: {started - len(resumable)} trials finished, "
                f"{len(resumable)} to continue",
                file=stream,
            )

    def _tune(self, study, searcher, table, data_ref, callbacks: list) -> None:
        """Runs the pending trials with Ray Tune until the study holds them all or a stop."""
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        from caetune.search._recorder import Recorder, RecordingASHA
        from caetune.search._searcher import started_trials
        from caetune.search._signals import StopSignals
        from caetune.search._trainable import train_trial

        values = self.values
        scheduler = self.asha.scheduler(metric=self.objective.scheduler_metric, cls=RecordingASHA)
        pending = searcher.pending()
        recorder = Recorder(
            study=study,
            objective=self.objective,
            files=self.files,
            table=table,
            scheduler=scheduler,
            searcher=searcher,
            total=started_trials(study) + pending - len(searcher.resumable),
            on_study_change=self.sync.push,
            stream=self.stream,
        )
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data=data_ref, factory=searcher.factory),
            {"cpu": self.cpus, "gpu": self.gpus},
        )
        keep_aws_keys_from_trials()  # Ray logs a trial's runtime env
        tracking = tracking_callbacks(
            self.settings.log,
            files=self.files,
            name=self.name,
            mlflow_uri=self.settings.mlflow_uri,
        )
        signals = StopSignals()
        with signals, quiet_ray():
            # One Tuner.fit per TRIALS_PER_FIT trials: Tune keeps a fit's trials until it returns.
            while not signals.received:
                searcher.begin_fit(max_trials=TRIALS_PER_FIT)
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=searcher,
                        scheduler=scheduler,
                        # No count: a trial whose final checkpoint is damaged runs again, so the
                        # searcher ends the fit (Searcher.FINISHED) once nothing is left to run.
                        num_samples=-1,
                        max_concurrent_trials=values["max_concurrent"],
                        reuse_actors=True,
                        # caetune's trial_id, then Ray's (a tune_id, new each session).
                        trial_dirname_creator=lambda trial: (
                            f"{trial.config['trial_id']}-{trial.trial_id}"
                        ),
                    ),
                    run_config=tune.RunConfig(
                        name="tune",
                        storage_path=self.files.path(),
                        storage_filesystem=self.files.fs(),
                        # The trackers before the recorder: they see each result and end before
                        # it acts on them (it later drops Tune's copy of an ended trial's results).
                        callbacks=[signals, *tracking, recorder, JsonLoggerCallback(), *callbacks],
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                        failure_config=tune.FailureConfig(max_failures=values["max_failures"]),
                        verbose=0,
                    ),
                )
                tuner.fit()
                signals.between_fits()
                # Not told FINISHED: stopped early (Ctrl-C, a callback's stop); the study says
                # what is left.
                if not searcher.finished or not searcher.pending():
                    break
        self.sync.push()


def _checkpoint_if_exists(fs, fs_path: str, *, holding: str | None = None):
    """The checkpoint in folder ``fs_path``; ``None`` when it or its file ``holding`` is gone."""
    from ray.tune import Checkpoint

    if fs.get_file_info(fs_path).type.name != "Directory":
        return None  # gone: the trial starts over
    if holding and fs.get_file_info(f"{fs_path}/{holding}").type.name != "File":
        return None
    return Checkpoint(fs_path, filesystem=fs)


def _unfinished(study, num_samples: int) -> bool:
    import optuna

    from caetune.search._searcher import started_trials

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return bool(running) or started_trials(study) < num_samples


def _mark_pareto(study, table) -> None:
    from caetune.search._attrs import TRIAL_ATTR

    front = {t.user_attrs.get(TRIAL_ATTR) for t in study.best_trials}
    for trial_id in table.rows:
        table.update(trial_id, pareto=trial_id in front)


# -- data ---------------------------------------------------------------------------


def _load_data(space: SearchSpace):
    from caetune.models import TrainConfig
    from caetune.models._data import load_data

    return load_data(TrainConfig.from_dict(dict(space.fixed), source=f"space {space.name}"))
