"""The notebooks users start from, executed as a user runs them, on the tiny budget.

Each notebook runs top to bottom in its own Jupyter kernel on this
interpreter (the project's virtual environment), from the notebooks folder,
with ``CAETUNE_NB_BUDGET=tiny`` and ``CAETUNE_NB_RUNS`` pointing at a
temporary folder; their searches start their own local Ray. The checks read
what the notebooks printed and the files they wrote. ``03_explore_run``
explores the run ``01_quickstart`` leaves, so the two share one execution of
the quick start.

The committed notebooks carry no outputs (they are executed here, not in git).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from caetune._export import RTOL_SAME_MACHINE

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_other_datasets.ipynb", "03_explore_run.ipynb")
KERNEL = "caetune-tests"
CELL_TIMEOUT_S = 420  # the search cells; each takes about a minute on a busy 2-core machine
# Where 02_other_datasets looks for a JPEG copy of CIFAR-10, relative to the notebooks folder.
CIFAR10_JPEG = [
    NOTEBOOKS / "../shared/data/cifar10-test-jpeg",
    NOTEBOOKS / "../../shared/data/cifar10-test-jpeg",
]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel spec for this interpreter, and the folder the notebooks write to.

    The spec is private to these tests, so a user-wide ``python3`` kernel of
    another environment cannot stand in for the project's.
    """
    root = tmp_path_factory.mktemp("notebooks")
    runs, empty = root / "runs", root / "empty-data-dir"
    empty.mkdir()
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    env = {
        "CAETUNE_NB_BUDGET": "tiny",
        "CAETUNE_NB_RUNS": str(runs),
        "CAETUNE_DATA_DIR": str(
            empty
        ),  # Caltech-101 from the notebook's generated copy, whatever this machine has
        "CAETUNE_NB_RUN": "",
        "CAETUNE_NB_CIFAR10": "",
    }
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python", "env": env})
    )
    return {"dirs": [str(root / "kernels")], "runs": runs}


def execute(name: str, kernel: dict) -> nbformat.NotebookNode:
    """Runs a notebook from the notebooks folder; raises on the first cell that fails."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    manager = AsyncKernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel["dirs"])
    )
    before = sorted(NOTEBOOKS.rglob("*"))
    NotebookClient(
        nb, km=manager, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    assert sorted(NOTEBOOKS.rglob("*")) == before, f"{name} wrote into the notebooks folder"
    return nb


def printed(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook printed on stdout, cell after cell."""
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.get("name") == "stdout"
    )


def n_images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


@pytest.fixture(scope="module")
def quickstart(kernel):
    return execute("01_quickstart.ipynb", kernel)


def test_committed_notebooks_have_no_outputs():
    found = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert set(NAMES) <= {path.name for path in found}
    for path in found:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name}: cell {cell.get('id')} has outputs"
                )


@pytest.mark.slow
def test_quickstart_searches_reports_exports_and_retrains(quickstart, kernel):
    run = kernel["runs"] / "quickstart-tiny"
    results = pd.read_csv(run / "results.csv", dtype={"trial_id": str})
    assert len(results) == 3 and (results["status"] == "complete").any(), results.to_string()
    assert (run / "confirm.csv").is_file() and (run / "report" / "index.html").is_file()
    assert (
        n_images(quickstart) >= 3
    )  # the summary, the best trial's reconstructions, the loaded model's

    manifest = json.loads((kernel["runs"] / "quickstart-tiny-export" / "manifest.json").read_text())
    best = manifest["trials"][0]
    row = results.set_index("trial_id").loc[best["trial_id"]]
    text = printed(quickstart)
    exported, retrained, difference = re.search(
        r"exported val_mse (\S+), retrained val_mse (\S+), relative difference (\S+)", text
    ).groups()
    # The notebook retrains the exported config on one thread, as the search did: the same val_mse.
    assert float(exported) == pytest.approx(row["val_mse"], rel=1e-5)
    assert float(difference) <= RTOL_SAME_MACHINE, text
    # The three-line load gives the exported trial's CAE.
    assert f"{row['n_neurons']} neurons, {row['n_maps']} maps" in text
    assert f"layer4 (8, {row['n_neurons']})" in text


@pytest.mark.slow
def test_other_datasets_run_cifar10_and_caltech101(kernel):
    nb = execute("02_other_datasets.ipynb", kernel)
    text = printed(nb)
    jpeg = any(folder.is_dir() for folder in CIFAR10_JPEG)
    assert (
        "(the CIFAR-10 JPEG copy)" if jpeg else "(generated images (no CIFAR-10 found))"
    ) in text
    assert "(a generated tiny copy (no Caltech-101 found))" in text
    for name, shape in (("cifar10", (3, 32, 32)), ("caltech101", (3, 64, 64))):
        run = kernel["runs"] / f"{name}-tiny"
        experiment = yaml.safe_load((run / "experiment.yaml").read_text())
        assert (experiment["dataset"]["channels"], *experiment["dataset"]["image_size"]) == shape
        assert experiment["dataset"]["train"] + experiment["dataset"]["val"] == 300
        results = pd.read_csv(run / "results.csv")
        assert len(results) == 2 and (results["status"] == "complete").any(), results.to_string()
        assert (kernel["runs"] / f"{name}-tiny-export" / "manifest.json").is_file()
        assert f"input {shape}" in text
    if jpeg:
        assert (
            "cifar10-test-jpeg"
            in yaml.safe_load((kernel["runs"] / "cifar10-tiny" / "experiment.yaml").read_text())[
                "dataset"
            ]["name"]
        )
    assert n_images(nb) >= 2  # one reconstruction figure per dataset


@pytest.mark.slow
def test_explore_run_reads_the_quickstart_run(quickstart, kernel):
    nb = execute("03_explore_run.ipynb", kernel)
    text = printed(nb)
    results = pd.read_csv(
        kernel["runs"] / "quickstart-tiny" / "results.csv", dtype={"trial_id": str}
    )
    done = results[results["status"] == "complete"]
    assert f"{len(results)} trials, directions ['MINIMIZE']" in text
    # The lowest MSE is never beaten on MSE, so that trial is on the MSE-utilisation front.
    front = text.split("Pareto front of the finished trials", 1)[1]
    assert done.loc[done["val_mse"].idxmin(), "trial_id"] in front
    for trial_id in results["trial_id"]:
        assert trial_id in text
    assert n_images(nb) >= 4  # MSE vs Nn, optimisation history, intermediate values, the front
