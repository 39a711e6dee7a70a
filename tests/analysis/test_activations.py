"""Activations of a tiny CAE and the paper's stacked maps."""

import numpy as np
import pytest
import torch

from caetune import InputError
from caetune.analysis import Activations, collect_activations, sample_indices, stacked_map
from caetune.models import CAE


@pytest.fixture(scope="module")
def model() -> CAE:
    torch.manual_seed(0)
    return CAE(n_maps=4, n_neurons=12)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(
        0, 256, (10, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )


def test_shapes_dtypes_and_range(model, images):
    acts = collect_activations(model, images, n_images=6)
    assert acts.layer3.shape == (6, 4, 13, 13)
    assert acts.layer4.shape == (6, 12)
    assert acts.images.shape == acts.reconstructions.shape == (6, 1, 28, 28)
    for array in (acts.layer3, acts.layer4, acts.images, acts.reconstructions):
        assert array.dtype == np.float32
    assert acts.n_images == 6
    np.testing.assert_allclose(acts.images, images[:6].numpy() / 255.0, atol=1e-7)
    assert 0.0 <= acts.reconstructions.min() and acts.reconstructions.max() <= 1.0


def test_uint8_and_float_inputs_agree_and_batches_do_not_matter(model, images):
    whole = collect_activations(model, images)
    floats = collect_activations(model, images.float() / 255.0, batch_size=3)
    assert whole.n_images == 10
    np.testing.assert_allclose(floats.layer3, whole.layer3, atol=1e-5)
    np.testing.assert_allclose(floats.layer4, whole.layer4, atol=1e-5)
    np.testing.assert_allclose(floats.reconstructions, whole.reconstructions, atol=1e-5)


def test_matches_the_models_forward_and_restores_training_mode(model, images):
    model.train()
    acts = collect_activations(model, images.numpy())  # NumPy input works too
    assert model.training
    model.eval()
    with torch.no_grad():
        _, expected = model(images.float() / 255.0)
    model.train()
    np.testing.assert_allclose(acts.layer4, expected["layer4"].numpy(), atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"n_images": 0}, {"batch_size": -1}, {"n_images": 2.5}])
def test_bad_counts_are_input_errors(model, images, kwargs):
    with pytest.raises(InputError):
        collect_activations(model, images, **kwargs)


def test_bad_image_shape_is_an_input_error(model):
    with pytest.raises(InputError, match="images"):
        collect_activations(model, torch.zeros(28, 28))


def test_stacked_maps_follow_the_documented_layout(model, images):
    acts = collect_activations(model, images)
    layer3 = stacked_map(acts, "layer3", image_index=2)
    assert layer3.shape == (4, 169)  # Nm rows x 13*13 columns
    np.testing.assert_array_equal(layer3[1], acts.layer3[2, 1].ravel())
    np.testing.assert_array_equal(
        stacked_map(acts, "layer3"), stacked_map(acts, "layer3", image_index=0)
    )
    assert stacked_map(acts, "layer4").shape == (10, 12)  # images x Nn
    np.testing.assert_array_equal(stacked_map(acts, "layer4", image_index=-1), acts.layer4[[9]])
    # The layer's bare array works as well as Activations.
    np.testing.assert_array_equal(stacked_map(acts.layer4, "layer4"), acts.layer4)


def test_a_dead_neuron_is_a_black_column():
    layer4 = np.random.default_rng(0).uniform(0.1, 1.0, size=(5, 6)).astype(np.float32)
    layer4[:, 3] = 0.0
    acts = Activations(
        np.zeros((5, 2, 3, 3), np.float32), layer4, np.zeros((5, 1, 8, 8)), np.zeros((5, 1, 8, 8))
    )
    stacked = stacked_map(acts, "layer4")
    assert np.all(stacked[:, 3] == 0) and np.all(np.delete(stacked, 3, axis=1) > 0)


def test_bad_layer_and_index_are_input_errors(model, images):
    acts = collect_activations(model, images, n_images=2)
    with pytest.raises(InputError, match="layer"):
        stacked_map(acts, "layer5")
    with pytest.raises(InputError, match="image_index"):
        stacked_map(acts, "layer3", image_index=2)
    with pytest.raises(InputError, match="layer3"):
        stacked_map(acts.layer4, "layer3")


def test_sample_indices_are_seeded_distinct_and_spread_over_a_class_sorted_set():
    labels = np.repeat(np.arange(10), 100)  # a class-sorted set: its first 100 are one class
    sample = sample_indices(len(labels), 256, seed=0)
    assert sample.dtype == np.int64 and len(sample) == 256 == len(set(sample.tolist()))
    assert 0 <= sample.min() and sample.max() < len(labels)
    assert np.array_equal(sample, sample_indices(len(labels), 256, seed=0))
    assert not np.array_equal(sample, sample_indices(len(labels), 256, seed=1))
    # Every prefix is spread too: the first 10 (a figure's row) are not one class.
    assert len(set(labels[sample[:10]])) >= 5
    assert np.array_equal(sample[:10], sample_indices(len(labels), 10, seed=0))
    assert sorted(sample_indices(7, 256).tolist()) == list(range(7))  # fewer images: all of them


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_total": 0, "n": 3}, "n_total"),
        ({"n_total": 5, "n": 0}, "n"),
        ({"n_total": 5, "n": 2.5}, "n"),
        ({"n_total": 5, "n": 2, "seed": -1}, "seed"),
        ({"n_total": 5, "n": 2, "seed": True}, "seed"),
    ],
)
def test_bad_sample_arguments_are_input_errors(kwargs, field):
    with pytest.raises(InputError) as info:
        sample_indices(**kwargs)
    assert info.value.field == field
