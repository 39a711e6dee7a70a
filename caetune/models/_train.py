"""The training loop: whole dataset on the device, batches by permutation.

No DataLoader sits on the hot path: the images are converted once to one
contiguous float tensor on the training device, and each epoch draws a seeded
permutation and slices it into batches. On the CPU a run is deterministic for
a given seed; a checkpoint holds model, optimizer, epoch, history and every
RNG state, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from caetune.models._cae import CAE
from caetune.models._config import TrainConfig
from caetune.models._data import ImageData
from caetune.models._seed import resolve_device, seed_everything

EVAL_BATCH = 1024


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run cannot go on."""


@dataclass
class EpochMetrics:
    """What one epoch reports to callbacks, the CLI and the search."""

    epoch: int  # 1-based: the number of epochs done
    train_mse: float
    val_mse: float
    train_seconds: float
    eval_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[EpochMetrics, "Trainer"], None]


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


class Trainer:
    """Trains one CAE on one dataset; Adam on the mean squared error.

    Args:
        config: The run's hyperparameters (``n_epochs`` is the budget).
        data: Training and validation images.
        device: Overrides ``config.device``.
    """

    def __init__(self, config: TrainConfig, data: ImageData, *, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = resolve_device(device if device is not None else config.device)
        seed_everything(config.seed)
        self.model = build_model(config, in_channels=data.channels, image_size=data.image_size).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.x_train = to_float_images(data.train, self.device)  # [N, C, H, W]
        self.x_val = to_float_images(data.val, self.device)  # [M, C, H, W]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.history: list[EpochMetrics] = []

    def fit(self, *, callback: EpochCallback | None = None, progress: bool = False) -> list[EpochMetrics]:
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

            bar = tqdm(total=self.config.n_epochs, initial=self.epoch, unit="epoch", dynamic_ncols=True)
        try:
            while self.epoch < self.config.n_epochs:
                metrics = self.run_epoch()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(train_mse=f"{metrics.train_mse:.5f}", val_mse=f"{metrics.val_mse:.5f}")
                if callback is not None:
                    callback(metrics, self)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def run_epoch(self) -> EpochMetrics:
        """One pass over the training images, then the validation MSE."""
        start = time.perf_counter()
        train_mse = self._train_one_epoch()
        if not math.isfinite(train_mse):
            raise TrainingDiverged(f"training loss became {train_mse} in epoch {self.epoch + 1}")
        mid = time.perf_counter()
        val_mse = self.evaluate()
        metrics = EpochMetrics(self.epoch + 1, train_mse, val_mse, mid - start, time.perf_counter() - mid)
        self.epoch += 1
        self.history.append(metrics)
        return metrics

    def _train_one_epoch(self) -> float:
        model, optimizer, x = self.model, self.optimizer, self.x_train
        model.train()
        n, batch_size = x.shape[0], self.config.batch_size
        order = torch.randperm(n, generator=self.generator).to(self.device)
        total = torch.zeros((), device=self.device)
        for start in range(0, n, batch_size):
            batch = x.index_select(0, order[start : start + batch_size])  # [b, C, H, W]
            recon, _ = model(batch)
            loss = F.mse_loss(recon, batch)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
            total += loss.detach() * batch.shape[0]
        return float(total) / n  # one device sync per epoch

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor | None = None) -> float:
        """Mean squared error per pixel over ``images`` (default: validation)."""
        x = self.x_val if images is None else images
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for start in range(0, x.shape[0], EVAL_BATCH):
            batch = x[start : start + EVAL_BATCH]
            recon, _ = self.model(batch)
            total += F.mse_loss(recon, batch, reduction="sum").double()
        return float(total) / x.numel()

    # -- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict:
        state = {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
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
        path = Path(path)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
