import pytest
import torch

from caetune import InputError
from caetune.models import CAE


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_model1_paper_parameter_count_by_hand():
    # Model 1, Nm=32, Nn=2560 on 28x28x1, worked out by hand:
    conv = 1 * 32 * 3 * 3 + 32  # 320: 3x3 kernels from 1 channel to 32 maps, + biases
    features = 32 * 13 * 13  # 5408: 28 -> 26 (valid conv) -> 13 (pool 2)
    fc_in = features * 2560 + 2560  # 13,847,040
    fc_out = 2560 * features + features  # 13,849,888
    deconv = 32 * 1 * 3 * 3 + 1  # 289
    expected = conv + fc_in + fc_out + deconv
    assert expected == 27_697_537
    model = CAE(in_channels=1, image_size=(28, 28), n_maps=32, n_neurons=2560, n_conv=1)
    assert n_params(model) == expected
    assert model.shape.parameter_count() == expected


def test_model1_shapes_and_named_activations():
    model = CAE(n_maps=32, n_neurons=2560)
    x = torch.rand(5, 1, 28, 28)
    recon, acts = model(x)
    assert recon.shape == x.shape
    assert acts["layer3"].shape == (5, 32, 13, 13)  # the paper's Nm rows x 13*13 columns
    assert acts["layer4"].shape == (5, 2560)
    assert (
        0.0 <= float(recon.detach().min()) <= float(recon.detach().max()) <= 1.0
    )  # sigmoid output


def test_model2_goes_down_to_1x1x32():
    # 28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1
    model = CAE(n_maps=32, n_neurons=160, n_conv=3)
    recon, acts = model(torch.rand(2, 1, 28, 28))
    assert acts["layer3"].shape == (2, 32, 1, 1)
    assert recon.shape == (2, 1, 28, 28)
    first = (1 * 32 * 9 + 32) + (32 * 1 * 9 + 1)  # conv from the image, deconv back to it
    inner = 2 * ((32 * 32 * 9 + 32) + (32 * 32 * 9 + 32))  # two more conv/deconv pairs
    convs = first + inner
    fcs = (32 * 160 + 160) + (160 * 32 + 32)
    assert n_params(model) == convs + fcs == model.shape.parameter_count()


@pytest.mark.parametrize(
    "channels,size,n_conv",
    [(3, (32, 32), 1), (3, (32, 32), 2), (3, (32, 32), 3), (3, (64, 48), 2), (1, (28, 28), 2)],
)
def test_any_channels_and_size(channels, size, n_conv):
    model = CAE(
        in_channels=channels,
        image_size=size,
        n_maps=4,
        n_neurons=10,
        n_conv=n_conv,
        activation="elu",
    )
    x = torch.rand(3, channels, *size)
    recon, acts = model(x)
    assert recon.shape == x.shape
    assert acts["layer3"].shape[:2] == (3, 4)
    assert acts["layer4"].shape == (3, 10)
    assert n_params(model) == model.shape.parameter_count()


def test_forward_macs_model1():
    shape = CAE(n_maps=32, n_neurons=2560).shape
    conv = 26 * 26 * 32 * 1 * 9
    assert shape.forward_macs() == 2 * conv + 2 * 5408 * 2560


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"n_neurons": 0}, "n_neurons"),
        ({"n_maps": -3}, "n_maps"),
        ({"n_conv": 4}, "n_conv"),
        ({"activation": "swish"}, "activation"),
        ({"image_size": (8, 8), "n_conv": 3}, "image_size"),
    ],
)
def test_bad_hyperparameters_name_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        CAE(**kwargs)
    assert err.value.field == field
