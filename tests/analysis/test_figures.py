"""Every figure returns a Figure and saves as a non-empty PNG (SVG on request)."""

import subprocess
import sys

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from caetune import InputError
from caetune.analysis import (
    Activations,
    collect_activations,
    fit_mse_curve,
    plot_histogram,
    plot_local_entropy,
    plot_mse_curve,
    plot_reconstructions,
    plot_stacked_map,
    plot_study,
    plot_trials_summary,
    quantize8,
    save_figure,
    stacked_map,
)
from caetune.models import CAE, EpochMetrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000


@pytest.fixture(scope="module")
def acts() -> Activations:
    torch.manual_seed(0)
    images = torch.randint(
        0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return collect_activations(CAE(n_maps=3, n_neurons=20), images)


def history(n=12):
    return [
        EpochMetrics(e, 0.2 * np.exp(-0.3 * e) + 0.02, 0.2 * np.exp(-0.3 * e) + 0.025, 0.1, 0.01)
        for e in range(1, n + 1)
    ]


def test_save_figure_writes_png_and_svg(tmp_path, acts):
    paths = save_figure(plot_histogram(acts, "layer4"), tmp_path / "sub" / "hist.png", svg=True)
    assert [p.name for p in paths] == ["hist.png", "hist.svg"]
    assert_png(paths[0])
    assert paths[1].read_text().lstrip().startswith("<?xml")


def test_mse_curve_from_epoch_metrics_dicts_and_arrays(tmp_path):
    fig = plot_mse_curve(history())
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines][:3] == [
        "train MSE",
        "validation MSE",
        "k·exp(-a·Ne) + c",
    ]
    assert "a = 0.3" in ax.texts[0].get_text()  # the fit of the validation curve
    assert_png(save_figure(fig, tmp_path / "curve")[0])
    as_dicts = plot_mse_curve([m.to_dict() for m in history()])
    assert len(as_dicts.axes[0].lines) == len(ax.lines)
    arrays = plot_mse_curve(epochs=[1, 2], val_mse=[0.1, 0.05])  # too short to fit: still a figure
    assert "no curve fitted" in arrays.axes[0].texts[0].get_text()
    with pytest.raises(InputError, match="history"):
        plot_mse_curve(epochs=[1, 2])


def test_mse_curve_draws_a_given_fit(tmp_path):
    fit = fit_mse_curve(range(1, 13), [m.train_mse for m in history()])
    fig = plot_mse_curve(history(), fit=fit)
    assert f"k = {fit.k:.4g}" in fig.axes[0].texts[0].get_text()


def test_reconstructions_grid(tmp_path, acts):
    fig = plot_reconstructions(acts.images, acts.reconstructions, n=4)
    assert len([ax for ax in fig.axes if ax.images]) == 8  # 2 rows x 4
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), acts.images[0, 0])
    assert_png(save_figure(fig, tmp_path / "recon")[0])
    rgb = np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    assert plot_reconstructions(rgb, rgb, n=10).axes[0].images[0].get_array().shape == (8, 8, 3)
    with pytest.raises(InputError, match="reconstructions"):
        plot_reconstructions(acts.images, acts.reconstructions[:2])


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_stacked_map_histogram_and_local_entropy(tmp_path, acts, layer):
    fig = plot_stacked_map(acts, layer)
    expected = quantize8(stacked_map(acts, layer), scale=float(acts.layer(layer).max()))
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), expected)
    for name, figure in (
        ("map", fig),
        ("hist", plot_histogram(acts, layer)),
        ("ent", plot_local_entropy(acts, layer)),
    ):
        assert isinstance(figure, Figure)
        assert_png(save_figure(figure, tmp_path / f"{layer}_{name}")[0])


def results_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        model = "model1" if i % 2 else "model2"
        rows.append(
            {
                "trial_id": i,
                "status": "complete" if i != 5 else "failed",
                "model": model,
                "n_neurons": [16, 64, 256][i % 3],
                "n_maps": [4, 8][i % 2],
                "val_mse": float(rng.uniform(0.01, 0.05)) if i != 5 else np.nan,
                "layer3_mean": rng.uniform(0, 1),
                "layer3_std": rng.uniform(0, 0.3),
                "layer4_mean": rng.uniform(0, 1),
                "layer4_std": rng.uniform(0, 0.3),
                "utilisation": rng.uniform(0, 1),
            }
        )
    return pd.DataFrame(rows)


def test_trials_summary(tmp_path):
    fig = plot_trials_summary(results_frame())
    assert fig.get_suptitle() == "11 completed trials"  # the failed one is left out
    assert len(fig.axes) == 8
    assert fig.axes[0].get_xscale() == "log"  # n_neurons spans 16..256
    assert_png(save_figure(fig, tmp_path / "summary")[0])
    partial = plot_trials_summary(results_frame().drop(columns=["layer4_mean", "model"]))
    assert any("no layer4_mean" in t.get_text() for ax in partial.axes for t in ax.texts)
    empty = plot_trials_summary(results_frame().iloc[:0])
    assert "no completed trials" in empty.axes[0].texts[0].get_text()


def objective(trial):
    x = trial.suggest_float("x", -2, 2)
    y = trial.suggest_int("n_neurons", 1, 64, log=True)
    return (x - 0.5) ** 2 + 1.0 / y


def test_plot_study_single_objective(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert "no completed trials" in plot_study(study, "history").axes[0].texts[0].get_text()
    study.optimize(objective, n_trials=8)
    style = dict(matplotlib.rcParams)
    for kind in ("history", "importances"):
        fig = plot_study(study, kind)
        assert fig.axes[0].has_data()
        assert_png(save_figure(fig, tmp_path / kind)[0])
    assert dict(matplotlib.rcParams) == style  # Optuna's ggplot style did not leak
    assert "single-objective" in plot_study(study, "pareto").axes[0].texts[0].get_text()
    with pytest.raises(InputError, match="kind"):
        plot_study(study, "contour")


def test_plot_study_importances_need_varying_params():
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=2)
    assert "vary" in plot_study(study, "importances").axes[0].texts[0].get_text()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
def test_plot_study_pareto_front(tmp_path):
    study = optuna.create_study(
        directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.set_metric_names(["val_mse", "utilisation"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=6)
    for kind in ("pareto", "history", "importances"):
        fig = plot_study(study, kind)
        assert fig.axes[0].has_data(), kind
        assert_png(save_figure(fig, tmp_path / kind)[0])
    assert fig.axes[0].get_xlabel() or fig.axes[0].get_ylabel()


def test_the_metrics_do_not_load_matplotlib():
    code = "import sys, caetune.analysis; print('matplotlib' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        == "False\n"
    )
