"""The image pool a format's reader returns, and the conversions every reader shares.

A reader (:mod:`caetune.models._formats`) turns a :class:`Request` into a
:class:`Pool`: all images the source offers, read on demand. Decoding is
deferred until the subset is drawn, so a small subset of a large image folder
decodes only the images it uses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

# Images converted per step: bounds the int32/float scratch of luma and resize.
_CHUNK = 4096


@dataclass(frozen=True)
class Request:
    """What a registry loader is asked for (options already validated)."""

    path: Path | None  # for npz:PATH and folder:PATH
    data_dir: Path
    download: bool
    image_size: int | None  # the entry's default already applied
    grayscale: bool | None


@dataclass
class Pool:
    """All images a source offers, read on demand.

    Attributes:
        size: Number of images.
        read: Sorted indices ``int64 [n]`` -> ``uint8 [n, C, H, W]`` at the
            requested size and channels, contiguous.
        labels: ``int64 [size]`` or ``None``.
        source: What was read, for ``ImageData.info``.
        classes: Label names, or ``None``.
    """

    size: int
    read: Callable[[torch.Tensor], torch.Tensor]
    labels: torch.Tensor | None
    source: str
    classes: list[str] | None = None


# --- conversions ---------------------------------------------------------------


def _luma(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 3, H, W]`` -> ``uint8 [N, 1, H, W]``, bit-exact with PIL's ``convert("L")``."""
    rgb = images.to(torch.int32)
    # PIL's fixed-point ITU-R 601-2 weights (Convert.c, L24), rounded.
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return luma.to(torch.uint8).unsqueeze(1)


def _convert(
    images: torch.Tensor, *, image_size: int | None, grayscale: bool | None
) -> torch.Tensor:
    """Channels then size of ``uint8 [N, C, H, W]`` (C in 1, 3), chunk by chunk."""
    out = []
    for chunk in images.split(_CHUNK):
        if grayscale is True and chunk.shape[1] == 3:
            chunk = _luma(chunk)
        elif grayscale is False and chunk.shape[1] == 1:
            chunk = chunk.expand(-1, 3, -1, -1)
        if image_size is not None and tuple(chunk.shape[-2:]) != (image_size, image_size):
            from torchvision.transforms.v2 import functional as TF

            # Antialiased bilinear on uint8: torchvision's match of PIL's resize.
            chunk = TF.resize(chunk.contiguous(), [image_size, image_size], antialias=True)
        out.append(chunk.contiguous())
    return torch.cat(out) if len(out) > 1 else out[0]


def array_pool(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    request: Request,
    *,
    source: str,
    classes: list[str] | None = None,
) -> Pool:
    """A pool over images already in memory, ``uint8 [N, C, H, W]``."""

    def read(indices: torch.Tensor) -> torch.Tensor:
        return _convert(images[indices], image_size=request.image_size, grayscale=request.grayscale)

    return Pool(
        size=int(images.shape[0]),
        read=read,
        labels=None if labels is None else labels.to(torch.int64),
        source=source,
        classes=classes,
    )


def decode_image(image: Image.Image, *, size: int, mode: str) -> np.ndarray:
    """One PIL image -> ``uint8 [size, size]`` (mode ``L``) or ``[size, size, 3]`` (``RGB``)."""
    from PIL import Image

    # JPEGs only: decode at 1/2, 1/4 or 1/8 scale while staying >= size, far
    # cheaper than decoding in full and then shrinking.
    image.draft(image.mode, (size, size))
    image = image.convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cpus)


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on threads, in order; the first error in order is raised.

    Work goes out in a few chunks per thread, not item by item: for small
    images the per-task overhead would exceed the decoding PIL does without
    the GIL.
    """
    items = list(items)
    workers = _workers()
    if workers == 1 or len(items) < 2 * workers:
        return [fn(item) for item in items]
    step = math.ceil(len(items) / (4 * workers))
    chunks = [items[i : i + step] for i in range(0, len(items), step)]
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        return [
            result
            for chunk in executor.map(lambda part: [fn(item) for item in part], chunks)
            for result in chunk
        ]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def file_pool(
    size: int,
    decode: Callable[[int], np.ndarray],
    labels: torch.Tensor | None,
    *,
    image_size: int,
    mode: str,
    source: str,
    classes: list[str] | None,
) -> Pool:
    """A pool over image files, decoded on threads when read."""
    channels = 1 if mode == "L" else 3

    def read(indices: torch.Tensor) -> torch.Tensor:
        out = np.empty(
            (len(indices), image_size, image_size, channels), dtype=np.uint8
        )  # [n, H, W, C]

        def fill(slot_index: tuple[int, int]) -> None:
            slot, index = slot_index
            out[slot] = decode(index).reshape(image_size, image_size, channels)

        parallel_map(fill, enumerate(indices.tolist()))
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    return Pool(size=size, read=read, labels=labels, source=source, classes=classes)


def one_line(err: BaseException) -> str:
    """An error's message on one line (for :class:`~caetune.InputError`), else its type's name."""
    text = " ".join(str(err).split())
    return text or type(err).__name__
