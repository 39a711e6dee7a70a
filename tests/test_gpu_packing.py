"""--gpus-per-trial packs trials onto a GPU: a real search on a local Ray with one declared GPU.

The search is benchmarks/gpu_packing.py's.

No GPU here: Ray is told it has one (``num_gpus=1``), and the trials train on
the CPU (``device="cpu"``), so Ray's scheduling of the GPU is what is tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_packing.py"


def test_a_quarter_gpu_per_trial_runs_four_trials_on_one_gpu(tmp_path):
    out = tmp_path / "packing.json"
    command = [
        sys.executable, str(SCRIPT), "--device", "cpu", "--declared-gpus", "1", "--num-cpus", "2",
        # Trials long enough (about 10 s, four on 2 CPUs) for all four to start before one ends.
        "--trials", "4", "--per-gpu", "1", "4", "--cpus-per-trial", "0.5",
        "--n-neurons", "640", "--n-maps", "16", "--n-epochs", "4", "--subset", "2000",
        "--util-images", "32", "--workdir", str(tmp_path / "work"), "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    one, four = json.loads(out.read_text())["runs"]
    assert (one["per_gpu"], one["gpus_per_trial"]) == (1, 1.0)
    assert (four["per_gpu"], four["gpus_per_trial"]) == (4, 0.25)
    assert one["complete"] == four["complete"] == 4
    # The CPUs (0.5 per trial) allow four at once in both: the GPU one whole, or four quarters.
    assert one["peak_in_flight"] == 1
    assert four["peak_in_flight"] == 4
    assert "| 4 | 0.25 | 4 |" in run.stdout


def test_cpu_training_needs_a_declared_gpu(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "--declared-gpus" in run.stderr


def test_a_device_other_than_cpu_or_cuda_is_refused():
    from caetune import InputError
    from caetune.search import SearchSettings

    with pytest.raises(InputError, match="device: expected cpu or cuda, got 'tpu'"):
        SearchSettings(device="tpu")
