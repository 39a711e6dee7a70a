"""Utilisation metrics on hand-made maps with known answers."""

import math

import numpy as np
import pytest
import torch

from caetune import InputError
from caetune.analysis import (
    Activations,
    activation_entropy,
    activation_histogram,
    collect_activations,
    combined_objective,
    dead_fraction,
    fit_mse_curve,
    layer_summary,
    local_entropy,
    model_utilisation,
    quantize8,
    utilisation,
)
from caetune.models import CAE


def binary_entropy(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def alternating_columns(rows: int, cols: int) -> np.ndarray:
    """0 in even columns, 255 in odd ones."""
    image = np.zeros((rows, cols), dtype=np.uint8)
    image[:, 1::2] = 255
    return image


def test_quantize8_scales_by_the_given_max_and_clips():
    values = np.array([[-1.0, 0.0, 1.0, 2.0, 4.0]])
    np.testing.assert_array_equal(quantize8(values), [[0, 0, 64, 128, 255]])
    np.testing.assert_array_equal(quantize8(values, scale=2.0), [[0, 0, 128, 255, 255]])
    assert quantize8(values).dtype == np.uint8


def test_quantize8_of_a_map_without_activity_is_all_zero():
    assert not quantize8(np.zeros((4, 5))).any()
    assert not quantize8(-np.ones((4, 5))).any()
    assert not quantize8(np.ones((4, 5)), scale=0.0).any()


def test_global_entropy_of_known_histograms():
    assert activation_entropy(np.full((7, 9), 0.3)) == 0.0  # constant map
    assert activation_entropy(np.zeros((7, 9))) == 0.0
    assert activation_entropy(alternating_columns(6, 10)) == pytest.approx(
        1.0
    )  # two equally likely levels
    four = np.repeat(np.array([0, 85, 170, 255], dtype=np.uint8), 25)
    assert activation_entropy(four) == pytest.approx(2.0)
    # Float input is quantised against its own max: 0 and 0.5 become 0 and 255.
    assert activation_entropy(np.array([0.0, 0.5, 0.0, 0.5])) == pytest.approx(1.0)


def test_local_entropy_of_a_constant_map_is_zero():
    assert not local_entropy(np.full((20, 30), 77, dtype=np.uint8)).any()


def test_local_entropy_counts_the_levels_inside_each_13x13_window():
    entropy = local_entropy(alternating_columns(30, 40))
    # Interior: 13 whole columns, 7 of one level and 6 of the other (169 is odd).
    assert entropy[15, 20] == pytest.approx(binary_entropy(7 / 13), abs=1e-6)
    assert entropy[15, 21] == pytest.approx(binary_entropy(7 / 13), abs=1e-6)
    # Corner: the window is cut to 7x7, columns 0..6 hold 4 zeros-columns and 3 bright ones.
    assert entropy[0, 0] == pytest.approx(binary_entropy(4 / 7), abs=1e-6)
    # A 1-pixel window sees one level only.
    assert not local_entropy(alternating_columns(5, 5), size=1).any()


def test_local_entropy_rejects_float_maps():
    with pytest.raises(InputError, match="map2d_uint8"):
        local_entropy(np.zeros((5, 5)))


def test_dead_fraction_counts_units_that_never_fire():
    acts = np.ones((3, 5), dtype=np.float32)
    acts[:, 1] = 0.0  # dead
    acts[:, 3] = -2.0  # dead too: never positive
    acts[:, 4] = [0.0, 0.0, 0.5]  # fires on one image: alive
    assert dead_fraction(acts) == pytest.approx(2 / 5)
    layer3 = np.ones((2, 2, 3, 3), dtype=np.float32)
    layer3[:, 1, 0, 0] = 0.0  # one of the 18 units of [Nm=2, 3, 3]
    assert dead_fraction(layer3) == pytest.approx(1 / 18)


def test_histogram_counts_every_value():
    values = np.array([0.0, 0.0, 1.0, 2.0])
    counts, edges = activation_histogram(values, bins=4)
    assert counts.sum() == 4 and counts[0] == 2
    assert edges[0] == 0.0 and edges[-1] == 2.0


def hand_made(layer3: np.ndarray, layer4: np.ndarray) -> Activations:
    blank = np.zeros((layer4.shape[0], 1, 4, 4), dtype=np.float32)
    return Activations(layer3.astype(np.float32), layer4.astype(np.float32), blank, blank)


def test_an_all_dead_layer_has_no_utilisation():
    summary = layer_summary(np.zeros((4, 3, 5, 5)), "layer3")
    assert summary == {
        "mean": 0.0,
        "std": 0.0,
        "dead_fraction": 1.0,
        "entropy": 0.0,
        "local_entropy": 0.0,
        "utilisation": 0.0,
    }


def test_layer4_summary_of_a_known_map():
    # 20 images x 26 neurons: even neurons always 0 (dead), odd ones always at the max.
    layer4 = alternating_columns(20, 26).astype(np.float32) / 255.0
    summary = layer_summary(layer4, "layer4", local_images=20)
    assert summary["dead_fraction"] == pytest.approx(0.5)
    assert summary["entropy"] == pytest.approx(1 / 8)  # two equally likely levels: 1 bit of 8
    assert summary["mean"] == pytest.approx(0.5) and summary["std"] == pytest.approx(0.5)
    expected_local = local_entropy(alternating_columns(20, 26)).mean() / 8
    assert summary["local_entropy"] == pytest.approx(expected_local)
    assert 0.1 < summary["local_entropy"] < 1 / 8  # windows hold nearly, not exactly, half of each
    assert summary["utilisation"] == pytest.approx(0.5 * expected_local)


def test_local_entropy_reads_only_the_first_local_images():
    layer4 = np.zeros((30, 26), dtype=np.float32)
    layer4[:10] = alternating_columns(10, 26) / 255.0
    assert layer_summary(layer4, "layer4", local_images=10)["local_entropy"] > 0.1
    assert layer_summary(layer4[10:], "layer4", local_images=10)["local_entropy"] == 0.0
    with pytest.raises(InputError, match="local_images"):
        layer_summary(layer4, "layer4", local_images=0)


def test_utilisation_is_flat_bounded_and_averages_the_layers():
    rng = np.random.default_rng(0)
    acts = hand_made(rng.uniform(0, 1, (6, 3, 5, 5)), np.zeros((6, 16)))
    flat = utilisation(acts)
    metrics = ("mean", "std", "dead_fraction", "entropy", "local_entropy", "utilisation")
    assert set(flat) == {f"{layer}_{m}" for layer in ("layer3", "layer4") for m in metrics} | {
        "utilisation"
    }
    assert flat["layer4_utilisation"] == 0.0 and flat["layer4_dead_fraction"] == 1.0
    assert flat["layer3_utilisation"] > 0.3  # uniform noise fills most levels of each window
    assert flat["utilisation"] == pytest.approx(flat["layer3_utilisation"] / 2)
    assert all(0.0 <= flat[k] <= 1.0 for k in flat if not k.endswith(("_mean", "_std")))


def test_model_utilisation_of_a_real_model_is_in_unit_range():
    torch.manual_seed(0)
    model = CAE(n_maps=4, n_neurons=16)
    images = torch.randint(
        0, 256, (20, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    flat = model_utilisation(model, images, n_images=12, local_images=4)
    assert 0.0 < flat["utilisation"] <= 1.0
    assert flat == utilisation(collect_activations(model, images[:12]), local_images=4)


def test_combined_objective_formula():
    assert combined_objective(0.02, 0.3, weight=0) == 0.02
    assert combined_objective(0.02, 0.0, weight=1.0) == pytest.approx(0.04)
    assert combined_objective(0.02, 1.0, weight=5.0) == pytest.approx(0.02)
    assert combined_objective(0.02, {"utilisation": 0.75}, weight=2) == pytest.approx(0.02 * 1.5)


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf"), True, "1"])
def test_combined_objective_rejects_bad_weights(weight):
    with pytest.raises(InputError, match="utilisation_weight"):
        combined_objective(0.02, 0.5, weight=weight)


def test_combined_objective_rejects_utilisation_outside_unit_range():
    with pytest.raises(InputError, match="utilisation"):
        combined_objective(0.02, 1.5, weight=1.0)


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_the_objective_formula_text_computes_what_the_search_minimises(weight):
    from caetune.analysis import objective_formula
    from caetune.search import Objective

    text = objective_formula("combined", weight)
    assert text == Objective("combined", weight).formula
    rhs = text.removeprefix("objective = ")
    for u in (0.0, 0.3, 1.0):
        value = eval(rhs, {}, {"val_mse": 0.02, "U": u})  # noqa: S307 -- our own formula text
        assert value == pytest.approx(combined_objective(0.02, u, weight=weight))
    assert objective_formula("mse") == Objective("mse").formula == "objective = val_mse"
    assert "utilisation_weight" in objective_formula("combined")
    assert "Pareto" in objective_formula("pareto") == Objective("pareto").formula
    with pytest.raises(InputError, match="objective"):
        objective_formula("mae")


# -- the learning curve k * exp(-a * Ne) + c ---------------------------------


@pytest.mark.parametrize("k, a, c", [(0.3, 0.08, 0.01), (0.05, 0.5, 0.004), (0.2, 0.2, 0.02)])
def test_fit_recovers_known_curves(k, a, c):
    epochs = np.arange(1, 31)
    fit = fit_mse_curve(epochs, k * np.exp(-a * epochs) + c)
    assert fit.ok
    assert (fit.k, fit.a, fit.c) == pytest.approx((k, a, c), rel=1e-4)
    assert fit.level_epoch == math.ceil(math.log(20) / fit.a)  # 95% of the drop done
    assert (
        fit.k * math.exp(-fit.a * fit.level_epoch)
        <= 0.05 * fit.k
        < fit.k * math.exp(-fit.a * (fit.level_epoch - 1))
    )
    np.testing.assert_allclose(fit.predict(epochs), k * np.exp(-a * epochs) + c, rtol=1e-4)


def test_fit_tolerates_noise_and_missing_points():
    epochs = np.arange(1, 26)
    mse = 0.2 * np.exp(-0.2 * epochs) + 0.02 + np.random.default_rng(0).normal(0, 3e-4, epochs.size)
    mse[4] = np.nan
    fit = fit_mse_curve(epochs, mse)
    assert fit.ok and fit.rmse < 1e-3
    assert (fit.k, fit.a, fit.c) == pytest.approx((0.2, 0.2, 0.02), rel=0.05)


def test_fit_of_too_few_points_fails_gracefully():
    fit = fit_mse_curve([1, 2], [0.1, 0.05])
    assert not fit.ok and math.isnan(fit.k) and math.isnan(fit.a)
    assert fit.c == 0.05 and fit.level_epoch is None
    assert not fit_mse_curve([], []).ok


def test_a_flat_history_is_level_from_its_first_epoch():
    fit = fit_mse_curve([3, 4, 5, 6], [0.1] * 4)
    assert fit.ok and fit.c == pytest.approx(0.1) and fit.level_epoch == 3


def test_fit_rejects_mismatched_lengths():
    with pytest.raises(InputError, match="mse"):
        fit_mse_curve([1, 2, 3], [0.1, 0.2])
    with pytest.raises(InputError, match="level_fraction"):
        fit_mse_curve([1, 2, 3], [0.3, 0.2, 0.1], level_fraction=1.5)
