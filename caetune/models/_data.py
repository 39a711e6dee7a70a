"""Datasets as two uint8 tensors, loaded once and kept whole in memory.

A dataset is named by a *spec*: a registry name (``mnist-10k``, ``mnist``,
``fashion-mnist``, ``svhn``, ``cifar10``, ``caltech101``), ``npz:PATH`` or
``folder:PATH``. :func:`load_dataset` turns a spec into an :class:`ImageData`
of contiguous ``uint8 [N, C, H, W]`` train and validation tensors. Each
format's reader lives in :mod:`caetune.models._formats`.

Splits: every source is treated as one pool of images. A seeded permutation
picks ``subset`` images from it (all when ``None``) and holds out
``val_fraction`` of them for validation. Datasets with an official test split
(MNIST, Fashion-MNIST, SVHN, CIFAR-10) contribute only their *train* split to
the pool, so the official test split stays untouched for the user's own final
evaluation. ``mnist-10k`` is the exception by necessity: it is the MNIST test
split vendored with the package (the only MNIST that works offline), split
8,000 / 2,000 by default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from caetune._errors import InputError
from caetune.models._config import DATA_FIELDS
from caetune.models._formats import (
    idx_loader,
    load_caltech101,
    load_cifar10,
    load_folder,
    load_mnist_10k,
    load_npz,
    load_svhn,
)
from caetune.models._pool import Pool, Request

if TYPE_CHECKING:
    from caetune.models._config import TrainConfig


@dataclass
class ImageData:
    """A dataset split into training and validation images.

    Attributes:
        name: The dataset spec it came from (``mnist-10k``, ``npz:/x.npz``).
        train: ``uint8 [N, C, H, W]``, contiguous.
        val: ``uint8 [M, C, H, W]``, contiguous.
        train_labels: ``int64 [N]`` or ``None`` when the source has none.
        val_labels: ``int64 [M]`` or ``None``.
        info: Where the images came from, JSON-friendly: ``source`` (what was
            read), ``pool_size`` (images the source offered before ``subset``)
            and ``classes`` (label names, or ``None``).
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


@dataclass(frozen=True)
class DatasetEntry:
    """One entry of :data:`DATASETS`.

    Attributes:
        name: The registry name, or the prefix of a ``PREFIX:PATH`` spec.
        description: One line for help texts.
        loader: Builds the image pool for a request.
        takes_path: The spec is ``name:PATH``.
        default_image_size: Square size used when ``image_size`` is ``None``;
            ``None`` keeps the dataset's own size.
    """

    name: str
    description: str
    loader: Callable[[Request], Pool]
    takes_path: bool = False
    default_image_size: int | None = None

    @property
    def usage(self) -> str:
        """How the spec is written (``mnist``, ``npz:PATH``)."""
        return f"{self.name}:PATH" if self.takes_path else self.name


def default_data_dir() -> Path:
    """torchvision's root when none is given: ``$CAETUNE_DATA_DIR`` or ``~/.cache/caetune/data``.

    An absolute default, because Ray Tune runs trials in their own working
    directories.
    """
    return (
        Path(os.environ.get("CAETUNE_DATA_DIR") or "~/.cache/caetune/data").expanduser().absolute()
    )


def dataset_names() -> tuple[str, ...]:
    """Every accepted spec form, for help texts and errors (``npz:PATH`` included)."""
    return tuple(entry.usage for entry in DATASETS.values())


def load_dataset(
    spec: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    grayscale: bool | None = None,
    val_fraction: float = 0.2,
    subset: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Loads a dataset whole and splits it, seeded, into train and validation.

    Args:
        spec: A name of :data:`DATASETS`, ``npz:PATH`` (``images`` uint8
            ``[N, H, W]`` or ``[N, H, W, C]`` with C in 1, 3; optional
            ``labels``) or ``folder:PATH`` (image files, searched recursively;
            first-level sub-folders become labels).
        data_dir: torchvision's root for the torchvision datasets; defaults to
            :func:`default_data_dir`.
        download: Let torchvision fetch a missing dataset.
        image_size: Square size to resize to (aspect ratio is not kept).
            ``None`` keeps the dataset's own size, except Caltech-101 (64) and
            folders (32), whose images differ in size.
        grayscale: ``True`` gives 1 channel (PIL's ITU-R 601-2 luma), ``False``
            3 (grey replicated); ``None`` keeps the dataset's channels:
            Caltech-101 is RGB, a folder is grey only when all its images are.
        val_fraction: Share of the (subset of) images held out for validation.
        subset: Use only this many images, drawn seeded before the split.
        seed: Seeds the subset and the split.

    Returns:
        The two splits; indices within each split keep the source's order.

    Raises:
        InputError: Bad options, unknown spec, missing or unreadable files, or
            a split that would be empty.
    """
    entry, path = _parse_spec(spec)
    _check_options(
        image_size=image_size,
        grayscale=grayscale,
        val_fraction=val_fraction,
        subset=subset,
        seed=seed,
    )
    if not isinstance(download, bool):
        raise InputError("download", f"expected true or false, got {download!r}")
    request = Request(
        path=path,
        data_dir=_data_dir(data_dir),
        download=download,
        image_size=image_size if image_size is not None else entry.default_image_size,
        grayscale=grayscale,
    )
    pool = entry.loader(request)
    train_idx, val_idx = _split(pool.size, val_fraction=val_fraction, subset=subset, seed=seed)
    _check_resize_fits(len(train_idx) + len(val_idx), request.image_size)
    labels = pool.labels
    return ImageData(
        name=spec,
        train=pool.read(train_idx),
        val=pool.read(val_idx),
        train_labels=None if labels is None else labels[train_idx],
        val_labels=None if labels is None else labels[val_idx],
        info={"source": pool.source, "pool_size": pool.size, "classes": pool.classes},
    )


def load_data(config: TrainConfig) -> ImageData:
    """:func:`load_dataset` with a :class:`TrainConfig`'s data fields (:data:`DATA_FIELDS`)."""
    fields = {name: getattr(config, name) for name in DATA_FIELDS}
    return load_dataset(fields.pop("dataset"), seed=fields.pop("split_seed"), **fields)


# --- options and split -------------------------------------------------------


def _parse_spec(spec: Any) -> tuple[DatasetEntry, Path | None]:
    expected = f"expected one of {', '.join(dataset_names())}"
    if not isinstance(spec, str) or not spec:
        raise InputError("dataset", f"{expected}; got {spec!r}")
    prefix, colon, rest = spec.partition(":")
    entry = DATASETS.get(prefix if colon else spec)
    if entry is None or entry.takes_path != bool(colon):
        raise InputError("dataset", f"{expected}; got {spec!r}")
    if not colon:
        return entry, None
    if not rest:
        raise InputError("dataset", f"expected a path after '{prefix}:', as in {entry.usage}")
    return entry, Path(rest).expanduser()


def _check_options(*, image_size, grayscale, val_fraction, subset, seed) -> None:
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if image_size is not None and not (is_int(image_size) and image_size >= 1):
        raise InputError("image_size", f"expected a positive integer or none, got {image_size!r}")
    if grayscale is not None and not isinstance(grayscale, bool):
        raise InputError("grayscale", f"expected true, false or none, got {grayscale!r}")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 < val_fraction < 1
    ):
        raise InputError(
            "val_fraction", f"expected a number between 0 and 1 (exclusive), got {val_fraction!r}"
        )
    if subset is not None and not (is_int(subset) and subset >= 2):
        raise InputError("subset", f"expected an integer >= 2 or none, got {subset!r}")
    if not (is_int(seed) and seed >= 0):
        raise InputError("seed", f"expected an integer >= 0, got {seed!r}")


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or ``None`` where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """``1.5e9`` -> ``1.5 GB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _check_resize_fits(n_images: int, image_size: int | None) -> None:
    """A resize no machine of this size can hold is bad input, not a failed allocation later."""
    have = physical_memory()
    if image_size is None or have is None:
        return
    needed = (
        n_images * image_size * image_size
    )  # uint8 at one channel: the least the split can take
    if needed > have:
        raise InputError(
            "image_size",
            f"{n_images} images of {image_size}x{image_size} need at least {format_bytes(needed)}; "
            f"this machine has {format_bytes(have)} of memory",
        )


def _data_dir(data_dir) -> Path:
    if data_dir is None:
        return default_data_dir()
    if not isinstance(data_dir, (str, os.PathLike)) or not str(data_dir):
        raise InputError("data_dir", f"expected a folder path, got {data_dir!r}")
    return Path(data_dir).expanduser().absolute()


def _split(
    size: int, *, val_fraction: float, subset: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(train, val)`` index tensors, each sorted; one permutation draws both."""
    if subset is not None and subset > size:
        raise InputError(
            "subset", f"expected at most {size} (the images the dataset has), got {subset}"
        )
    n = size if subset is None else subset
    n_val = math.floor(n * val_fraction + 0.5)
    if n_val < 1 or n_val >= n:
        raise InputError(
            "val_fraction",
            f"splitting {n} images by {val_fraction} leaves {n - n_val} for training and "
            f"{n_val} for validation; both need at least one (use more images or another "
            "val_fraction)",
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
    return order[n_val:].sort().values, order[:n_val].sort().values


DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            "mnist-10k",
            "MNIST test split shipped with caetune (10,000 digits, 28x28 grey; works offline)",
            load_mnist_10k,
        ),
        DatasetEntry(
            "mnist",
            "MNIST train split via torchvision (60,000 digits, 28x28 grey)",
            idx_loader("MNIST", "mnist"),
        ),
        DatasetEntry(
            "fashion-mnist",
            "Fashion-MNIST train split via torchvision (60,000 clothes, 28x28 grey)",
            idx_loader("FashionMNIST", "fashion-mnist"),
        ),
        DatasetEntry(
            "svhn", "SVHN train split via torchvision (73,257 house numbers, 32x32 RGB)", load_svhn
        ),
        DatasetEntry(
            "cifar10",
            "CIFAR-10 train split via torchvision (50,000 objects, 32x32 RGB)",
            load_cifar10,
        ),
        DatasetEntry(
            "caltech101",
            "Caltech-101 via torchvision (8,677 objects, resized, default 64x64 RGB)",
            load_caltech101,
            default_image_size=64,
        ),
        DatasetEntry(
            "npz",
            "a NumPy archive: 'images' uint8 [N,H,W] or [N,H,W,C], optional 'labels'",
            load_npz,
            takes_path=True,
        ),
        DatasetEntry(
            "folder",
            "image files under a folder (sub-folders as labels), resized, default 32x32",
            load_folder,
            takes_path=True,
            default_image_size=32,
        ),
    )
}
"""The dataset registry: spec name (or ``PREFIX`` of ``PREFIX:PATH``) -> entry."""
