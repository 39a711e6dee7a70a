"""``caetune train`` end to end on the vendored MNIST digits, and its bad-input contract."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from caetune.cli import main

SMALL = [
    "--dataset",
    "mnist-10k",
    "--subset",
    "400",
    "--n-neurons",
    "40",
    "--n-maps",
    "4",
    "--batch-size",
    "64",
]


def test_train_writes_three_files_and_a_falling_curve(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--n-epochs", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "model.pt"]
    metrics = json.loads((out / "metrics.json").read_text())
    val = [m["val_mse"] for m in metrics["history"]]
    assert len(val) == 3 and val[-1] < val[0]
    assert metrics["val_mse"] == val[-1]
    assert f"val_mse {val[-1]:.6f}" in capsys.readouterr().out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["n_neurons"], config["n_maps"], config["n_epochs"]) == (40, 4, 3)


def test_config_file_with_flag_override_and_resume(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "dataset: mnist-10k\nsubset: 300\nn_neurons: 20\nn_maps: 2\nn_epochs: 1\nbatch_size: 64\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 0
    assert (
        main(["train", "--config", str(path), "--n-epochs", "2", "--resume", "--out", str(out)])
        == 0
    )
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [m["epoch"] for m in history] == [1, 2]  # epoch 1 was not trained again


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "caetune.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset", "imagenet"], "dataset"),
        (["--n-neurons", "-5"], "n_neurons"),
        (["--n-neurons", "many"], "--n-neurons"),
        (["--config", "missing.yaml"], "config"),
        (["--config", "bad.yaml"], "not valid YAML"),
        (["--dataset", "npz:nothing-here.npz"], "nothing-here.npz"),
        (["--out", "blocker/run"], "--out"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    (tmp_path / "bad.yaml").write_text("n_neurons: [1, 2\n")
    (tmp_path / "blocker").write_text("a file where a folder would go")
    before = sorted(os.listdir(tmp_path))
    result = run_cli("train", *SMALL[2:], *args, "--n-epochs", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's read-only /sys")
def test_unwritable_out(tmp_path):
    result = run_cli("train", *SMALL, "--out", "/sys/caetune-run", cwd=tmp_path)
    assert result.returncode == 2
    assert "--out" in result.stderr and "cannot write" in result.stderr
