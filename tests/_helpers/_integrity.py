"""What every fault test ends with: :func:`check_integrity` of the run the fault hurt.

Every finished trial's result row (its ``layer3_*``/``layer4_*`` metrics
included), files and Optuna record are intact and agree, and no trial
finished before the fault ran again after it. A trial whose ``model.pt`` the
lean run folder dropped (the study records it) has a note in its place.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caetune._runs import (
    TRIAL_CONFIG,
    TRIAL_METRICS,
    TRIAL_MODEL,
    TRIAL_MODEL_DROPPED,
    TRIALS_DIR,
)
from caetune._storage import Storage, exists, read_bytes
from tests._helpers._search import (
    FINISHED,
    STUDY_STATE,
    dropped_models,
    results,
    study_trials,
    trial_metrics,
)


def check_integrity(
    run: Storage, db: Path, *, num_samples: int, before: dict[str, bytes] | None = None
) -> None:
    """Asserts the run is whole: results == study == ``num_samples`` trials, files load, as before.

    Args:
        run: The run folder.
        db: The local Optuna SQLite file of the run.
        num_samples: Trials the search was asked for.
        before: ``metrics.json`` of trials finished before a fault; each must
            be byte-identical now (a re-run trial rewrites it: new timings).
    """
    from caetune.analysis import model_utilisation
    from caetune.models import TrainConfig, Trainer
    from caetune.models._data import load_data

    table = results(run)
    ids = table["trial_id"].tolist()
    assert len(ids) == len(set(ids)), f"a trial id appears twice in results.csv: {sorted(ids)}"
    assert sorted(ids) == [f"t{i:04d}" for i in range(num_samples)], ids
    assert set(table["status"]) <= set(FINISHED), table[["trial_id", "status", "error"]]

    study = study_trials(db)
    assert [t["number"] for t in study] == list(range(num_samples)), study
    rows = table.set_index("trial_id")
    for trial in study:
        status = rows.loc[f"t{trial['number']:04d}", "status"]
        assert trial["state"] == STUDY_STATE[status], (trial, status)
        assert trial["checkpoint"] is None, (
            f"finished trial {trial['number']} still points at a checkpoint"
        )

    dropped = dropped_models(db)
    data = None
    util_images = int(_yaml(read_bytes(run, "experiment.yaml"))["settings"]["util_images"])
    layer_columns = sorted(c for c in rows.columns if c.startswith(("layer3_", "layer4_")))
    for tid, row in rows.iterrows():
        folder = f"{TRIALS_DIR}/{tid}"
        metrics = json.loads(read_bytes(run, f"{folder}/{TRIAL_METRICS}"))
        assert metrics["trial_id"] == tid and metrics["status"] == row["status"]
        if row["status"] == "failed":
            assert isinstance(row["error"], str) and row["error"], f"{tid} failed without a reason"
            continue
        assert len(metrics["history"]) == metrics["epochs_run"] == row["epochs_run"]
        config = TrainConfig.from_dict(_yaml(read_bytes(run, f"{folder}/{TRIAL_CONFIG}")))
        if tid in dropped:
            assert not exists(run, f"{folder}/{TRIAL_MODEL}"), f"{tid}'s dropped model is there"
            assert exists(run, f"{folder}/{TRIAL_MODEL_DROPPED}"), tid
            continue
        data = data or load_data(config)  # every trial of a search trains on the same images
        trainer = Trainer(config, data)
        model = (
            run.local_path / folder / TRIAL_MODEL
            if run.local_path is not None
            else _local_copy(run, folder)
        )
        trainer.load_checkpoint(model)
        assert trainer.epoch == row["epochs_run"], tid
        assert trainer.evaluate() == pytest.approx(row["val_mse"], rel=1e-5), tid
        # Every layer metric of the results row is the one of the trial's final model.
        util = model_utilisation(trainer.model, trainer.x_val, n_images=util_images)
        layers = {k: v for k, v in util.items() if k.startswith(("layer3_", "layer4_"))}
        assert sorted(layers) == layer_columns, (tid, sorted(layers), layer_columns)
        expected = [layers[k] for k in layer_columns]
        assert row[layer_columns].astype(float).tolist() == pytest.approx(expected, rel=1e-5), tid

    for tid, metrics in (before or {}).items():
        assert trial_metrics(run, tid) == metrics, (
            f"{tid} finished before the fault and was written again after it"
        )


def _yaml(data: bytes) -> dict:
    import yaml

    return yaml.safe_load(data.decode("utf-8"))


def _local_copy(run: Storage, folder: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="caetune-fault-")) / TRIAL_MODEL
    path.write_bytes(read_bytes(run, f"{folder}/{TRIAL_MODEL}"))
    return path
