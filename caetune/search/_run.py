"""``run_search``: one search from settings to results, resumable.

The order matters:

1. Validate everything that can be checked without writing: the settings,
   the space, the storage (reachable), the name, an existing run's settings,
   the Ray cluster (reachable), the dataset (loads). Bad input here is an
   :class:`~caetune.InputError` and nothing has been written.
2. Take the run's lock (before Ray starts: a second search on the run stops
   there), join or start Ray, open (or create) the Optuna study, write
   ``experiment.yaml``.
3. Run the trials (Ray Tune + the study's searcher + ASHA + the recorder),
   in a series of ``Tuner.fit`` calls of at most :data:`TRIALS_PER_FIT`.
4. Confirm the top configs with extra seeds, write the report, print the
   summary.

A run is ``STORAGE/NAME``. Running the same command again, or
``--resume NAME``, continues it: settings not given are taken from its
``experiment.yaml``, and settings that define the search (the space, the
dataset, the objective, the seed ...) must not change. Finished trials are
never run again; cut-off ones continue from their last checkpoint;
``--num-samples`` may grow to extend a search.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from caetune._errors import InputError
from caetune._runs import EXPERIMENT_FILE, RESULTS_CSV, STUDY_FILE, TRIAL_MODEL
from caetune.search._defaults import DEFAULT_SPACE, DEFAULT_STORAGE, DEFAULTS, DEFINITION
from caetune.search._objective import OBJECTIVES, Objective
from caetune.search._space import SearchSpace, load_space, space_from_dict

LOCK_FILE = ".lock"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # used with fullmatch: no trailing newline
MAX_SEED = 2**31 - 1
ADDRESS_TIMEOUT_S = 5.0
# Trials per Tuner.fit. Tune keeps every trial of a fit in the driver until the fit returns (Trial
# objects, their state JSON, checkpoint bookkeeping: ~21 KiB of heap each even with the results dropped),
# so a search runs as a series of fits sharing the searcher, ASHA and the recorder. Over 1200 one-epoch
# trials the driver grew 24.9 KiB per trial so, 72.1 as one fit (benchmarks/driver_memory.py). Each fit
# costs 3-4 s (new trial actors) and lets its last trials finish before the next one starts.
TRIALS_PER_FIT = 100


@dataclass
class SearchSettings:
    """Everything ``caetune search`` takes; ``None`` means "the run's value, else the default".

    Attributes:
        space: A preset name or a space YAML file.
        dataset: Overrides the space's dataset.
        subset: Use only this many images of the dataset.
        max_epochs: Caps Ne (``n_epochs``) and ASHA's ``max_t``.
        objective: ``mse``, ``combined`` or ``pareto``.
        utilisation_weight: The combined objective's weight (0: pure MSE).
        seed: Seeds Optuna's sampler and every trial's training.
        start_point: Evaluate the space's start points (the paper's choice) first.
        grace_period: ASHA's first rung, in epochs.
        reduction_factor: ASHA's reduction factor.
        util_images: Validation images the utilisation is computed on.
        study_storage: An Optuna RDB URL; default SQLite in the run folder.
        num_samples: Trials in the study at the end.
        max_concurrent: At most this many trials at once (default: as resources allow).
        cpus_per_trial: CPUs per trial (also torch's thread count).
        gpus_per_trial: GPUs per trial, fractional to share one (> 0 trains on CUDA).
        device: Where trials train, ``cpu`` or ``cuda``; default ``cuda`` when
            ``gpus_per_trial`` > 0, else ``cpu``. ``cpu`` with GPUs per trial on
            a Ray told it has GPUs (``ray.init(num_gpus=...)``) packs trials as
            on a GPU machine without one (``benchmarks/gpu_packing.py``).
        max_failures: Ray retries of a trial whose worker or node died.
        confirm_seeds: Extra seeds for the top configs (0: no confirmation).
        top_k: How many configs to confirm and show.
        name: The run's name (default: the space's name).
        storage: A local folder or ``s3://bucket/prefix`` (default ``runs``).
        address: A Ray cluster to join (default: ``RAY_ADDRESS`` or a local one).
        resume: The run must exist (``--resume NAME``).
        report: Write the analysis report at the end.
    """

    space: str | None = None
    dataset: str | None = None
    subset: int | None = None
    max_epochs: int | None = None
    objective: str | None = None
    utilisation_weight: float | None = None
    seed: int | None = None
    start_point: bool | None = None
    grace_period: int | None = None
    reduction_factor: float | None = None
    util_images: int | None = None
    study_storage: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    device: str | None = None
    max_failures: int | None = None
    confirm_seeds: int | None = None
    top_k: int | None = None
    name: str | None = None
    storage: str | None = None
    address: str | None = None
    resume: bool = False
    report: bool = True

    def __post_init__(self) -> None:
        for field, low in (
            ("num_samples", 1),
            ("max_epochs", 1),
            ("max_concurrent", 1),
            ("grace_period", 1),
            ("util_images", 1),
            ("top_k", 1),
            ("subset", 2),
            ("seed", 0),
            ("max_failures", 0),
            ("confirm_seeds", 0),
        ):
            _check_int(field, getattr(self, field), low)
        for field, low, strict in (
            ("cpus_per_trial", 0.0, True),
            ("gpus_per_trial", 0.0, False),
            ("utilisation_weight", 0.0, False),
            ("reduction_factor", 1.0, True),
        ):
            _check_number(field, getattr(self, field), low, strict)
        if self.device not in (None, "cpu", "cuda"):
            raise InputError("device", f"expected cpu or cuda, got {self.device!r}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise InputError(
                "--objective", f"expected one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.seed is not None and self.seed > MAX_SEED:
            # Optuna's sampler takes a 32-bit seed, and confirmation adds to it.
            raise InputError(
                "--seed", f"expected an integer between 0 and {MAX_SEED}, got {self.seed}"
            )
        if self.name is not None:
            _check_name(self.name, field="--name")


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
    from caetune._storage import StudySync, parse_storage
    from caetune.search._results import RunFiles

    stream = stream or sys.stderr
    out = out or sys.stdout
    storage = parse_storage(settings.storage or DEFAULT_STORAGE)
    name = settings.name or _default_name(settings)
    _check_name(name, field="--name")
    storage.check_reachable()
    files = RunFiles(storage.child(name))
    stored = _read_experiment(files)
    if settings.resume and stored is None:
        raise InputError("--resume", f"no run named {name!r} in {storage.url}")
    values = _resolve(settings, stored)
    space = _space_of(values, stored)
    objective = Objective(values["objective"], values["utilisation_weight"])
    sync = StudySync(storage, name)
    _check_study_url(values["study_storage"])
    study_url = values["study_storage"] or sync.url

    _check_ray_address(settings.address)
    data = _load_data(space)
    # Before Ray starts: a second search on this run stops here, having started and written nothing.
    with _RunLock(files, sync.local_path.parent):
        owns_ray = _connect_ray(settings.address)
        try:
            _check_resources(values, strict=owns_ray, stream=stream)
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
    sync: Any  # caetune._storage.StudySync
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

    def run(self, callbacks: list) -> SearchOutcome:
        import ray

        from caetune.search._confirm import run_confirm
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
            flag = f" --storage {self.settings.storage}" if self.settings.storage else ""
            print(
                f"interrupted: continue with  caetune search --resume {self.name}{flag}",
                file=self.stream,
            )
            return SearchOutcome(files.url, self.name, table.frame(), interrupted=True)

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
            _write_report(files, values["top_k"], self.stream) if self.settings.report else None
        )
        _print_summary(self.out, files, table, ranking, self.space, values, self.study_url, report)
        return SearchOutcome(files.url, self.name, table.frame(), ranking, report)

    def _open_study(self):
        from caetune.search._explore import asha_rungs
        from caetune.search._searcher import default_startup_trials, open_study

        _quiet_tune_environment()
        self.sync.pull()
        study = open_study(
            self.study_url,
            name=self.name,
            objective=self.objective,
            seed=self.values["seed"],
            n_startup_trials=default_startup_trials(self.values["num_samples"]),
            start_points=self.space.start if self.values["start_point"] else (),
            n_epochs_of=self.space.n_epochs,
            rungs=asha_rungs(
                grace_period=self.values["grace_period"],
                reduction_factor=self.values["reduction_factor"],
                max_t=self.space.max_epochs(),
            ),
            reduction_factor=self.values["reduction_factor"],
        )
        _write_experiment(
            self.files,
            self.name,
            self.values,
            self.space,
            self.objective,
            self.study_url,
            self.data,
            self.stored,
        )
        self.sync.push()
        return study

    def _announce(self, study, searcher, resumable) -> None:
        from caetune.search._searcher import started_trials

        data, space, stream = self.data, self.space, self.stream
        print(
            f"search {self.name}: space {space.name} on {data.name} ({len(data.train)} train / {len(data.val)} val "
            f"images), {self.objective.formula}; {self.values['num_samples']} trials, Ne <= {space.max_epochs()}",
            file=stream,
        )
        print(
            f"  run folder {self.files.url}  (study {_display_url(self.study_url)})",
            file=stream,
            flush=True,
        )
        started = started_trials(study)
        if started:
            print(
                f"  resuming: {started - len(resumable)} trials finished, {len(resumable)} to continue",
                file=stream,
            )

    def _tune(self, study, searcher, table, data_ref, callbacks: list) -> None:
        """Runs the pending trials with Ray Tune until the study holds them all (or an interruption)."""
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        from caetune.search._recorder import Recorder, RecordingASHA
        from caetune.search._searcher import started_trials
        from caetune.search._signals import StopSignals
        from caetune.search._trainable import train_trial

        values, max_t = self.values, self.space.max_epochs()
        scheduler = RecordingASHA(
            time_attr="epoch",
            metric=self.objective.scheduler_metric,
            mode="min",
            max_t=max_t,
            grace_period=min(values["grace_period"], max_t),
            reduction_factor=values["reduction_factor"],
        )
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
        _keep_credentials_out_of_ray()
        signals = StopSignals()
        with signals, _quiet_ray():
            # One Tuner.fit per TRIALS_PER_FIT trials: Tune keeps every trial of a fit until it returns.
            while not signals.received:
                searcher.begin_fit(max_trials=TRIALS_PER_FIT)
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=searcher,
                        scheduler=scheduler,
                        # No count: a trial whose final checkpoint is damaged runs again, so the searcher
                        # ends the fit (Searcher.FINISHED) once nothing is left to run or run again.
                        num_samples=-1,
                        max_concurrent_trials=values["max_concurrent"],
                        reuse_actors=True,
                        trial_dirname_creator=lambda trial: (
                            f"{trial.config['trial_id']}-{trial.trial_id}"
                        ),
                    ),
                    run_config=tune.RunConfig(
                        name="tune",
                        storage_path=self.files.path(),
                        storage_filesystem=self.files.fs(),
                        callbacks=[signals, recorder, JsonLoggerCallback(), *callbacks],
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                        failure_config=tune.FailureConfig(max_failures=values["max_failures"]),
                        verbose=0,
                    ),
                )
                tuner.fit()
                signals.between_fits()
                # Not told FINISHED: stopped early (Ctrl-C, or a callback's stop); the study says what is left.
                if not searcher.finished or not searcher.pending():
                    break
        self.sync.push()


# -- settings ------------------------------------------------------------------


def _check_name(name: str, *, field: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            field,
            f"a run name of letters, digits, '.', '_' and '-' (one folder name), got {name!r}",
        )


def _check_study_url(url: str | None) -> None:
    """An Optuna RDB URL must parse and name an installed driver, before Ray starts or a folder is made."""
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise InputError(
            "--study-storage",
            f"an RDB URL such as sqlite:///study.db or postgresql://host/db ({err})",
        ) from None
    except ImportError as err:
        raise InputError(
            "--study-storage", f"the database driver is not installed ({err})"
        ) from None


def _default_name(settings: SearchSettings) -> str:
    spec = settings.space or DEFAULT_SPACE
    return load_space(spec).name


def _resolve(settings: SearchSettings, stored: dict | None) -> dict[str, Any]:
    """Each setting: as given, else as the run had it, else the default; definitions must agree.

    The study URL is stored without its password (:func:`_display_url`), so it
    is compared in that form, and a run whose stored URL lost a password needs
    ``--study-storage`` again.
    """
    before = (stored or {}).get("settings", {})
    values, changed = {}, []
    for key, default in DEFAULTS.items():
        given = getattr(settings, key)
        seen = _display_url(given) if key == "study_storage" and given is not None else given
        if (
            stored is not None
            and key in DEFINITION
            and given is not None
            and seen != _stored_form(key, before.get(key))
        ):
            changed.append(f"{key} {before.get(key)!r} -> {seen!r}")
        values[key] = (
            given
            if given is not None
            else before.get(key, default)
            if stored is not None
            else default
        )
    if changed:
        raise InputError(
            "--name",
            f"run {stored['name']!r} exists with other settings ({'; '.join(changed)}); "
            "resume it without them or choose another --name",
        )
    if (
        stored is not None
        and settings.study_storage is None
        and _hides_secret(values["study_storage"])
    ):
        raise InputError(
            "--study-storage",
            f"run {stored['name']!r} keeps its study at {values['study_storage']}, whose password caetune "
            "does not store; give --study-storage again",
        )
    return values


def _stored_form(key: str, value: Any) -> Any:
    """A setting as :func:`_write_experiment` stores it (runs written before the study URL was redacted too)."""
    return _display_url(value) if key == "study_storage" and value is not None else value


def _hides_secret(url: str | None) -> bool:
    """Whether ``url`` is a stored study URL whose credentials :func:`_display_url` replaced."""
    return url is not None and "://***@" in url


def _space_of(values: dict, stored: dict | None) -> SearchSpace:
    """The resolved space: the stored one on resume, else the preset/file with overrides and caps."""
    if stored is not None:
        return space_from_dict(
            stored["space"], name=stored["space_name"], source=stored["settings"]["space"]
        )
    space = load_space(values["space"])
    space = space.with_fixed(dataset=values["dataset"], subset=values["subset"])
    return space.capped(values["max_epochs"])


def _check_int(field: str, value: Any, low: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(
            "--" + field.replace("_", "-"), f"expected an integer >= {low}, got {value!r}"
        )


def _check_number(field: str, value: Any, low: float, strict: bool) -> None:
    if value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        relation = ">" if strict else ">="
        raise InputError(
            "--" + field.replace("_", "-"), f"expected a number {relation} {low:g}, got {value!r}"
        )


# -- the run folder --------------------------------------------------------------


def _read_experiment(files) -> dict | None:
    if not files.exists(EXPERIMENT_FILE):
        return None
    try:
        stored = yaml.safe_load(files.read_bytes(EXPERIMENT_FILE))
    except yaml.YAMLError:
        stored = None
    if not isinstance(stored, dict) or "settings" not in stored or "space" not in stored:
        raise InputError(
            "--name",
            f"{files.url} holds a {EXPERIMENT_FILE} caetune cannot read; choose another --name",
        )
    return stored


def _write_experiment(
    files, name, values, space: SearchSpace, objective: Objective, study_url, data, stored
) -> None:
    from caetune import __version__

    doc = {
        "name": name,
        "created": (stored or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "caetune": __version__,
        # Never the study URL's password: it would sit in every copy of the run folder.
        "settings": {k: _stored_form(k, values[k]) for k in DEFAULTS},
        "objective": objective.to_dict(),
        "space_name": space.name,
        "space": space.to_dict(),
        "dataset": {
            "name": data.name,
            "train": len(data.train),
            "val": len(data.val),
            "channels": data.channels,
            "image_size": list(data.image_size),
        },
        "study": {"storage": _display_url(study_url), "name": name},
        "asha": {
            "time_attr": "epoch",
            "metric": objective.scheduler_metric,
            "max_t": space.max_epochs(),
            "grace_period": min(values["grace_period"], space.max_epochs()),
            "reduction_factor": values["reduction_factor"],
        },
    }
    files.write_text(EXPERIMENT_FILE, yaml.safe_dump(doc, sort_keys=False))


class _RunLock:
    """One search per run at a time: an exclusive ``flock`` on a lock file, held while the search runs.

    Taking it is one atomic call, and the kernel releases it when its process
    ends, however it ends (a SIGKILLed driver included): a lock file left by a
    dead process is simply locked again, and of two processes racing for a run
    exactly one gets it. The file holds the owner's host and pid, for the one
    refused to name. It sits beside the local study file (the run folder for a
    local storage, the cache folder for S3); the folders it created go again
    when the search leaves them empty (bad input found after the lock leaves
    nothing behind).
    """

    OWNER_WAIT_S = 1.0  # the winner writes its pid right after locking; a loser may look in between

    def __init__(self, files, folder) -> None:
        self.files = files
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None
        self._made: list[Path] = []

    def __enter__(self) -> _RunLock:
        import fcntl

        while True:
            self._make_folders()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the owner before us removed the emptied folder meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                self._remove_made()
                raise InputError(
                    "--name", f"run {self.files.url} is in use by {owner}; wait for it or stop it"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(
                fd
            )  # locked a file its owner had just unlinked on its way out: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        # Unlinked before it is unlocked: whoever opened it meanwhile finds it gone and starts over.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        self._remove_made()

    def _owner(self, fd: int) -> str:
        deadline = time.monotonic() + self.OWNER_WAIT_S
        while True:
            owner = os.pread(fd, 300, 0).decode(errors="replace").split()
            if len(owner) == 2 and owner[1].isdigit():
                host, pid = owner
                if host != socket.gethostname():
                    return f"process {pid} on {host}"
                if _alive(
                    int(pid)
                ):  # a dead pid is the last owner's, not yet overwritten by the new one
                    return f"process {pid}"
            if time.monotonic() > deadline:
                return "another process"
            time.sleep(0.01)

    def _make_folders(self) -> None:
        missing = []
        folder = self.path.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # another search made it: not ours to remove
                continue
            self._made.insert(0, folder)  # deepest first, the order to remove them in

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:  # not empty (or not ours any more): it stays
                break
        self._made = []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _checkpoint_if_exists(fs, fs_path: str, *, holding: str | None = None):
    """A checkpoint of the folder ``fs_path``, or ``None`` when it (or the file ``holding`` in it) is gone."""
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
    front = {t.user_attrs.get("trial_id") for t in study.best_trials}
    for trial_id in table.rows:
        table.update(trial_id, pareto=trial_id in front)


# -- Ray, data, report ---------------------------------------------------------------


def _ray_target(address: str | None) -> tuple[str | None, str]:
    """The cluster to join (``--address``, else ``RAY_ADDRESS``, else none: a local Ray) and its flag."""
    if address:
        return address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def _check_ray_address(address: str | None) -> None:
    """Fails fast when the cluster to join does not answer (unless Ray is up in this process already)."""
    import ray

    target, field = _ray_target(address)
    if target and target != "auto" and not ray.is_initialized():
        _check_reachable(target, field)


def _connect_ray(address: str | None) -> bool:
    """Joins ``address`` (or ``RAY_ADDRESS``), else starts a local Ray; True when this call started it.

    A Ray already initialised in this process (a test's, a notebook's) is used as is.
    Ray's token authentication, where the cluster uses it, works as Ray documents it
    (``RAY_AUTH_TOKEN`` and friends in the environment).

    Raises:
        InputError: The cluster cannot be joined.
    """
    import ray

    if ray.is_initialized():
        return False
    target, field = _ray_target(address)
    if target is None:
        _local_ray_on_loopback()
    try:
        # Ray's warnings on the console would interleave with the progress lines; its logs keep them.
        ray.init(
            address=target,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
            runtime_env=_worker_runtime_env(),
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise InputError(
            field, f"cannot join the Ray cluster at {target}: {str(err).splitlines()[0]}"
        ) from None
    if target is None:
        _make_token_private()
    return True


def _worker_runtime_env() -> dict[str, Any]:
    """The environment of this search's Ray workers: glibc's allocator tuned from their start.

    A trial trains in a thread of its worker, where ``mallopt`` (what
    :func:`caetune.models.tune_allocator` calls) cannot keep glibc from
    unmapping the big gradient buffers after every step; ``GLIBC_TUNABLES``
    read at process start can. A value the user set is left alone.
    """
    from caetune.models import ALLOCATOR_TUNABLES

    if "GLIBC_TUNABLES" in os.environ or not sys.platform.startswith("linux"):
        return {}
    return {"env_vars": {"GLIBC_TUNABLES": ALLOCATOR_TUNABLES}}


def _local_ray_on_loopback() -> None:
    """A local Ray that caetune starts listens on 127.0.0.1 only, not on every interface.

    Ray's local-only mode (meant for laptops, where it avoids firewall prompts)
    uses the loopback address for the node, so GCS, raylet and agents bind
    there. The environment variable reaches the processes Ray starts; the
    constant covers this process, which imported Ray already.
    """
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _make_token_private() -> None:
    """Ray writes the token it generates for a new local cluster with the umask's mode (often 0644)."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.is_file():
        path.chmod(0o600)


def _keep_credentials_out_of_ray() -> None:
    """Stops Ray Tune from copying AWS keys into every trial's runtime env.

    Ray Tune propagates ``AWS_ACCESS_KEY_ID`` and friends from the driver into
    each trial actor's runtime env, and Ray's runtime-env agent logs runtime
    envs: the keys would land in the session logs. A local Ray's workers
    inherit the driver's environment anyway; cluster nodes use their instance
    profile (cluster.yaml).
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = {
        v for v in class_cache.ENV_VARS_TO_PROPAGATE if not v.startswith("AWS_")
    }


def _check_resources(values: dict, *, strict: bool, stream) -> None:
    """A trial must fit on the cluster, or Tune waits for it forever.

    On a local Ray (``strict``) that is bad input; a cluster that autoscales
    may still grow, so there it is a warning.
    """
    import ray

    have = ray.cluster_resources()
    for flag, key, need in (
        ("--cpus-per-trial", "CPU", float(values["cpus_per_trial"])),
        ("--gpus-per-trial", "GPU", float(values["gpus_per_trial"])),
    ):
        if need > have.get(key, 0.0):
            message = f"a trial needs {need:g} {key}, the Ray cluster has {have.get(key, 0.0):g}"
            if strict:
                raise InputError(flag, message)
            print(f"  warning: {flag}: {message} (waiting for the cluster to grow)", file=stream)


def _check_reachable(address: str, field: str) -> None:
    """A TCP connect to the cluster's host:port within a few seconds (ray.init itself waits far longer)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(field, f"expected host:port, ray://host:port or auto, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as err:
        raise InputError(
            field, f"cannot reach a Ray cluster at {hostport}: {err.strerror or err}"
        ) from None


def _load_data(space: SearchSpace):
    from caetune.models import TrainConfig
    from caetune.models._data import load_data

    return load_data(TrainConfig.from_dict(dict(space.fixed), source=f"space {space.name}"))


def _quiet_tune_environment() -> None:
    """Ray Tune settings read from the environment when the Tuner is built (driver only)."""
    # The recorder prints the progress; Tune's own tables and banners would drown it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpoints every epoch with num_to_keep=2 make Tune snapshot often; that is intended.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A failed trial's last result carries its reason but no metric (it has none to give).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Only the JSON logger (passed explicitly): no TensorBoard files per trial.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


class _quiet_ray:
    """Keeps Ray Tune's own console output to errors while trials run (the recorder prints progress)."""

    def __enter__(self):
        self.logger = logging.getLogger("ray.tune")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _write_report(files, top_k: int, stream) -> str | None:
    try:
        from caetune.analysis import write_report
    except ImportError:
        print("  report: skipped (caetune.analysis.write_report is not available)", file=stream)
        return None
    try:
        path = write_report(files.url, top=top_k)
    except InputError as err:  # e.g. no trial completed: the search itself still stands
        print(f"  report: skipped ({err})", file=stream)
        return None
    return str(path)


def _display_url(url: str) -> str:
    from caetune.search._searcher import _redact

    return _redact(url)


def _print_summary(out, files, table, ranking, space, values, study_url, report) -> None:
    counts = table.counts()
    params = list(space.params)
    print("", file=out)
    if ranking is not None and len(ranking):
        n = int(ranking["n_seeds"].max())
        print(f"Top configs, ranked by the mean over up to {n} seeds (mean ± sd):", file=out)
        for row in ranking.to_dict(orient="records"):
            described = "  ".join(f"{p}={_fmt(row[p])}" for p in params)
            print(
                f"  {row['rank']}. {row['trial_id']}  {described}\n"
                f"     objective {_pm(row['objective_mean'], row['objective_sd'])}  "
                f"val_mse {_pm(row['val_mse_mean'], row['val_mse_sd'])}  "
                f"U {_pm(row['utilisation_mean'], row['utilisation_sd'])}  seeds {row['seeds']}",
                file=out,
            )
    else:
        frame = table.frame()
        done = (
            frame[frame["status"] == "complete"].sort_values("objective") if len(frame) else frame
        )
        print("Top configs (one seed each):", file=out)
        for i, row in enumerate(done.head(values["top_k"]).to_dict(orient="records"), 1):
            described = "  ".join(f"{p}={_fmt(row[p])}" for p in params)
            print(
                f"  {i}. {row['trial_id']}  {described}  objective {_fmt(row['objective'])}",
                file=out,
            )
    frame = table.frame()
    if "pareto" in frame.columns:
        front = frame[frame["pareto"].fillna(False).astype(bool)].sort_values("val_mse")
        print("\nPareto front (min val_mse, max U), one seed each:", file=out)
        for row in front.to_dict(orient="records"):
            described = "  ".join(f"{p}={_fmt(row[p])}" for p in params)
            print(
                f"  {row['trial_id']}  val_mse {_fmt(row['val_mse'])}  U {_fmt(row['utilisation'])}  {described}",
                file=out,
            )
    print(
        f"\nTrials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed. Written:",
        file=out,
    )
    print(f"  {files.url}/{RESULTS_CSV} (and .parquet), trials/<id>/", file=out)
    if ranking is not None:
        print(f"  {files.url}/confirm.csv", file=out)
    print(
        f"  study: {_display_url(study_url)}  (optuna-dashboard {_display_url(study_url)})",
        file=out,
    )
    if files.storage.is_s3 and study_url.startswith("sqlite:"):
        print(f"         a copy at {files.url}/{STUDY_FILE}", file=out)
    if report:
        print(f"  report: {report}", file=out)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pm(mean: Any, sd: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.4g} ± {sd:.2g}"
