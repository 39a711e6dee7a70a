"""benchmarks/peers.py on a tiny made-up table: every method runs, and the metric is right."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import build_table, peers
from benchmarks._peers._table import Table

EPOCHS = 6
# What each method needs beyond caetune's own dependencies (the `peers` extra, and dehb).
NEEDS = {
    "dehb": ("dehb",),
    "ray-bohb": ("hpbandster", "ConfigSpace"),
    "syne-asha": ("syne_tune", "huggingface_hub"),
    "syne-bohb": ("syne_tune", "huggingface_hub"),
}


def write_table(path: Path) -> Path:
    """16 configs x 2 seeds: val_mse = floor + 0.1 / epoch (+ seed noise); one config is best."""
    configs = [
        {"model": m, "n_neurons": nn, "n_maps": nm, "lr": lr}
        for m in ("model1", "model2")
        for nn in (40, 160)
        for nm in (8, 16)
        for lr in (1e-3, 1e-2)
    ]
    header = {
        "format": build_table.FORMAT,
        "axes": list(build_table.AXES),
        "configs": configs,
        "seeds": [0, 1],
        "n_epochs": EPOCHS,
        "scale": {"dataset": "made-up"},
    }
    lines = [json.dumps(header)]
    for i, config in enumerate(configs):
        floor = 0.01 if (config["n_neurons"], config["lr"]) == (160, 1e-2) else 0.03 + 0.001 * i
        for seed in (0, 1):
            mse = [floor + 0.1 / e + 0.001 * seed for e in range(1, EPOCHS + 1)]
            seconds = [1.0 + config["n_neurons"] / 160] * EPOCHS
            lines.append(
                json.dumps(
                    {
                        "config": i,
                        "seed": seed,
                        "status": "ok",
                        "val_mse": mse,
                        "utilisation": [0.5] * EPOCHS,
                        "seconds": seconds,
                        "cpu_seconds": seconds,
                    }
                )
            )
    path.write_text("\n".join(lines) + '\n{"config": 0, "se')  # a torn last line, as a kill
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Table:
    return Table(write_table(tmp_path_factory.mktemp("peers") / "tiny.jsonl"))


def test_the_table_reads_its_truth(table):
    assert table.true.shape == (16, EPOCHS)
    assert table.best == pytest.approx(0.01 + 0.1 / EPOCHS + 0.0005)  # the mean of two seeds
    assert table.index({"model": "model2", "n_neurons": 160, "n_maps": 8, "lr": 1e-2}) == 13


def _missing(method: str) -> list[str]:
    return [m for m in NEEDS.get(method, ()) if importlib.util.find_spec(m) is None]


@pytest.mark.parametrize("method", list(peers.METHODS))
def test_every_method_runs_on_the_table(request, table, method):
    if _missing(method):
        if os.environ.get("CI"):
            pytest.fail(f"{method} needs {_missing(method)}: CI installs the peers extra")
        pytest.skip(f"{method} needs {_missing(method)}")
    if method.startswith("ray-"):
        request.getfixturevalue("ray_local")  # the suite's one shared Ray
    events = peers.METHODS[method](table, 0, budget=30, workers=2)
    assert events.ndim == 2 and events.shape[1] == 3 and len(events) >= 1
    epochs, wall, true = events.T
    assert np.all(np.diff(epochs) >= 0) and 1 <= epochs[-1] <= 30 + 2  # running runs end
    assert np.all(wall > 0) and np.all(true >= table.best - 1e-12)


def test_time_to_is_the_first_hit_in_epochs_and_the_earliest_in_seconds():
    # (trial-epochs, simulated seconds, true objective) as they happened
    events = np.array([[1, 5.0, 0.5], [2, 3.0, 0.2], [3, 9.0, 0.105], [4, 4.0, 0.1]])
    assert peers.time_to(events, 0.105) == (3.0, 4.0)  # the second hit finished earlier
    assert peers.time_to(events, 0.101) == (4.0, 4.0)
    assert peers.time_to(events, 0.05) == (None, None)


def test_summarise_counts_medians_and_the_800_epoch_horizon(table):
    best = table.best
    runs = [
        np.array([[10, 1.0, best * 1.04], [20, 2.0, best]]),  # 5%: 10, 1%: 20
        np.array([[30, 3.0, best * 1.5], [900, 90.0, best * 1.02]]),  # 5%: 900 (past 800)
        np.array([[40, 4.0, best * 2]]),  # never
    ]
    row = peers.summarise("caetune", runs, table)
    assert row["method"] == "caetune" and row["reps"] == 3
    assert row["median_epochs_to_5pct"] == 900.0 and row["median_wallclock_to_5pct"] == 90.0
    assert row["median_epochs_to_1pct"] is None  # reached by one rep of three
    assert row["reached_5pct"] == pytest.approx(1 / 3) and row["reached_1pct"] == pytest.approx(
        1 / 3
    )


def test_one_run_writes_the_json_and_the_figure(tmp_path, table):
    path = write_table(tmp_path / "tiny.jsonl")
    out = tmp_path / "peers_tiny.json"
    report = peers.main(
        [
            "--table",
            str(path),
            "--reps",
            "2",
            "--budget",
            "20",
            "--workers",
            "2",
            "--json",
            str(out),
            "--methods",
            "caetune,random-asha",
        ]
    )
    assert json.loads(out.read_text()) == report and report["table"] == "tiny"
    assert [m["method"] for m in report["methods"]] == ["caetune", "random-asha"]
    keys = {
        "method",
        "reps",
        "median_epochs_to_5pct",
        "median_epochs_to_1pct",
        "median_wallclock_to_5pct",
        "reached_5pct",
        "reached_1pct",
    }
    assert all(keys <= set(m) for m in report["methods"])
    assert out.with_suffix(".png").stat().st_size > 1000


def test_the_cache_keeps_each_rep_and_a_rerun_reads_it(tmp_path):
    path = write_table(tmp_path / "tiny.jsonl")
    argv = ["--table", str(path), "--reps", "2", "--budget", "20", "--workers", "2"]
    argv += ["--methods", "caetune,random-asha", "--reps-for", "random-asha=1"]
    argv += ["--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "out.json")]
    first = peers.main(argv)
    assert [m["reps"] for m in first["methods"]] == [2, 1]
    kept = sorted(p.name for p in (tmp_path / "cache").rglob("*.npy"))
    assert kept == ["caetune_0.npy", "caetune_1.npy", "random-asha_0.npy"]
    np.save(next((tmp_path / "cache").rglob("random-asha_0.npy")), np.zeros((1, 3)))
    second = peers.main(argv)  # read back, not recomputed: the doctored rep shows
    assert (
        second["methods"][0]["median_epochs_to_5pct"]
        == first["methods"][0]["median_epochs_to_5pct"]
    )
    assert second["methods"][1]["median_epochs_to_5pct"] == 0.0


def test_equal_epochs_cost_one_second_each_and_are_cached_apart(tmp_path):
    path = write_table(tmp_path / "tiny.jsonl")
    equal = Table(path, equal_epochs=True)
    assert np.all(equal.seconds == 1.0) and not np.all(Table(path).seconds == 1.0)
    events = peers.METHODS["caetune"](equal, 0, budget=20, workers=2)
    epochs, wall, _ = events.T
    assert np.all(wall == np.round(wall))  # every epoch ends on a whole second
    assert wall.max() >= epochs[-1] / 2  # two workers, one epoch a second each
    argv = ["--table", str(path), "--reps", "1", "--budget", "20", "--workers", "2"]
    argv += ["--methods", "caetune", "--cache", str(tmp_path / "cache")]
    argv += ["--json", str(tmp_path / "out.json")]
    assert peers.main(argv)["epoch_seconds"] == "table"
    assert peers.main([*argv, "--equal-epochs"])["epoch_seconds"] == "equal"
    folders = sorted(p.parent.name for p in (tmp_path / "cache").rglob("caetune_0.npy"))
    assert len(folders) == 2 and folders[1] == folders[0] + "_equal"


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        peers.main(["--table", str(tmp_path / "none.jsonl")])
    assert exit_.value.code == 2 and "--table" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        peers.main(["--table", "x", "--methods", "nope"])
    assert exit_.value.code == 2 and "--methods" in capsys.readouterr().err
    path = write_table(tmp_path / "tiny.jsonl")
    with pytest.raises(SystemExit) as exit_:
        peers.main(["--table", str(path), "--methods", "dehb", "--reps-for", "caetune=2"])
    assert exit_.value.code == 2 and "--reps-for" in capsys.readouterr().err


def test_the_space_sample_covers_every_value():
    full = build_table.space_configs(max_configs=10_000, seed=0)
    assert len(full) == 2 * 8 * 6 * 3 and len(build_table.N_NEURONS) == 8
    sample = build_table.space_configs(max_configs=40, seed=0)
    assert len(sample) == 40
    for axis, values in zip(
        build_table.AXES,
        (build_table.MODELS, build_table.N_NEURONS, build_table.N_MAPS, build_table.LRS),
        strict=True,
    ):
        assert {c[axis] for c in sample} == set(values)
