"""Fused trials: K same-shape CAEs trained as one batched model.

A small CAE's step is too small to keep the cores (or a GPU) busy. K configs
of one architecture (same model, Nm, Nn, activation, batch size, data) can run
as one model whose layers hold K independent sets of weights:

* convolutions become grouped convolutions (``groups=K``): model k's maps are
  channels ``k*Nm .. (k+1)*Nm`` of one tensor, channels-last as in
  :class:`~caetune.models.Trainer`; pooling comes before the activation
  (every activation is monotone, so they commute), so the activation runs on
  a quarter of the pixels;
* the fully connected layers keep one weight matrix per model, each applied
  with ``F.linear`` as in a separate run: a batched matmul over stacked
  weights made torch copy the transposed weights every step, which cost the
  large model more than fusing won.

Every model keeps its own weights, seed (initial weights and batch order),
learning rate and Adam state: each has its own fused ``torch.optim.Adam``
over *views* of its slices of the stacked weights, so the update is the very
kernel a separate run uses. Each model's loss is its own per-pixel MSE; their
sum is back-propagated, and since no weight is shared, each model gets
exactly its own gradient. Results therefore equal K separate runs up to the
rounding of the grouped kernels (``tests/models/test_fused.py``).

``torch.func.stack_module_state`` + ``vmap`` was the other way measured;
``benchmarks/train_throughput.py`` has both and README.md the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caetune._errors import InputError
from caetune.models._cae import CAE, KERNEL
from caetune.models._config import TrainConfig
from caetune.models._data import ImageData
from caetune.models._precision import TRAIN, autocast, resolve_precision
from caetune.models._seed import resolve_device, seed_everything
from caetune.models._train import (
    EVAL_BATCH,
    EpochMetrics,
    adam,
    build_model,
    check_converging,
    checkpoint_precision,
    read_checkpoint,
    save_atomic,
    to_float_images,
    tune_allocator,
)

LAYOUT = torch.channels_last
# Fields K fused configs must share: everything but what each trial owns.
OWN_FIELDS = ("seed", "lr")


class FusedCAE(nn.Module):
    """K CAEs of one shape as one module; inputs and outputs are ``[B, K*C, H, W]``.

    Model k reads channels ``k*C .. (k+1)*C`` of the input and writes the
    same channels of the output. Its weights are slices of the stacked
    parameters (:meth:`member_state`, :meth:`load_member`).

    Args:
        models: K CAEs of one shape; their weights are copied in.
    """

    def __init__(self, models: Sequence[CAE]) -> None:
        super().__init__()
        first = models[0]
        self.k = len(models)
        self.shape = first.shape
        self.in_channels = first.shape.in_channels
        self.n_maps = first.shape.n_maps
        self.activation = type(first.to_bottleneck[2])
        kernel = (KERNEL, KERNEL)
        self.convs = nn.ParameterList()  # encoder: [K*Nm, C_in, 3, 3] each
        self.conv_biases = nn.ParameterList()
        self.deconvs = nn.ParameterList()  # decoder, in forward order: [K*Nm, C_out, 3, 3]
        self.deconv_biases = nn.ParameterList()
        n_conv = len(first.shape.conv_sizes)
        for stage in range(n_conv):
            c_in = self.in_channels if stage == 0 else self.n_maps
            self.convs.append(nn.Parameter(torch.empty(self.k * self.n_maps, c_in, *kernel)))
            self.conv_biases.append(nn.Parameter(torch.empty(self.k * self.n_maps)))
        for stage in reversed(range(n_conv)):
            c_out = self.in_channels if stage == 0 else self.n_maps
            self.deconvs.append(nn.Parameter(torch.empty(self.k * self.n_maps, c_out, *kernel)))
            self.deconv_biases.append(nn.Parameter(torch.empty(self.k * c_out)))
        n_features, n_neurons = first.shape.n_features, first.shape.n_neurons

        # The FC layers stay one matrix per model: F.linear's addmm reads a weight transposed
        # in place, where a batched matmul over stacked weights copied them every step.
        def per_model(*shape: int) -> nn.ParameterList:
            return nn.ParameterList(nn.Parameter(torch.empty(*shape)) for _ in range(self.k))

        self.fc_in, self.fc_in_bias = per_model(n_neurons, n_features), per_model(n_neurons)
        self.fc_out, self.fc_out_bias = per_model(n_features, n_neurons), per_model(n_features)
        for index, model in enumerate(models):
            self.load_member(index, model.state_dict())

    def _member_views(
        self, index: int, of: Callable[[nn.Parameter], torch.Tensor] = lambda p: p
    ) -> dict[str, torch.Tensor]:
        """Model ``index``'s slices of ``of(each stacked parameter)``, by CAE state-dict name."""
        views: dict[str, torch.Tensor] = {}
        maps = slice(index * self.n_maps, (index + 1) * self.n_maps)
        n_conv = len(self.convs)
        for stage in range(n_conv):
            views[f"encoder.{3 * stage}.weight"] = of(self.convs[stage])[maps]
            views[f"encoder.{3 * stage}.bias"] = of(self.conv_biases[stage])[maps]
        for position, stage in enumerate(reversed(range(n_conv))):
            c_out = self.in_channels if stage == 0 else self.n_maps
            outs = slice(index * c_out, (index + 1) * c_out)
            views[f"decoder.{3 * position + 1}.weight"] = of(self.deconvs[position])[maps]
            views[f"decoder.{3 * position + 1}.bias"] = of(self.deconv_biases[position])[outs]
        views["to_bottleneck.1.weight"] = of(self.fc_in[index])
        views["to_bottleneck.1.bias"] = of(self.fc_in_bias[index])
        views["from_bottleneck.0.weight"] = of(self.fc_out[index])
        views["from_bottleneck.0.bias"] = of(self.fc_out_bias[index])
        return views

    def member_parameters(self, index: int) -> list[nn.Parameter]:
        """Model ``index``'s weights as parameters sharing the stacked storage (for its Adam)."""
        return [_view_parameter(v) for v in self._member_views(index).values()]

    def member_grads(self, index: int) -> list[torch.Tensor]:
        """Model ``index``'s slices of the stacked gradients, in :meth:`member_parameters` order."""
        return list(self._member_views(index, _grad).values())

    @torch.no_grad()
    def load_member(self, index: int, state: dict[str, torch.Tensor]) -> None:
        """Copies a :class:`CAE` state dict into model ``index``'s slices."""
        for name, view in self._member_views(index).items():
            view.copy_(state[name])

    @torch.no_grad()
    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        """Model ``index``'s weights as a :class:`CAE` state dict (copies)."""
        return {name: view.clone() for name, view in self._member_views(index).items()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, K*C, H, W]`` -> (reconstructions, same shape; bottlenecks ``[K, B, Nn]``)."""
        act = self.activation()
        k, batch = self.k, x.shape[0]
        h = x
        for weight, bias in zip(self.convs, self.conv_biases, strict=True):
            # Pooling first: every activation is monotone, so max and activation commute and
            # the activation (and its backward) runs on a quarter of the pixels.
            h = act(F.max_pool2d(F.conv2d(h, weight, bias, groups=k), 2))
        fh, fw = self.shape.feature_size
        # [B, K*Nm, h, w] -> [K, B, Nm*h*w]: each model flattens its maps as a CAE does.
        flat = h.reshape(batch, k, -1).transpose(0, 1)
        layer4 = act(
            torch.stack([F.linear(flat[i], self.fc_in[i], self.fc_in_bias[i]) for i in range(k)])
        )
        back = act(
            torch.stack(
                [F.linear(layer4[i], self.fc_out[i], self.fc_out_bias[i]) for i in range(k)]
            )
        )
        h = back.transpose(0, 1).reshape(batch, k * self.n_maps, fh, fw)
        h = h.contiguous(memory_format=LAYOUT)
        sizes = list(reversed(self.shape.conv_sizes))
        last = len(self.deconvs) - 1
        for stage, (weight, bias) in enumerate(zip(self.deconvs, self.deconv_biases, strict=True)):
            h = F.interpolate(h, size=sizes[stage], mode="nearest")
            h = F.conv_transpose2d(h, weight, bias, groups=k)
            h = torch.sigmoid(h) if stage == last else act(h)
        return h, layer4


def _grad(param: nn.Parameter) -> torch.Tensor:
    if param.grad is None:
        raise RuntimeError("backward left a fused parameter without a gradient")
    return param.grad


def _view_parameter(view: torch.Tensor) -> nn.Parameter:
    """A leaf parameter that shares ``view``'s memory: an in-place update writes the stack."""
    return nn.Parameter(view.detach(), requires_grad=True)


def _check_alike(configs: Sequence[TrainConfig]) -> None:
    if not configs:
        raise InputError("configs", "expected at least one TrainConfig")
    first = {k: v for k, v in configs[0].to_dict().items() if k not in OWN_FIELDS}
    for index, config in enumerate(configs[1:], start=1):
        other = {k: v for k, v in config.to_dict().items() if k not in OWN_FIELDS}
        for name, value in first.items():
            if other[name] != value:
                raise InputError(
                    f"configs[{index}].{name}",
                    f"fused trials share every field but {', '.join(OWN_FIELDS)}; "
                    f"expected {value!r}, got {other[name]!r}",
                )


@dataclass
class FusedMember:
    """One model of a :class:`FusedTrainer`, shaped like a Trainer for metrics code.

    Attributes:
        config: Its own config.
        model: A :class:`CAE` holding its current weights (a copy).
        x_val: The shared validation images.
        epoch: Epochs done.
        history: Its :class:`EpochMetrics`.
        precision: The resolved precision.
    """

    config: TrainConfig
    model: CAE
    x_val: torch.Tensor
    epoch: int
    history: list[EpochMetrics]
    precision: str


class FusedTrainer:
    """Trains K same-shape configs as one :class:`FusedCAE`; each as a Trainer would alone.

    Args:
        configs: K configs differing at most in ``seed`` and ``lr``.
        data: Training and validation images (shared).
        device: Overrides the configs' device.
        threads: Sets torch's intra-op threads (process-wide) when given.
        use: What the runs are for (resolves ``precision: auto``).

    Attributes:
        histories: One list of :class:`EpochMetrics` per model.
        epoch: Epochs done (all models alike).
    """

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        data: ImageData,
        *,
        device: str | torch.device | None = None,
        threads: int | None = None,
        use: str = TRAIN,
    ) -> None:
        configs = list(configs)
        _check_alike(configs)
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InputError("threads", f"expected an integer >= 1, got {threads!r}")
            torch.set_num_threads(threads)
        self.configs = configs
        first = configs[0]
        self.device = resolve_device(device if device is not None else first.device)
        self.precision = resolve_precision(first.precision, self.device, use=use)
        if self.device.type == "cpu":
            tune_allocator()
        members = []
        for config in configs:
            seed_everything(config.seed)  # as a Trainer would: same initial weights
            members.append(
                build_model(config, in_channels=data.channels, image_size=data.image_size)
            )
        self.model = FusedCAE(members).to(self.device)
        self.model.to(memory_format=LAYOUT)
        self.optimizers = [
            adam(self.model.member_parameters(i), config.lr) for i, config in enumerate(configs)
        ]
        self.x_train = to_float_images(data.train, self.device).contiguous(memory_format=LAYOUT)
        self.x_val = to_float_images(data.val, self.device).contiguous(memory_format=LAYOUT)
        self.generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        self.epoch = 0
        self.histories: list[list[EpochMetrics]] = [[] for _ in configs]

    @property
    def k(self) -> int:
        return len(self.configs)

    @property
    def n_epochs(self) -> int:
        return self.configs[0].n_epochs

    def _stack_batches(self, images: torch.Tensor, indexes: list[torch.Tensor]) -> torch.Tensor:
        """Model k's images ``images[indexes[k]]`` as channels ``k*C..`` of one batch."""
        batch, (c, h, w) = indexes[0].shape[0], images.shape[1:]
        out = torch.empty(batch, self.k, c, h, w, device=images.device, dtype=images.dtype)
        for member, index in enumerate(indexes):
            torch.index_select(images, 0, index, out=out[:, member])
        return out.view(batch, self.k * c, h, w).contiguous(memory_format=LAYOUT)

    def _losses(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-model summed squared error, ``[K]``, over ``[B, K*C, H, W]`` tensors."""
        error = (recon.float() - target).square()  # [B, K*C, H, W]
        return error.unflatten(1, (self.k, -1)).sum(dim=(0, 2, 3, 4))

    def fit(self, *, callback: Callable[[FusedTrainer], None] | None = None) -> None:
        """Trains until ``n_epochs``; ``callback`` after each epoch."""
        while self.epoch < self.n_epochs:
            self.run_epoch()
            if callback is not None:
                callback(self)

    def run_epoch(self) -> list[EpochMetrics]:
        """One pass of every model over its own batch order, then each one's val MSE.

        Raises:
            TrainingDiverged: A model's training loss became NaN or infinite
                (the others cannot go on alone in this fused run).
        """
        start = time.perf_counter()
        train_mse = self._train_one_epoch()
        mid = time.perf_counter()
        for config, value in zip(self.configs, train_mse, strict=True):
            check_converging(value, epoch=self.epoch + 1, config=config, name_seed=True)
        val_mse = self.evaluate()
        n_images = self.x_train.shape[0]
        seconds = mid - start
        self.epoch += 1
        metrics = [
            EpochMetrics(
                epoch=self.epoch,
                train_mse=t,
                val_mse=v,
                train_seconds=seconds,
                eval_seconds=time.perf_counter() - mid,
                images_per_second=n_images / max(seconds, 1e-9),  # per model
            )
            for t, v in zip(train_mse, val_mse, strict=True)
        ]
        for history, m in zip(self.histories, metrics, strict=True):
            history.append(m)
        return metrics

    def _train_one_epoch(self) -> list[float]:
        x, model = self.x_train, self.model
        model.train()
        n, batch_size = x.shape[0], self.configs[0].batch_size
        orders = [torch.randperm(n, generator=g).to(self.device) for g in self.generators]
        totals = torch.zeros(self.k, device=self.device, dtype=torch.float64)
        pixels = x[0].numel()
        for start in range(0, n, batch_size):
            indexes = [order[start : start + batch_size] for order in orders]
            b = indexes[0].shape[0]
            batch = self._stack_batches(x, indexes)
            with autocast(self.precision, self.device):
                recon, _ = model(batch)
            losses = self._losses(recon, batch) / (b * pixels)  # [K]: each model's mean
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            losses.sum().backward()
            self._hand_over_grads()
            for optimizer in self.optimizers:
                optimizer.step()
            totals.add_(losses.detach(), alpha=b)
        return [float(t) / n for t in totals.cpu()]  # the one device sync of the epoch

    def _hand_over_grads(self) -> None:
        """Each model's parameters get their slices of the stacked gradients (views, no copy)."""
        for index, optimizer in enumerate(self.optimizers):
            params = optimizer.param_groups[0]["params"]
            grads = self.model.member_grads(index)
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor | None = None) -> list[float]:
        """Each model's per-pixel MSE over ``images`` (default: validation)."""
        x = self.x_val if images is None else images
        self.model.eval()
        totals = torch.zeros(self.k, device=self.device, dtype=torch.float64)
        for start in range(0, x.shape[0], EVAL_BATCH):
            batch = x[start : start + EVAL_BATCH]
            if batch.dtype == torch.uint8:
                batch = to_float_images(batch, self.device)
            batch = batch.to(self.device).contiguous(memory_format=LAYOUT)
            index = torch.arange(batch.shape[0], device=self.device)
            stacked = self._stack_batches(batch, [index] * self.k)
            with autocast(self.precision, self.device):
                recon, _ = self.model(stacked)
            totals += self._losses(recon, stacked).double()
        return [float(t) / x.numel() for t in totals.cpu()]

    def members(self) -> list[FusedMember]:
        """Each model as a stand-alone CAE with its config and history (copies)."""
        out = []
        for index, config in enumerate(self.configs):
            model = build_model(
                config,
                in_channels=self.model.in_channels,
                image_size=self.model.shape.image_size,
            )
            model.load_state_dict(self.model.member_state(index))
            model.to(self.device).to(memory_format=LAYOUT)
            out.append(
                FusedMember(
                    config=config,
                    model=model,
                    x_val=self.x_val,
                    epoch=self.epoch,
                    history=list(self.histories[index]),
                    precision=self.precision,
                )
            )
        return out

    # -- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "configs": [c.to_dict() for c in self.configs],
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "epoch": self.epoch,
            "precision": self.precision,
            "histories": [[m.to_dict() for m in h] for h in self.histories],
            "rng": {
                "generators": [g.get_state() for g in self.generators],
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a :meth:`state_dict` of the same K configs.

        Raises:
            InputError: The state holds other configs, or another precision.
        """
        saved = [TrainConfig.from_dict(dict(c)) for c in state.get("configs", [])]
        if [_identity(c) for c in saved] != [_identity(c) for c in self.configs]:
            raise InputError("checkpoint", "it holds other fused configs than this run's")
        self.precision = checkpoint_precision(state, self.configs[0].precision, self.precision)
        self.model.load_state_dict(state["model"])
        for optimizer, saved_state in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved_state)
        self.epoch = int(state["epoch"])
        self.histories = [[EpochMetrics(**m) for m in h] for h in state["histories"]]
        rng = state["rng"]
        for generator, saved_rng in zip(self.generators, rng["generators"], strict=True):
            generator.set_state(saved_rng)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])

    def save_checkpoint(self, path: str | Path) -> Path:
        """Writes the whole fused state atomically."""
        return save_atomic(self.state_dict(), path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restores a checkpoint written by :meth:`save_checkpoint` (read safely)."""
        self.load_state_dict(read_checkpoint(path))


def _identity(config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match: every field but the epoch budget (a resume may extend it)."""
    values = config.to_dict()
    values.pop("n_epochs")
    return values
