"""Experiment tracking (``--log tensorboard``, ``--log mlflow``) and the study's metric names.

The logs of one small Pareto search (3 trials, Ne <= 2, 200 images) are read
back as their users read them: TensorBoard's ``EventAccumulator``, MLflow's
``MlflowClient``, and the study through optuna-dashboard's own HTTP API.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import yaml

from caetune import InputError
from caetune._storage import parse_storage
from caetune.cli import main
from caetune.search import SearchSettings, run_search
from caetune.search._objective import Objective
from caetune.search._results import RunFiles
from caetune.search._tracking import LOGGERS, MLFLOW_DB, check_log, check_tracking
from tests._helpers import run_search_cli, search_env, write_space
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

N_TRIALS = 3
SPACE = {
    "description": "tiny tracking space",
    "fixed": {"dataset": "mnist-10k", "subset": 200, "image_size": 12, "batch_size": 32},
    "params": {"n_neurons": {"low": 4, "high": 16, "log": True}, "n_epochs": {"low": 1, "high": 2}},
}
# What every trial logs per epoch (the search's per-epoch metrics, U among them).
EPOCH_METRICS = ("val_mse", "objective", "utilisation")


# -- settings and the command line -------------------------------------------------------


def test_check_log_takes_known_names_once_in_order():
    assert check_log(None) == ()
    assert check_log("mlflow") == ("mlflow",)
    assert check_log(["mlflow", "tensorboard", "mlflow"]) == ("mlflow", "tensorboard")
    assert SearchSettings(log=["tensorboard"]).log == ("tensorboard",)
    assert SearchSettings().log == ()


@pytest.mark.parametrize(
    "log, uri, field",
    [
        (("wandb",), None, "--log"),
        ((3,), None, "--log"),
        ((), "sqlite:///x.db", "--mlflow-uri"),  # a URI with no MLflow logger
        (("mlflow",), "", "--mlflow-uri"),
    ],
)
def test_bad_tracking_settings(log, uri, field):
    with pytest.raises(InputError) as err:
        SearchSettings(log=log, mlflow_uri=uri)
    assert err.value.field == field


def test_unknown_logger_is_one_line_naming_the_choices(tmp_path, capsys):
    root = tmp_path / "runs"
    code = main(["search", "--log", "tensorboard", "--log", "wandb", "--run-root", str(root)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("caetune search: error: ")
    assert "--log" in err and all(name in err for name in LOGGERS) and "wandb" in err
    assert not root.exists()


def test_mlflow_on_s3_needs_a_tracking_uri(tmp_path):
    s3 = RunFiles(parse_storage("s3://bucket/runs").child("r"))
    with pytest.raises(InputError) as err:
        check_tracking(("mlflow",), files=s3, mlflow_uri=None)
    assert err.value.field == "--mlflow-uri"
    assert check_tracking(("mlflow",), files=s3, mlflow_uri="http://mlflow:5000") == (
        "http://mlflow:5000"
    )
    assert check_tracking(("tensorboard",), files=s3, mlflow_uri=None) is None
    local = RunFiles(parse_storage(str(tmp_path)).child("r"))
    uri = check_tracking(("mlflow",), files=local, mlflow_uri=None)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'r' / Path(*MLFLOW_DB)}"


def test_metric_names_name_each_objective():
    assert Objective("pareto").metric_names == ["val_mse", "utilisation"]
    assert len(Objective("pareto").metric_names) == len(Objective("pareto").directions)
    assert Objective("combined").metric_names == ["objective"]


# -- one logged Pareto search, read back --------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(ray_local, tmp_path_factory):
    """A finished 3-trial Pareto search logged to TensorBoard and MLflow: (run folder, trials)."""
    folder = tmp_path_factory.mktemp("tracking")
    space = folder / "tiny.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    settings = SearchSettings(
        space=str(space),
        run_root=str(folder / "runs"),
        name="tracked",
        objective="pareto",
        num_samples=N_TRIALS,
        max_epochs=2,
        grace_period=2,  # no ASHA stop: every trial logs all its epochs
        confirm_seeds=0,
        util_images=16,
        report=False,
        log=("tensorboard", "mlflow"),
    )
    outcome = run_search(settings, stream=io.StringIO(), out=io.StringIO())
    run = Path(outcome.run)
    frame = outcome.results.reset_index()
    trials = {row["trial_id"]: int(row["epochs_run"]) for row in frame.to_dict("records")}
    return run, trials  # trial_id -> epochs run


def test_tensorboard_has_every_trial_per_epoch(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, trials = logged_run
    assert len(trials) == N_TRIALS
    folders = {}
    for events in (run / "tune").glob("*/events.out.tfevents.*"):
        folders.setdefault(events.parent.name.split("-")[0], events.parent)
    assert set(folders) == set(trials)
    for trial_id, folder in folders.items():
        acc = EventAccumulator(str(folder))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        for metric in EPOCH_METRICS:
            steps = [e.step for e in acc.Scalars(f"ray/tune/{metric}")]
            assert steps == list(range(1, trials[trial_id] + 1)), (trial_id, metric)
        assert any(t.startswith("ray/tune/layer3_") for t in tags)
        values = [e.value for e in acc.Scalars("ray/tune/val_mse")]
        assert all(math.isfinite(v) and v > 0 for v in values)


def test_tensorboard_has_each_trials_params(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run, trials = logged_run
    seen = {}
    for folder in (run / "tune").glob("*/"):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        for blob in content.values():
            data = plugin_data_pb2.HParamsPluginData.FromString(blob)
            if data.HasField("session_start_info"):
                hparams = data.session_start_info.hparams
                seen[hparams["trial_id"].string_value] = hparams
    assert set(seen) == set(trials)
    for hparams in seen.values():
        assert hparams["params/n_neurons"].number_value >= 4
        assert hparams["params/n_epochs"].number_value in (1, 2)


def test_mlflow_has_every_trial_per_epoch_with_params(logged_run):
    from mlflow.tracking import MlflowClient

    run, trials = logged_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run / Path(*MLFLOW_DB)}")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    by_trial = {r.data.params["trial_id"]: r for r in runs}
    assert set(by_trial) == set(trials) and len(runs) == N_TRIALS
    for trial_id, logged in by_trial.items():
        assert logged.info.status == "FINISHED"
        assert 4 <= int(logged.data.params["params/n_neurons"]) <= 16
        assert int(logged.data.params["n_epochs"]) == trials[trial_id]
        for metric in EPOCH_METRICS:
            history = client.get_metric_history(logged.info.run_id, metric)
            assert sorted(m.step for m in history) == list(range(1, trials[trial_id] + 1))
        assert any(k.startswith("layer4_") for k in logged.data.metrics)


def test_pareto_study_names_its_metrics_to_optuna_dashboard(logged_run):
    """optuna-dashboard's own WSGI app, asked as its web page asks: GET /api/studies/<id>."""
    from wsgiref.util import setup_testing_defaults

    import optuna
    from optuna_dashboard import wsgi

    run, _ = logged_run
    storage = optuna.storages.RDBStorage(f"sqlite:///{run / 'study.db'}")
    study_id = storage.get_study_id_from_name("tracked")
    app = wsgi(storage)

    def get(path: str):
        environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        setup_testing_defaults(environ)
        status = []
        body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:200])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tracked"]
    detail = get(f"/api/studies/{study_id}")
    assert detail["objective_names"] == ["val_mse", "utilisation"]  # the study's metric names
    assert len(detail["trials"]) == N_TRIALS


# -- a run on S3 --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tensorboard_logs_reach_s3_with_the_run(s3_bucket, s3_env, tmp_path):
    """Ray syncs each trial folder, its event files among them, to the run root."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    space = write_space(tmp_path, subset=200, epochs=(1, 2))
    work = tmp_path / "work"
    work.mkdir()
    flags = ["--space", str(space), "--run-root", f"s3://{s3_bucket}/runs", "--name", "tb"]
    env = search_env(tmp_path / "machine", s3_env.subprocess_env())
    run_search_cli([*flags, "--num-samples", "2", "--log", "tensorboard"], env, work)

    client = s3_env.client()
    by_trial: dict[str, list[str]] = {}
    for key in s3_env.keys(s3_bucket, "runs/tb/tune/"):
        if "/events.out.tfevents." in key:
            by_trial.setdefault(key.split("/")[3].split("-")[0], []).append(key)
    assert sorted(by_trial) == ["t0000", "t0001"]
    for trial_id, keys in by_trial.items():
        local = tmp_path / "events" / trial_id
        local.mkdir(parents=True)
        for key in keys:
            body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
            (local / key.rsplit("/", 1)[1]).write_bytes(body)
        acc = EventAccumulator(str(local))
        acc.Reload()
        assert [e.step for e in acc.Scalars("ray/tune/val_mse")][:1] == [1], trial_id
        assert "ray/tune/utilisation" in acc.Tags()["scalars"]
    assert list(work.iterdir()) == []  # nothing written beside the bucket
