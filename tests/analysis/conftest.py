"""A tiny finished search run, laid out as ``caetune._runs`` says, for the report tests.

The run is real, only small: three CAEs trained for three epochs on 300
images of ``mnist-10k``, their checkpoints, configs and metrics, a real
Optuna SQLite study holding the same trials, plus a pruned, a failed and a
still-running row, as a search that is still going would leave them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

# (trial_id, status, model, n_neurons, n_maps); only complete trials are trained.
TRIALS = (
    ("t0000", "complete", "model1", 32, 4),
    ("t0001", "complete", "model1", 8, 2),
    ("t0002", "complete", "model2", 16, 4),
    ("t0003", "pruned", "model1", 8, 4),
    ("t0004", "failed", "model2", 8, 2),
    ("t0005", "running", "model1", 16, 2),
)
N_EPOCHS = 3  # the least that still gives the exponential fit three points
WEIGHT = 0.5


def make_run(folder: Path, *, objective: str = "combined") -> Path:
    """Trains the trials of :data:`TRIALS` and writes a run into ``folder`` (its name is the
    run's).
    """
    from caetune.analysis import combined_objective, model_utilisation
    from caetune.models import TrainConfig, Trainer, load_data

    folder.mkdir(parents=True)
    data = None
    rows = []
    for trial_id, status, model, n_neurons, n_maps in TRIALS:
        params = {"model": model, "n_neurons": n_neurons, "n_maps": n_maps}
        row = {
            "trial_id": trial_id,
            "status": status,
            "error": None,
            **params,
            "n_epochs": N_EPOCHS,
        }
        if status == "failed":
            row["error"] = "TrainingDiverged: training loss became nan in epoch 2"
        if status == "complete":
            config = TrainConfig(
                dataset="mnist-10k",
                subset=300,
                n_epochs=N_EPOCHS,
                batch_size=64,
                device="cpu",
                **params,
            )
            data = data or load_data(config)
            trainer = Trainer(config, data)
            history = trainer.fit()
            util = model_utilisation(trainer.model, data.val, n_images=64)
            val_mse = history[-1].val_mse
            row.update(
                val_mse=val_mse,
                best_val_mse=min(m.val_mse for m in history),
                objective=combined_objective(val_mse, util, weight=WEIGHT),
                epochs_run=N_EPOCHS,
                seconds=sum(m.train_seconds for m in history),
                **util,
            )
            trial_dir = folder / "trials" / trial_id
            trial_dir.mkdir(parents=True)
            trainer.save_checkpoint(trial_dir / "model.pt")
            (trial_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
            (trial_dir / "metrics.json").write_text(
                json.dumps({**row, "history": [m.to_dict() for m in history]}), encoding="utf-8"
            )
        rows.append(row)
    return write_tables(folder, rows, objective=objective)


def write_tables(folder: Path, rows: list[dict], *, objective: str) -> Path:
    """results.csv/.parquet, experiment.yaml and a real Optuna study.db for ``rows``, as the search
    writes them.
    """
    import optuna
    import pandas as pd

    multi = objective == "pareto"
    (folder / "study.db").unlink(missing_ok=True)
    study = optuna.create_study(
        study_name=folder.name,
        storage=f"sqlite:///{folder / 'study.db'}",
        directions=["minimize", "maximize"] if multi else ["minimize"],
    )
    distributions = {
        "model": optuna.distributions.CategoricalDistribution(["model1", "model2"]),
        "n_neurons": optuna.distributions.IntDistribution(8, 64, log=True),
        "n_maps": optuna.distributions.IntDistribution(2, 8),
    }
    frame = pd.DataFrame(rows)
    if multi:  # two objectives: no scalar objective column value
        frame["objective"] = None
    for row in frame[frame["status"] == "complete"].to_dict("records"):
        params = {k: row[k] for k in distributions}
        values = [row["val_mse"], row["utilisation"]] if multi else [row["objective"]]
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, values=values)
        )
    frame.to_csv(folder / "results.csv", index=False)
    frame.to_parquet(folder / "results.parquet", index=False)
    from caetune.search._objective import Objective  # the writer's own record of its objective

    experiment = {
        "name": folder.name,
        "objective": Objective(kind=objective, weight=WEIGHT).to_dict(),
        "dataset": {"name": "mnist-10k"},
        "study": {"name": folder.name},
    }
    (folder / "experiment.yaml").write_text(
        yaml.safe_dump(experiment, sort_keys=False), encoding="utf-8"
    )
    return folder


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A run with the combined objective; read-only: copy it (``run_copy``) before changing it."""
    return make_run(tmp_path_factory.mktemp("runs") / "tiny-run")


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`finished_run`, free to change."""
    return Path(shutil.copytree(finished_run, tmp_path / finished_run.name))


@pytest.fixture
def pareto_run(finished_run: Path, tmp_path: Path) -> Path:
    """The same trials as :func:`finished_run`, searched with two objectives (val_mse, U)."""
    import pandas as pd

    folder = Path(shutil.copytree(finished_run, tmp_path / "pareto-run"))
    rows = pd.read_csv(folder / "results.csv", dtype={"trial_id": str}).to_dict("records")
    return write_tables(folder, rows, objective="pareto")
