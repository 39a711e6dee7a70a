"""The CIFAR-10 and Caltech-101 presets end to end, on tiny format-true fixtures.

``caetune search --space cifar10|caltech101`` reads each dataset in its real
on-disk layout (``tests/fixtures.py``), runs a tiny budget, and its best trial
is exported and loaded back as a CAE for the preset's image size.

The presets' start points are the paper's large models (CIFAR-10: Nm=256,
Nn=2560, about 300 M weights), far too big for a test machine, so these runs
skip them (``--no-start-point``) and take the sampler's first two draws from
the presets' ranges instead. ``--seed 21`` makes those draws small models
(under 0.5 M weights each, for both presets, with the search's TPE sampler);
seed 0's reach 150 M weights, 1.7 GB checkpoints at 64x64.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from caetune.models import load_dataset, to_float_images
from caetune.search import export_run, load_exported
from tests._helpers import search_command
from tests.fixtures import make_caltech101, make_cifar10

REPO = Path(__file__).resolve().parents[2]
SEED = "21"  # small first draws; see the module docstring
PRESETS = {
    # preset: (fixture writer, images it writes, (C, H, W) the preset trains on)
    "cifar10": (lambda root: make_cifar10(root, per_batch=6), 30, (3, 32, 32)),
    "caltech101": (
        lambda root: make_caltech101(root, counts={"accordion": 12, "airplanes": 12}),
        24,
        (3, 64, 64),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_search_end_to_end(tmp_path, preset):
    write, n_images, shape = PRESETS[preset]
    data_dir = tmp_path / "data"
    write(data_dir)
    env = {**os.environ, "CAETUNE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    command = search_command(
        "--space", preset, "--dataset", preset, "--subset", str(n_images), "--max-epochs", "1",
        "--num-samples", "2", "--no-start-point", "--seed", SEED,
        "--run-root", str(tmp_path / "runs"), "--name", preset,
    )  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "runs" / preset
    results = pd.read_csv(run / "results.csv", dtype={"trial_id": str})
    assert len(results) == 2 and (results["status"] == "complete").any(), results.to_string()
    experiment = yaml.safe_load((run / "experiment.yaml").read_text())
    assert experiment["dataset"]["channels"] == shape[0]
    assert tuple(experiment["dataset"]["image_size"]) == shape[1:]
    # The search saw the fixture's images, split as the preset says.
    assert experiment["dataset"]["train"] + experiment["dataset"]["val"] == n_images

    export_run(run, top=1, to=tmp_path / "export")
    model = load_exported(tmp_path / "export")
    assert (model.shape.in_channels, *model.shape.image_size) == shape
    data = load_dataset(
        preset, data_dir=data_dir, image_size=shape[1], grayscale=False, subset=n_images
    )
    with torch.no_grad():
        recon, acts = model(to_float_images(data.val, torch.device("cpu")))
    assert (
        recon.shape == (len(data.val), *shape) and acts["layer4"].shape[1] == model.shape.n_neurons
    )
