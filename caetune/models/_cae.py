"""The CAE family of Tang, Lim & Siebert, generalised.

Model 1 of the paper, for a 28x28x1 image and Nm maps, Nn neurons::

    x        [B, 1, 28, 28]
    conv3x3  [B, Nm, 26, 26]   valid padding, then the activation
    pool2    [B, Nm, 13, 13]   "layer3": Nm rows x 13*13 columns in the paper's maps
    fc       [B, Nn]           "layer4": the bottleneck, then the activation
    fc       [B, Nm*13*13]     then the activation
    unpool   [B, Nm, 26, 26]
    deconv   [B, 1, 28, 28]    then a sigmoid, so pixels land in [0, 1]

Model 2 stacks three conv/pool stages (28 -> 26 -> 13 -> 11 -> 5 -> 3 -> 1, so
1x1xNm before the bottleneck) and mirrors them in the decoder. Both are one
class here with ``n_conv`` in 1..3; any channel count and image size works as
long as every stage keeps at least one pixel.

Unpooling is nearest-neighbour upsampling to the size the encoder had before
it pooled. Max-unpooling with the encoder's switches would carry spatial
information around the Nn-neuron bottleneck and blur the very effect of Nn the
search is about, so it is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from caetune._errors import InputError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}

# The paper's two architectures, by their number of conv/pool stages.
MODEL_DEPTHS: dict[str, int] = {"model1": 1, "model2": 3}

KERNEL = 3


@dataclass(frozen=True)
class CAEShape:
    """Where a CAE's tensors change shape; enough to count parameters and MACs."""

    in_channels: int
    image_size: tuple[int, int]
    n_maps: int
    n_neurons: int
    conv_sizes: tuple[tuple[int, int], ...]  # (h, w) after each valid conv, before pooling
    feature_size: tuple[int, int]  # (h, w) of layer3

    @property
    def n_features(self) -> int:
        return self.n_maps * self.feature_size[0] * self.feature_size[1]

    def parameter_count(self) -> int:
        """Trainable parameters, by the closed formula (weights + biases)."""
        k2 = KERNEL * KERNEL
        count = 0
        c_in = self.in_channels
        for _ in self.conv_sizes:  # encoder conv and its mirrored deconv
            count += (c_in * self.n_maps * k2 + self.n_maps) + (self.n_maps * c_in * k2 + c_in)
            c_in = self.n_maps
        count += self.n_features * self.n_neurons + self.n_neurons  # fc to the bottleneck
        count += self.n_neurons * self.n_features + self.n_features  # fc back
        return count

    def forward_macs(self) -> int:
        """Multiply-accumulates of one image's forward pass (convs, deconvs, FCs)."""
        k2 = KERNEL * KERNEL
        macs = 0
        c_in = self.in_channels
        for h, w in self.conv_sizes:
            # A valid conv producing (h, w) and the deconv reading (h, w) cost the same.
            macs += 2 * h * w * self.n_maps * c_in * k2
            c_in = self.n_maps
        return macs + 2 * self.n_features * self.n_neurons


def cae_shape(
    *, in_channels: int, image_size: tuple[int, int], n_maps: int, n_neurons: int, n_conv: int
) -> CAEShape:
    """Validates a CAE's hyperparameters and works out its tensor sizes."""
    for field, value in (
        ("in_channels", in_channels),
        ("n_maps", n_maps),
        ("n_neurons", n_neurons),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(field, f"expected an integer >= 1, got {value!r}")
    if n_conv not in (1, 2, 3):
        raise InputError("n_conv", f"expected 1, 2 or 3 conv stages, got {n_conv!r}")
    h, w = image_size
    sizes = []
    for _ in range(n_conv):
        h, w = h - (KERNEL - 1), w - (KERNEL - 1)
        sizes.append((h, w))
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise InputError(
                "image_size",
                f"{image_size[0]}x{image_size[1]} is too small for {n_conv} conv/pool stages",
            )
    return CAEShape(
        in_channels, (image_size[0], image_size[1]), n_maps, n_neurons, tuple(sizes), (h, w)
    )


class CAE(nn.Module):
    """A convolutional autoencoder with an Nn-neuron fully connected bottleneck.

    Args:
        in_channels: Image channels (1 for MNIST, 3 for CIFAR-10).
        image_size: ``(height, width)`` of the input images.
        n_maps: Nm, feature maps of every conv layer.
        n_neurons: Nn, neurons in the bottleneck.
        n_conv: Conv/pool stages: 1 is the paper's Model 1, 3 its Model 2.
        activation: One of :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        n_maps: int = 32,
        n_neurons: int = 2560,
        n_conv: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InputError(
                "activation", f"expected one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        self.shape = cae_shape(
            in_channels=in_channels,
            image_size=image_size,
            n_maps=n_maps,
            n_neurons=n_neurons,
            n_conv=n_conv,
        )
        act = ACTIVATIONS[activation]

        encoder: list[nn.Module] = []
        c_in = in_channels
        for _ in range(n_conv):
            encoder += [nn.Conv2d(c_in, n_maps, KERNEL), act(), nn.MaxPool2d(2)]
            c_in = n_maps
        self.encoder = nn.Sequential(*encoder)
        self.to_bottleneck = nn.Sequential(
            nn.Flatten(), nn.Linear(self.shape.n_features, n_neurons), act()
        )
        self.from_bottleneck = nn.Sequential(
            nn.Linear(n_neurons, self.shape.n_features),
            act(),
            nn.Unflatten(1, (n_maps, *self.shape.feature_size)),
        )

        decoder: list[nn.Module] = []
        for stage, size in reversed(list(enumerate(self.shape.conv_sizes))):
            c_out = in_channels if stage == 0 else n_maps
            decoder += [
                nn.Upsample(size=size, mode="nearest"),
                nn.ConvTranspose2d(n_maps, c_out, KERNEL),
            ]
            decoder.append(nn.Sigmoid() if stage == 0 else act())
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstructs ``x`` and returns the activations the analysis reads.

        Returns:
            ``(reconstruction, activations)``: the reconstruction has ``x``'s
            shape ``[B, C, H, W]``; ``activations["layer3"]`` is the last
            conv/pool output ``[B, Nm, h, w]`` and ``activations["layer4"]``
            the bottleneck ``[B, Nn]``.
        """
        layer3 = self.encoder(x)  # [B, Nm, h, w]
        layer4 = self.to_bottleneck(layer3)  # [B, Nn]
        recon = self.decoder(self.from_bottleneck(layer4))  # [B, C, H, W]
        return recon, {"layer3": layer3, "layer4": layer4}
