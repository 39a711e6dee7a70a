"""The training loop: whole dataset on the device, batches by permutation.

No DataLoader sits on the hot path: the images are converted once to one
contiguous float tensor on the training device, and each epoch draws a seeded
permutation and gathers each batch into one reused buffer. On the CPU a run is
deterministic for a given seed (and thread count); a checkpoint holds model,
optimizer, epoch, history and every RNG state, so a resumed run continues
exactly where it stopped.

What makes a step fast on a small CPU (measured by
``benchmarks/train_throughput.py``; see ``benchmarks/README.md``):

* fused Adam: one kernel per step instead of a handful of passes over every
  parameter; the optimizer, not the matmuls, was half of a plain step;
* channels-last weights and images: the transposed convolution has an oneDNN
  kernel only for channels-last tensors, and its generic fallback dominated
  the small models;
* :func:`tune_allocator`: the big weight gradients are allocated and freed
  every step, and glibc would otherwise hand them back to the kernel each
  time and fault them in again (zeroed) on the next step;
* one host sync per epoch: losses are summed on the device.

The precision (``config.precision``) is resolved once per trainer, for its
device and its use (:mod:`caetune.models._precision`); the resolved value is
:attr:`Trainer.precision` and is saved with every checkpoint, so a resumed
run goes on in the precision it started in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from caetune._errors import InputError
from caetune.models._cae import CAE
from caetune.models._config import TrainConfig
from caetune.models._data import ImageData
from caetune.models._precision import TRAIN, autocast, resolve_precision
from caetune.models._seed import resolve_device, seed_everything

EVAL_BATCH = 1024

# Config fields that define the model: a checkpoint's weights only fit a model alike.
MODEL_FIELDS = ("model", "n_maps", "n_neurons", "activation")

# glibc's mallopt parameters (malloc.h) and the values tune_allocator sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_ALLOCATOR_LIMIT = 1 << 30  # bytes: blocks below this stay in (and return to) the heap


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run cannot go on."""


def check_converging(
    train_mse: float, *, epoch: int, config: TrainConfig, name_seed: bool = False
) -> None:
    """Raises :class:`TrainingDiverged` when an epoch's training loss is NaN or infinite.

    Args:
        train_mse: The epoch's training loss.
        epoch: The epoch's 1-based number.
        config: The run's config (its lr and batch size go in the message).
        name_seed: Name the seed too (a fused run trains several seeds at once).
    """
    if not math.isfinite(train_mse):
        seed = f"seed={config.seed}, " if name_seed else ""
        raise TrainingDiverged(
            f"training loss became {train_mse} in epoch {epoch} "
            f"({seed}lr={config.lr}, batch_size={config.batch_size})"
        )


@dataclass
class EpochMetrics:
    """What one epoch reports to callbacks, the CLI and the search.

    Attributes:
        epoch: 1-based: the number of epochs done.
        train_mse: Mean over the epoch's batches (weighted by batch size) of
            the per-pixel MSE, measured while the weights moved.
        val_mse: Per-pixel MSE on the validation images after the epoch.
        train_seconds: Wall time of the training pass.
        eval_seconds: Wall time of the validation pass.
        images_per_second: Training images per second of ``train_seconds``
            (0.0 in histories written before it was recorded).
    """

    epoch: int
    train_mse: float
    val_mse: float
    train_seconds: float
    eval_seconds: float
    images_per_second: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[EpochMetrics, "Trainer"], None]


@functools.cache
def tune_allocator() -> bool:
    """Keeps big freed blocks in the process heap instead of returning them to the OS.

    A training step frees and re-allocates the same buffers every time; for
    Model 1 at Nn=2560 the two weight gradients are 55 MB each. glibc serves
    blocks above ``M_MMAP_THRESHOLD`` (at most 32 MiB by its dynamic rule) with
    a fresh ``mmap`` and unmaps them on ``free``, and trims the heap top above
    ``M_TRIM_THRESHOLD``; either way the next step page-faults every 4 KiB page
    back in, zero-filled by the kernel (13.5 k faults per 55 MB buffer). That
    cost up to 1.6x per step on a 2-core CPU. Raising both limits to 1 GiB
    makes the heap keep and reuse them.

    Process-wide and applied once: the process keeps up to 1 GiB of freed
    memory for reuse. It covers the main thread (and the main arena); a
    thread that already has its own glibc arena (Ray Tune trains in one)
    keeps mapping its big blocks afresh, because glibc deletes a thread
    heap once it is empty. Start such worker processes with
    ``GLIBC_TUNABLES`` set to :data:`ALLOCATOR_TUNABLES` to cover them too.
    A no-op (``False``) off Linux or without glibc.

    Returns:
        Whether the allocator was tuned.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not mallopt(_M_MMAP_THRESHOLD, _ALLOCATOR_LIMIT):
        # Older glibc caps the threshold at 32 MiB; then no block is mmapped at all.
        mallopt(_M_MMAP_MAX, 0)
    return bool(mallopt(_M_TRIM_THRESHOLD, _ALLOCATOR_LIMIT))


# The same tuning as an environment variable, for processes started by others
# (a Ray worker's runtime_env): arena_max=1 also puts every thread on the main heap.
ALLOCATOR_TUNABLES = (
    f"glibc.malloc.mmap_threshold={_ALLOCATOR_LIMIT}:glibc.malloc.trim_threshold={_ALLOCATOR_LIMIT}"
    ":glibc.malloc.arena_max=1"
)


def build_model(config: TrainConfig, *, in_channels: int, image_size: tuple[int, int]) -> CAE:
    """The CAE a config describes, for images of the given shape."""
    return CAE(
        in_channels=in_channels,
        image_size=image_size,
        n_maps=config.n_maps,
        n_neurons=config.n_neurons,
        n_conv=config.n_conv,
        activation=config.activation,
    )


def to_float_images(images: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` -> contiguous ``float32`` in [0, 1] on ``device``."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    return images.to(device).float().div_(255.0).contiguous()


def adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Fused Adam where this torch has a kernel for the device, else the foreach one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr, foreach=True)


class Trainer:
    """Trains one CAE on one dataset; Adam on the mean squared error.

    Args:
        config: The run's hyperparameters (``n_epochs`` is the budget).
        data: Training and validation images.
        device: Overrides ``config.device``.
        threads: Sets torch's intra-op threads (process-wide) when given;
            results on the CPU are reproducible for a fixed thread count.
        use: What the run is for (``train``, ``screening``, ``confirmation``):
            ``precision: auto`` resolves per use (see
            :mod:`caetune.models._precision`).

    Attributes:
        model: The CAE, channels-last (its outputs are channels-last strided;
            use ``reshape``/``flatten``, not ``view``, to flatten them).
        x_train: ``float32 [N, C, H, W]`` in [0, 1] on the device.
        x_val: ``float32 [M, C, H, W]`` in [0, 1] on the device.
        epoch: Epochs done so far.
        history: One :class:`EpochMetrics` per epoch done.
        precision: The resolved precision, ``fp32`` or ``bf16``.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: ImageData,
        *,
        device: str | torch.device | None = None,
        threads: int | None = None,
        use: str = TRAIN,
    ) -> None:
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise InputError("threads", f"expected an integer >= 1, got {threads!r}")
            torch.set_num_threads(threads)
        self.config = config
        self.device = resolve_device(device if device is not None else config.device)
        self.precision = resolve_precision(config.precision, self.device, use=use)
        if self.device.type == "cpu":
            tune_allocator()
        else:
            # Fixed shapes every step: let cuDNN pick its fastest kernels once.
            torch.backends.cudnn.benchmark = True
        seed_everything(config.seed)
        self.model = build_model(config, in_channels=data.channels, image_size=data.image_size)
        self.model.to(self.device).to(memory_format=torch.channels_last)
        self.optimizer = adam(self.model.parameters(), config.lr)
        self.x_train = self._resident(data.train)  # [N, C, H, W]
        self.x_val = self._resident(data.val)  # [M, C, H, W]
        # Reused by every step: index_select writes each batch here.
        self._batch = torch.empty_like(self.x_train[: config.batch_size])  # [B, C, H, W]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.history: list[EpochMetrics] = []

    def _resident(self, images: torch.Tensor) -> torch.Tensor:
        return to_float_images(images, self.device).contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        return autocast(self.precision, self.device)

    def fit(
        self, *, callback: EpochCallback | None = None, progress: bool = False
    ) -> list[EpochMetrics]:
        """Trains until ``config.n_epochs`` epochs are done (continuing a resumed run).

        Args:
            callback: Called after every epoch with its metrics and this trainer.
            progress: Show a progress bar (for a person at a terminal).

        Raises:
            TrainingDiverged: The training loss became NaN or infinite.
        """
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.config.n_epochs, initial=self.epoch, unit="epoch", dynamic_ncols=True
            )
        try:
            while self.epoch < self.config.n_epochs:
                metrics = self.run_epoch()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        train_mse=f"{metrics.train_mse:.5f}",
                        val_mse=f"{metrics.val_mse:.5f}",
                        img_s=f"{metrics.images_per_second:.0f}",
                    )
                if callback is not None:
                    callback(metrics, self)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def run_epoch(self) -> EpochMetrics:
        """One pass over the training images, then the validation MSE.

        Raises:
            TrainingDiverged: The training loss became NaN or infinite.
        """
        start = time.perf_counter()
        train_mse = self._train_one_epoch()  # syncs with the device
        mid = time.perf_counter()
        check_converging(train_mse, epoch=self.epoch + 1, config=self.config)
        val_mse = self.evaluate()
        n_images = self.x_train.shape[0]
        metrics = EpochMetrics(
            epoch=self.epoch + 1,
            train_mse=train_mse,
            val_mse=val_mse,
            train_seconds=mid - start,
            eval_seconds=time.perf_counter() - mid,
            images_per_second=n_images / max(mid - start, 1e-9),
        )
        self.epoch += 1
        self.history.append(metrics)
        return metrics

    def _train_one_epoch(self) -> float:
        model, optimizer, x = self.model, self.optimizer, self.x_train
        model.train()
        n, batch_size = x.shape[0], self.config.batch_size
        order = torch.randperm(n, generator=self.generator).to(self.device)  # [N]
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            batch = self._batch[: index.shape[0]]  # [b, C, H, W], channels-last
            torch.index_select(x, 0, index, out=batch)
            with self._autocast():
                recon, _ = model(batch)
                loss = F.mse_loss(recon.float(), batch)
            # set_to_none: backward then hands each fresh gradient over as .grad;
            # zeroing and accumulating into kept buffers were two more passes.
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total.add_(loss.detach(), alpha=index.shape[0])
        return float(total) / n  # the one device sync of the epoch

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor | None = None) -> float:
        """Mean squared error per pixel over ``images`` (default: validation).

        Args:
            images: ``float [N, C, H, W]`` in [0, 1], or ``uint8`` (converted);
                moved to the trainer's device in chunks.
        """
        x = self.x_val if images is None else images
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for start in range(0, x.shape[0], EVAL_BATCH):
            batch = x[start : start + EVAL_BATCH]
            batch = (
                to_float_images(batch, self.device)
                if batch.dtype == torch.uint8
                else batch.to(self.device)
            )
            with self._autocast():
                recon, _ = self.model(batch)
            total += F.mse_loss(recon.float(), batch, reduction="sum").double()
        return float(total) / x.numel()

    # -- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict:
        state: dict[str, Any] = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "precision": self.precision,
            "history": [m.to_dict() for m in self.history],
            "rng": {
                "generator": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
            },
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restores a :meth:`state_dict`; its model must match this trainer's config.

        A checkpoint that records its precision sets this trainer's when the
        config says ``auto``: a resumed run goes on as it started.

        Raises:
            InputError: The state holds a differently shaped model, or was
                trained in another precision than the config asks for.
        """
        saved = state.get("config", {})
        for name in MODEL_FIELDS:
            if name in saved and saved[name] != getattr(self.config, name):
                raise InputError(
                    "checkpoint",
                    f"it holds a model with {name}={saved[name]!r}, "
                    f"this run has {name}={getattr(self.config, name)!r}",
                )
        self.precision = checkpoint_precision(state, self.config.precision, self.precision)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = [EpochMetrics(**m) for m in state["history"]]
        rng = state["rng"]
        self.generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Writes the full training state atomically (a crash never leaves half a file)."""
        return save_atomic(self.state_dict(), path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restores a checkpoint written by :meth:`save_checkpoint`."""
        # On the CPU first: RNG states must stay CPU tensors, and load_state_dict
        # moves model and optimizer tensors to their parameters' device.
        self.load_state_dict(read_checkpoint(path))


def save_atomic(state: dict, path: str | Path) -> Path:
    """``torch.save`` to a temporary name, then a rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def checkpoint_precision(state: dict, asked: str, resolved: str) -> str:
    """The precision a run resumed from ``state`` trains in (see :meth:`Trainer.load_state_dict`).

    Args:
        state: A checkpoint; one written before precisions were recorded was fp32.
        asked: The config's precision (``auto`` follows the checkpoint).
        resolved: What ``asked`` resolved to for a fresh run.
    """
    saved = state.get("precision", "fp32")
    if asked != "auto" and saved != resolved:
        raise InputError(
            "checkpoint", f"it was trained with precision {saved}, this run asks for {asked}"
        )
    return saved


def read_checkpoint(path: str | Path) -> dict:
    """Reads a Trainer checkpoint without running code from it.

    ``torch.load(weights_only=True)`` refuses every Python object but tensors
    and plain data; a Trainer checkpoint also holds NumPy's RNG state, so
    exactly the NumPy types that state needs are allowed. A checkpoint from
    someone else's run (a shared bucket) therefore cannot execute anything.

    Raises:
        pickle.UnpicklingError: The file holds other Python objects.
        Exception: Whatever ``torch.load`` raises for a damaged file.
    """
    with torch.serialization.safe_globals(_checkpoint_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoint_globals() -> list:
    reconstruct = (getattr(np, "_core", None) or np.core).multiarray._reconstruct
    # NumPy 2 pickles name it numpy._core..., NumPy 1 numpy.core...: accept either writer.
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
