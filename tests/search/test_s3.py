"""``caetune search --run-root s3://bucket/prefix`` against a real S3 API (moto's server on
127.0.0.1).

A search writes the whole run layout to the bucket and nothing beside it;
``--resume`` on another machine (a fresh cache folder) continues from what
S3 holds, without running a finished trial again; the credentials end up in
no object and no cached file.
"""

from __future__ import annotations

import uuid

import pytest

from caetune._runs import TRIAL_MODEL, TRIAL_MODEL_DROPPED
from caetune._storage import parse_storage, read_bytes
from tests._helpers import (
    FINISHED,
    dropped_models,
    results,
    run_search_cli,
    search_env,
    study_trials,
    trial_metrics,
    write_space,
)
from tests.s3server import s3_bucket, s3_env, s3_server  # noqa: F401  (fixtures)

LAYOUT = ("experiment.yaml", "results.csv", "results.parquet", "study.db")
TRIAL_FILES = ("config.yaml", "metrics.json")  # and model.pt, unless the lean folder dropped it


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_search_on_s3_then_resume_elsewhere(s3_bucket, s3_env, tmp_path):
    secret = f"not-a-real-secret-{uuid.uuid4().hex}"
    base = {**s3_env.subprocess_env(), "AWS_SECRET_ACCESS_KEY": secret}  # moto takes any key
    url = f"s3://{s3_bucket}/team/runs"
    run = parse_storage(url).child("exp")
    space = write_space(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    first_machine = search_env(tmp_path / "a", base)
    flags = [
        "--space",
        str(space),
        "--run-root",
        url,
        "--name",
        "exp",
        "--max-concurrent",
        "2",
        "--seed",
        "1",
    ]

    run_search_cli([*flags, "--num-samples", "3"], first_machine, work)

    keys = s3_env.keys(s3_bucket)
    files = {k for k in keys if not k.endswith("/")}
    first_study = tmp_path / "first-from-s3.db"
    first_study.write_bytes(read_bytes(run, "study.db"))
    dropped = dropped_models(first_study)
    expected = {f"team/runs/exp/{name}" for name in LAYOUT} | {
        f"team/runs/exp/trials/t{i:04d}/{name}" for i in range(3) for name in TRIAL_FILES
    }
    expected |= {
        f"team/runs/exp/trials/{tid}/{TRIAL_MODEL_DROPPED if tid in dropped else TRIAL_MODEL}"
        for tid in (f"t{i:04d}" for i in range(3))
    }
    assert expected <= files, sorted(expected - files)
    assert all(k.startswith("team/runs/exp/") for k in files), files  # beside folder markers
    assert list(work.iterdir()) == []  # nothing written beside the bucket
    table = results(run)
    assert sorted(table["trial_id"]) == ["t0000", "t0001", "t0002"]
    assert set(table["status"]) <= set(FINISHED)
    before = {tid: trial_metrics(run, tid) for tid in table["trial_id"]}
    # Studies are cached locally under the bucket and prefix.
    assert (tmp_path / "a/cache/caetune" / s3_bucket / "team/runs/exp/study.db").is_file()

    # Another machine: an empty cache, so the study must come from S3.
    second_machine = search_env(tmp_path / "b", base)
    done = run_search_cli(
        ["--run-root", url, "--resume", "exp", "--num-samples", "5"], second_machine, work
    )
    assert "resuming: 3 trials finished" in done.stderr

    table = results(run)
    assert sorted(table["trial_id"]) == [f"t{i:04d}" for i in range(5)]
    assert set(table["status"]) <= set(FINISHED), table[["trial_id", "status", "error"]]
    for tid, metrics in before.items():
        assert trial_metrics(run, tid) == metrics, f"{tid} was re-run after the resume"
    study = tmp_path / "from-s3.db"
    study.write_bytes(read_bytes(run, "study.db"))
    states = [t["state"] for t in study_trials(study)]
    assert len(states) == 5 and "RUNNING" not in states, states

    # The secret key is in no object and no cached file.
    client = s3_env.client()
    for key in s3_env.keys(s3_bucket):
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert secret.encode() not in body, key
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
