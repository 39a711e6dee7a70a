"""``caetune search`` on the command line: bad input is one line, exit 2, and nothing written.

Most cases run in-process through ``caetune.cli.main``; the Ray address and
S3 cases run in a subprocess, where no Ray is up yet and the environment
(AWS_ENDPOINT_URL) is the test's own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import yaml

from caetune.cli import main

TINY = {
    "fixed": {"dataset": "mnist-10k", "subset": 300, "image_size": 12},
    "params": {"n_neurons": {"low": 4, "high": 16, "log": True}, "n_epochs": {"low": 1, "high": 2}},
}


def closed_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write(path: Path, doc) -> str:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def run_cli(args, capsys):
    code = main(["search", *args])
    captured = capsys.readouterr()
    return code, captured.err


BAD_SPACES = {
    "unknown field": {"params": {"n_nurons": [8]}},
    "empty range": {"params": {"n_neurons": {"low": 64, "high": 8}}},
    "nn below 1": {"params": {"n_neurons": {"low": 0, "high": 8}}},
    "malformed": "params: {n_neurons: [8\n",
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_files(tmp_path, capsys, case):
    space = write(tmp_path / "space.yaml", BAD_SPACES[case])
    storage = tmp_path / "runs"
    code, err = run_cli(["--space", space, "--run-root", str(storage)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("caetune search: error: ")
    assert not storage.exists()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--space", "paper-mnsit"], "unknown preset 'paper-mnsit'"),
        (["--num-samples", "0"], "--num-samples: expected an integer >= 1"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial: expected a number >= 0"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial: expected a number > 0"),
        (["--max-epochs", "0"], "--max-epochs"),
        (["--utilisation-weight", "-0.5"], "--utilisation-weight"),
        (["--confirm-seeds", "-1"], "--confirm-seeds"),
        (["--name", "../escape"], "--name"),
        (["--resume", "nothing-here"], "--resume: no run named 'nothing-here'"),
        (["--run-root", "ftp://host/runs"], "--run-root"),
        (["--dataset", "npz:/does/not/exist.npz"], "dataset"),
    ],
)
def test_bad_flags(tmp_path, capsys, args, match):
    storage = tmp_path / "runs"
    if "--run-root" not in args:
        args = [*args, "--run-root", str(storage)]
    if "--space" not in args:
        args = [*args, "--space", write(tmp_path / "tiny.yaml", TINY)]
    code, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and match in err
    assert not storage.exists()


def test_bad_argparse_values_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "--objective", "mae"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def subprocess_search(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # no cluster but the test's
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "caetune.cli", "search", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_unreachable_ray_address(tmp_path):
    storage = tmp_path / "runs"
    space = write(tmp_path / "tiny.yaml", TINY)
    port = closed_port()
    done = subprocess_search(
        ["--space", space, "--run-root", str(storage), "--address", f"127.0.0.1:{port}"],
        {},
        tmp_path,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "caetune search: error: --address: cannot reach a Ray cluster at "
        f"127.0.0.1:{port}: Connection refused"
    ]
    assert not storage.exists()


def test_unreachable_ray_address_from_the_environment(tmp_path):
    storage = tmp_path / "runs"
    space = write(tmp_path / "tiny.yaml", TINY)
    done = subprocess_search(
        ["--space", space, "--run-root", str(storage)],
        {"RAY_ADDRESS": f"127.0.0.1:{closed_port()}"},
        tmp_path,
    )
    assert done.returncode == 2 and "RAY_ADDRESS: cannot reach a Ray cluster" in done.stderr
    assert not storage.exists()


def test_more_gpus_than_the_local_ray_has(tmp_path):
    storage = tmp_path / "runs"
    space = write(tmp_path / "tiny.yaml", TINY)
    done = subprocess_search(
        ["--space", space, "--run-root", str(storage), "--gpus-per-trial", "64"],
        {"CUDA_VISIBLE_DEVICES": ""},
        tmp_path,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "caetune search: error: --gpus-per-trial: a trial needs 64 GPU, the Ray cluster has 0"
    ]
    assert not storage.exists()


def test_a_cluster_left_on_the_machine_is_not_joined(tmp_path):
    # `ray start` and ray.cluster_utils.Cluster record their cluster in RAY_TMPDIR/ray; a bare
    # ray.init() joins it, even once it is gone. A search given no cluster starts its own: here it
    # reaches the GPU check of its own local Ray instead of failing to join a closed port.
    ray_tmp = Path(tempfile.mkdtemp(prefix="cts", dir="/tmp"))  # Ray's socket paths stay short
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{closed_port()}")
    space = write(tmp_path / "tiny.yaml", TINY)
    try:
        done = subprocess_search(
            ["--space", space, "--run-root", str(tmp_path / "runs"), "--gpus-per-trial", "64"],
            {"CUDA_VISIBLE_DEVICES": "", "RAY_TMPDIR": str(ray_tmp)},
            tmp_path,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 2, done.stderr
    assert "a trial needs 64 GPU, the Ray cluster has 0" in done.stderr, done.stderr


def test_unreachable_s3_storage(tmp_path):
    space = write(tmp_path / "tiny.yaml", TINY)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    done = subprocess_search(
        ["--space", space, "--run-root", "s3://caetune-test/runs"], env, tmp_path
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "caetune search: error: --run-root: cannot reach s3://caetune-test"
    )
    assert not (tmp_path / "cache").exists()


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--space",
        "--num-samples",
        "--max-epochs",
        "--gpus-per-trial",
        "--run-root",
        "--address",
        "--resume",
        "--objective",
        "--utilisation-weight",
        "--confirm-seeds",
        "--study-storage",
    ):
        assert flag in text
    assert "--storage " not in text  # the old name of --run-root works, but is not offered


def test_the_old_storage_flag_still_works_and_says_so(tmp_path, capsys):
    storage = tmp_path / "runs"
    space = write(tmp_path / "tiny.yaml", TINY)
    code, err = run_cli(["--space", space, "--storage", str(storage), "--resume", "x"], capsys)
    assert code == 2
    assert err.splitlines() == [
        "caetune search: warning: --storage is deprecated; use --run-root",
        f"caetune search: error: --resume: no run named 'x' in {storage}",
    ]
    assert not storage.exists()


def test_storage_and_run_root_disagreeing_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    code, err = run_cli(["--run-root", str(a), "--storage", str(b)], capsys)
    assert code == 2
    assert err.splitlines() == [
        "caetune search: error: --storage: the old name of --run-root: give only --run-root"
    ]
    assert not a.exists() and not b.exists()


def test_search_settings_take_the_old_name_with_a_warning():
    from caetune.search import SearchSettings

    with pytest.warns(DeprecationWarning, match="run_root"):
        settings = SearchSettings(storage="elsewhere")
    assert settings.run_root == "elsewhere" and settings.storage is None


def test_a_run_written_with_the_old_key_resumes():
    from caetune.search import SearchSettings
    from caetune.search._defaults import DEFAULTS
    from caetune.search._settings import resolve_settings

    # experiment.yaml has never stored the run root, but an older one with a key of that name
    # (or any other key caetune no longer knows) still resolves.
    stored = {"name": "old", "settings": {**DEFAULTS, "storage": "runs", "seed": 5}}
    values = resolve_settings(SearchSettings(run_root="runs", name="old"), stored)
    assert values["seed"] == 5 and "storage" not in values and "run_root" not in values


def test_every_flag_reaches_its_setting(monkeypatch):
    import caetune.search._run
    from caetune.search import SearchSettings

    seen = []

    def run_search(settings, **_):
        seen.append(settings)
        return types.SimpleNamespace(interrupted=False)

    monkeypatch.setattr(caetune.search._run, "run_search", run_search)
    flags = (
        "--space paper-mnist --dataset mnist-10k --subset 500 --max-epochs 3 --objective mse "
        "--utilisation-weight 0.3 --seed 4 --no-start-point --num-samples 5 --max-concurrent 3 "
        "--cpus-per-trial 2 --gpus-per-trial 0.5 --grace-period 2 --reduction-factor 2.5 "
        "--max-failures 1 --util-images 64 --confirm-seeds 0 --top-k 2 --run-root /tmp/rr "
        "--study-storage sqlite:///x.db --address auto --resume nm --no-report --keep-all-state"
    )
    assert main(["search", *flags.split()]) == 0
    assert seen == [
        SearchSettings(
            space="paper-mnist",
            dataset="mnist-10k",
            subset=500,
            max_epochs=3,
            objective="mse",
            utilisation_weight=0.3,
            seed=4,
            start_point=False,
            num_samples=5,
            max_concurrent=3,
            cpus_per_trial=2.0,
            gpus_per_trial=0.5,
            grace_period=2,
            reduction_factor=2.5,
            max_failures=1,
            util_images=64,
            confirm_seeds=0,
            top_k=2,
            run_root="/tmp/rr",
            study_storage="sqlite:///x.db",
            address="auto",
            name="nm",
            resume=True,
            report=False,
            keep_all_state=True,
        )
    ]
    assert main(["search"]) == 0 and seen[1] == SearchSettings()
