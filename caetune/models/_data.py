"""Datasets as two uint8 tensors, loaded once and kept whole in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageData:
    """A dataset split into training and validation images.

    Attributes:
        name: The dataset spec it came from (``mnist-10k``, ``npz:/x.npz``).
        train: ``uint8 [N, C, H, W]``, contiguous.
        val: ``uint8 [M, C, H, W]``, contiguous.
        train_labels: ``int64 [N]`` or ``None`` when the source has none.
        val_labels: ``int64 [M]`` or ``None``.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.shape[2]), int(self.train.shape[3])
