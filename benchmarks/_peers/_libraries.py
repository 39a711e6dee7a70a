"""The methods whose library runs its own loop: Ray Tune's Tuner and Syne Tune's simulator.

Ray Tune: a function trainable reads the table instead of training (a seed
drawn per trial, as a real run would), reports every epoch and sleeps 0;
a Stopper ends the search at the budget. Its trials run in real time, so
every epoch costs its loop the same (the ``--equal-epochs`` time model,
whatever the table's seconds), and their simulated wall-clock is their list
schedule on W workers in the order Ray started them
(:func:`~._loop.wallclock`). Syne Tune simulates time
itself: its SimulatorBackend over a user blackbox, each epoch costing its
table seconds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._peers._loop import FAILED_VALUE, wallclock


def _trainable(config: dict[str, Any], *, table, rep: int, checkpoints: bool) -> None:
    from ray import tune

    index = table.index(config)
    epoch, seed = 0, None
    checkpoint = tune.get_checkpoint()  # a paused (HyperBand) trial resumes where it was
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / "state.json").read_text())
        epoch, seed = state["epoch"], state["seed"]
    if seed is None:
        trial = tune.get_context().get_trial_id()
        seed = table.draw_seed(index, np.random.default_rng([rep, zlib.crc32(trial.encode())]))
    while epoch < table.n_epochs:
        epoch += 1
        value = float(table.values[index, seed, epoch - 1])
        result = {
            "objective": value if math.isfinite(value) else FAILED_VALUE,
            "epoch": epoch,
            "config_index": index,
            "seed": seed,
        }
        if not checkpoints:
            tune.report(result)
            continue
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch, "seed": seed}))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def run_ray(table, seed: int, *, method: str, budget: int, workers: int) -> np.ndarray:
    """``ray-optuna-asha`` or ``ray-bohb`` for one rep: ``[n, 3]`` events as :func:`simulate`."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, HyperBandForBOHB
    from ray.tune.search.bohb import TuneBOHB
    from ray.tune.search.optuna import OptunaSearch

    from benchmarks._peers._asktell import config_space

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    results: list[tuple[str, int, int, int]] = []  # (trial, config, seed, epoch), as they came

    class Record(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            results.append(
                (trial.trial_id, result["config_index"], result["seed"], result["epoch"])
            )

    class Budget(tune.Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return len(results) >= budget

    if method == "ray-optuna-asha":
        import optuna

        space = {a: tune.choice(v) for a, v in table.values_of_axis.items()}
        search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
        scheduler: Any = ASHAScheduler(
            time_attr="epoch", max_t=table.n_epochs, grace_period=1, reduction_factor=3
        )
    else:
        space = None  # TuneBOHB takes the ConfigSpace itself
        search = TuneBOHB(
            space=config_space(table, seed, ordinal=False),
            metric="objective",
            mode="min",
            seed=seed,
        )
        scheduler = HyperBandForBOHB(time_attr="epoch", max_t=table.n_epochs, reduction_factor=3)
    trainable = tune.with_parameters(
        _trainable, table=table, rep=seed, checkpoints=method == "ray-bohb"
    )
    with tempfile.TemporaryDirectory(prefix="peers-ray-") as storage:
        tune.Tuner(
            tune.with_resources(trainable, {"cpu": 0.01}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="objective",
                mode="min",
                search_alg=search,
                scheduler=scheduler,
                num_samples=10 * budget,
                max_concurrent_trials=workers,
                reuse_actors=True,  # speed only: a lookup needs no fresh process per trial
            ),
            run_config=tune.RunConfig(
                stop=Budget(), callbacks=[Record()], storage_path=storage, verbose=0
            ),
        ).fit()
    return _ray_events(results, table, workers=workers)


def _ray_events(results, table, *, workers: int) -> np.ndarray:
    trials: dict[str, list[tuple[int, int, int]]] = {}
    for trial, config, seed, epoch in results:  # dicts keep the order trials started in
        trials.setdefault(trial, []).append((config, seed, epoch))
    times = iter(wallclock(list(trials.values()), table, workers=workers))
    at = {(t, e[2]): next(times) for t, epochs in trials.items() for e in epochs}
    return np.array(
        [(n, at[(t, e)], table.true[c, e - 1]) for n, (t, c, _, e) in enumerate(results, 1)],
        dtype=float,
    ).reshape(-1, 3)


def run_syne(table, seed: int, *, method: str, budget: int, workers: int) -> np.ndarray:
    """Syne Tune's ``syne-asha`` or ``syne-bohb`` on its simulator backend for one rep."""
    import pandas as pd
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.config_space import choice, randint
    from syne_tune.optimizer.baselines import ASHA, BOHB

    configs = table.space_product()
    index = [table.index(c) for c in configs]
    values = np.minimum(np.nan_to_num(table.values[index], posinf=FAILED_VALUE), FAILED_VALUE)
    elapsed = np.cumsum(table.seconds[index], axis=2)
    blackbox = BlackboxTabular(
        hyperparameters=pd.DataFrame(configs),
        configuration_space={a: choice(v) for a, v in table.values_of_axis.items()},
        fidelity_space={"epoch": randint(1, table.n_epochs)},
        objectives_evaluations=np.stack([values, elapsed], axis=-1),
        objectives_names=["objective", "elapsed_time"],
    )
    np.random.seed(seed)  # the backend draws each trial's seed from NumPy's global generator
    backend = UserBlackboxBackend(blackbox=blackbox, elapsed_time_attr="elapsed_time")
    kind = {"syne-asha": ASHA, "syne-bohb": BOHB}[method]
    scheduler = kind(
        config_space=dict(blackbox.configuration_space),
        metric="objective",
        time_attr="epoch",
        max_t=table.n_epochs,
        do_minimize=True,
        random_seed=seed,
        grace_period=1,
        reduction_factor=3,
    )
    events: list[tuple[int, float, float]] = []

    class Record(SimulatorCallback):
        def on_trial_result(self, trial, status, result, decision):
            super().on_trial_result(trial, status, result, decision)
            config = table.index({a: trial.config[a] for a in table.axes})
            true = table.true[config, int(result["epoch"]) - 1]
            events.append((len(events) + 1, backend.time_keeper.time(), true))

    logging.getLogger("syne_tune").setLevel(logging.WARNING)  # a table every few results
    with tempfile.TemporaryDirectory(prefix="peers-syne-") as folder:
        os.environ["SYNETUNE_FOLDER"] = folder  # where its Tuner writes its results
        Tuner(
            trial_backend=backend,
            scheduler=scheduler,
            n_workers=workers,
            sleep_time=0,
            stop_criterion=StoppingCriterion(max_num_evaluations=budget),
            callbacks=[Record()],
            results_update_interval=1e9,
            print_update_interval=1e9,
            save_tuner=False,
            tuner_name="peers",
            trial_backend_path=folder,
            metadata={},
            suffix_tuner_name=True,
        ).run()
    return np.array(events, dtype=float).reshape(-1, 3)
