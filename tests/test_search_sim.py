"""benchmarks/search_sim.py: the simulated search on a made-up grid whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[1] / "benchmarks" / "search_sim.py"


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("search_sim", SIM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid() -> dict:
    """Objective falls with Ne for every config; (160, 16) is best, and only after epoch 6."""
    configs = []
    for n_neurons in (40, 160):
        for n_maps in (8, 16):
            floor = 0.01 if (n_neurons, n_maps) == (160, 16) else 0.03
            configs.append(
                {
                    "n_neurons": n_neurons,
                    "n_maps": n_maps,
                    "objective": [floor + 0.1 / e for e in range(1, 9)],
                }
            )
    best = min(v for c in configs for v in c["objective"])
    return {"configs": configs, "best": {"objective": best}}


@pytest.mark.parametrize(("explore", "promote"), [(True, True), (True, False), (False, False)])
def test_a_simulated_search_counts_the_epochs_to_its_first_hit(sim, explore, promote):
    run = sim.simulate(
        grid(), 0, num_samples=60, explore=explore, promote=promote, grace=1, rf=3.0, concurrency=2
    )
    # Within 5% of the best (0.0225) needs (160, 16) at Ne = 8: at least 8 of the grid's 32 epochs
    # (a search
    # may spend more than the grid: a proposal below a finished trial's epochs trains from scratch).
    assert run["reached"] and run["ratio"] >= 8 / 32, run


def test_a_search_too_short_to_find_it_counts_everything(sim):
    run = sim.simulate(
        grid(), 0, num_samples=1, explore=True, promote=True, grace=1, rf=3.0, concurrency=1
    )
    assert run == {"reached": False, "ratio": 1.0}
