"""Layer-3 and layer-4 activations of a trained CAE and the paper's stacked maps.

The paper looks at two layers of the encoder (see :mod:`caetune.models._cae`):

* layer 3, the last conv/pool output ``[N, Nm, h, w]`` (``h = w = 13`` for a
  28x28 input to Model 1, 1x1 for Model 2);
* layer 4, the fully connected bottleneck ``[N, Nn]``.

Each is drawn as one 2-D "stacked map" (:func:`stacked_map`):

* layer 3, per image: ``Nm`` rows x ``h*w`` columns, row ``m`` being feature
  map ``m`` read row-major (169 columns for Model 1 on 28x28 images);
* layer 4, over images: ``N_images`` rows x ``Nn`` columns, row ``i`` being
  image ``i``'s bottleneck vector. A neuron that never fires is a black
  column, a neuron that fires for every image a bright one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from caetune._errors import InputError
from caetune.models import to_float_images

LAYERS = ("layer3", "layer4")


@dataclass
class Activations:
    """What a CAE does with ``N`` images, as NumPy arrays on the host.

    Attributes:
        layer3: ``float32 [N, Nm, h, w]``, the last conv/pool output.
        layer4: ``float32 [N, Nn]``, the bottleneck.
        images: ``float32 [N, C, H, W]`` in [0, 1], the inputs.
        reconstructions: ``float32 [N, C, H, W]`` in [0, 1].
    """

    layer3: np.ndarray
    layer4: np.ndarray
    images: np.ndarray
    reconstructions: np.ndarray

    @property
    def n_images(self) -> int:
        return int(self.layer4.shape[0])

    def layer(self, name: str) -> np.ndarray:
        """The activations of ``layer3`` or ``layer4`` by name."""
        return getattr(self, check_layer(name))


def check_layer(layer: str) -> str:
    if layer not in LAYERS:
        raise InputError("layer", f"expected one of {', '.join(LAYERS)}, got {layer!r}")
    return layer


def _positive_int(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(field, f"expected an integer >= 1, got {value!r}")
    return int(value)


def sample_indices(n_total: int, n: int, *, seed: int = 0) -> np.ndarray:
    """A seeded sample of ``n`` distinct indices below ``n_total``, spread over the whole set.

    Every figure that shows images draws them with this, never as the first
    ``n`` in index order: a validation split keeps its source's order, and on
    a class-sorted folder its first images are all of one class. The sample is
    a seeded random permutation cut to ``n``, so every prefix of it is itself
    spread over the set (the first 10 of a 256-image sample too).

    Args:
        n_total: How many images there are.
        n: How many to draw; all ``n_total``, in drawn order, when larger.
        seed: Seeds the draw: the same arguments give the same indices.

    Returns:
        ``int64 [min(n, n_total)]`` in drawn order (not sorted).
    """
    n_total = _positive_int("n_total", n_total)
    n = _positive_int("n", n)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError("seed", f"expected an integer >= 0, got {seed!r}")
    return np.random.default_rng(int(seed)).permutation(n_total)[:n].astype(np.int64)


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    n_images: int = 256,
    batch_size: int = 256,
) -> Activations:
    """Runs the first ``n_images`` images through ``model`` and keeps layers 3 and 4.

    The model runs in eval mode without gradients; its training/eval mode is
    restored afterwards, so this is safe to call from inside a training loop.

    Args:
        model: A :class:`caetune.models.CAE` (anything whose forward returns
            ``(recon, {"layer3": ..., "layer4": ...})``).
        images: ``[N, C, H, W]``, either ``uint8`` (scaled to [0, 1] here) or
            float in [0, 1]; moved to the model's device.
        n_images: Use the first this many images (all of them if fewer). For
            figures, pass a spread sample: ``images[sample_indices(N, n)]``.
        batch_size: Images per forward pass.
    """
    n_images = _positive_int("n_images", n_images)
    batch_size = _positive_int("batch_size", batch_size)
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(
            "images", f"expected a non-empty [N, C, H, W] batch, got shape {tuple(images.shape)}"
        )
    device = next(model.parameters()).device
    images = images[:n_images]
    if images.dtype in (np.uint8, torch.uint8):
        x = to_float_images(images, device)  # [n, C, H, W]
    else:
        x = torch.as_tensor(images).to(device=device, dtype=torch.float32)

    was_training = model.training
    model.eval()
    try:
        parts: dict[str, list[np.ndarray]] = {"layer3": [], "layer4": [], "recon": []}
        for start in range(0, x.shape[0], batch_size):
            recon, acts = model(x[start : start + batch_size])
            parts["recon"].append(recon.float().cpu().numpy())
            for name in LAYERS:
                parts[name].append(acts[name].float().cpu().numpy())
    finally:
        model.train(was_training)
    return Activations(
        layer3=np.concatenate(parts["layer3"]),
        layer4=np.concatenate(parts["layer4"]),
        images=x.cpu().numpy(),
        reconstructions=np.concatenate(parts["recon"]),
    )


def layer_values(acts: Activations | np.ndarray, layer: str) -> np.ndarray:
    """One layer's array, from :class:`Activations` or given directly.

    Raises:
        InputError: ``layer`` is unknown, or the array's rank does not match
            it (layer 3 is ``[N, Nm, h, w]``, layer 4 ``[N, Nn]``).
    """
    check_layer(layer)
    values = acts.layer(layer) if isinstance(acts, Activations) else np.asarray(acts)
    rank = 4 if layer == "layer3" else 2
    if values.ndim != rank or values.shape[0] == 0:
        raise InputError(
            layer, f"expected a non-empty {rank}-D activation array, got shape {values.shape}"
        )
    return values


def stacked_map(
    acts: Activations | np.ndarray, layer: str, *, image_index: int | None = None
) -> np.ndarray:
    """The paper's 2-D arrangement of one layer's activations.

    Args:
        acts: :class:`Activations`, or the layer's own array.
        layer: ``layer3`` or ``layer4``.
        image_index: Layer 3: whose map (``None`` means image 0). Layer 4:
            ``None`` stacks every image; an index gives that image's row only.

    Returns:
        Layer 3: ``[Nm, h*w]``, row ``m`` = feature map ``m`` of the image,
        read row-major. Layer 4: ``[N_images, Nn]`` (``[1, Nn]`` for one
        image), rows = images, columns = bottleneck neurons, so a dead neuron
        is a black column.
    """
    values = layer_values(acts, layer)
    n = values.shape[0]
    if image_index is not None and not (-n <= image_index < n):
        raise InputError("image_index", f"expected an index below {n}, got {image_index}")
    if layer == "layer3":
        one = values[0 if image_index is None else image_index]  # [Nm, h, w]
        return one.reshape(one.shape[0], -1)
    if image_index is None:
        return values
    return values[[image_index]]  # [1, Nn]
