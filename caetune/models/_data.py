"""Datasets as two uint8 tensors, loaded once and kept whole in memory.

A dataset is named by a *spec*: a registry name (``mnist-10k``, ``mnist``,
``fashion-mnist``, ``svhn``, ``cifar10``, ``caltech101``), ``npz:PATH`` or
``folder:PATH``. :func:`load_dataset` turns a spec into an :class:`ImageData`
of contiguous ``uint8 [N, C, H, W]`` train and validation tensors.

Splits: every source is treated as one pool of images. A seeded permutation
picks ``subset`` images from it (all when ``None``) and holds out
``val_fraction`` of them for validation. Datasets with an official test split
(MNIST, Fashion-MNIST, SVHN, CIFAR-10) contribute only their *train* split to
the pool, so the official test split stays untouched for the user's own final
evaluation. ``mnist-10k`` is the exception by necessity: it is the MNIST test
split vendored with the package (the only MNIST that works offline), split
8,000 / 2,000 by default.

torchvision datasets go through torchvision's own classes and on-disk layout
(``data_dir`` is torchvision's ``root``). The stock CIFAR-10 and SVHN classes
refuse any file whose md5 differs from the official release, which rules out
re-packed copies and tiny test fixtures alike; here they are used through
subclasses that check the files are *present*, not their md5, and otherwise
parse them with the class's own code (a damaged file still fails loudly, as a
one-line :class:`~caetune.InputError`). MNIST-like classes and Caltech-101
check presence only already.

Decoding is deferred until the subset is drawn, so a small subset of a large
image folder decodes only the images it uses.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from caetune._errors import InputError

if TYPE_CHECKING:
    from PIL import Image

    from caetune.models._config import TrainConfig

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")

# PIL modes whose pixels carry no colour (LA: grey plus alpha, which is dropped).
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

_VENDORED = Path(__file__).parent / "data"

# Images converted per step: bounds the int32/float scratch of luma and resize.
_CHUNK = 4096


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
class _Request:
    """What a registry loader is asked for (options already validated)."""

    path: Path | None  # for npz:PATH and folder:PATH
    data_dir: Path
    download: bool
    image_size: int | None  # the entry's default already applied
    grayscale: bool | None


@dataclass
class _Pool:
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
    loader: Callable[[_Request], _Pool]
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
    request = _Request(
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
    """:func:`load_dataset` with a :class:`TrainConfig`'s data fields."""
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        image_size=config.image_size,
        grayscale=config.grayscale,
        val_fraction=config.val_fraction,
        subset=config.subset,
        seed=config.split_seed,
    )


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
    """A resize no machine of this size can hold is bad input, not an allocation error halfway through."""
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
            f"splitting {n} images by {val_fraction} leaves {n - n_val} for training and {n_val} for "
            "validation; both need at least one (use more images or another val_fraction)",
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
    return order[n_val:].sort().values, order[:n_val].sort().values


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


def _array_pool(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    request: _Request,
    *,
    source: str,
    classes: list[str] | None = None,
) -> _Pool:
    """A pool over images already in memory, ``uint8 [N, C, H, W]``."""

    def read(indices: torch.Tensor) -> torch.Tensor:
        return _convert(images[indices], image_size=request.image_size, grayscale=request.grayscale)

    return _Pool(
        size=int(images.shape[0]),
        read=read,
        labels=None if labels is None else labels.to(torch.int64),
        source=source,
        classes=classes,
    )


def _decode(image: Image.Image, *, size: int, mode: str) -> np.ndarray:
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


def _parallel_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
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


def _file_pool(
    size: int,
    decode: Callable[[int], np.ndarray],
    labels: torch.Tensor | None,
    *,
    image_size: int,
    mode: str,
    source: str,
    classes: list[str] | None,
) -> _Pool:
    """A pool over image files, decoded on threads when read."""
    channels = 1 if mode == "L" else 3

    def read(indices: torch.Tensor) -> torch.Tensor:
        out = np.empty(
            (len(indices), image_size, image_size, channels), dtype=np.uint8
        )  # [n, H, W, C]

        def fill(slot_index: tuple[int, int]) -> None:
            slot, index = slot_index
            out[slot] = decode(index).reshape(image_size, image_size, channels)

        _parallel_map(fill, enumerate(indices.tolist()))
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    return _Pool(size=size, read=read, labels=labels, source=source, classes=classes)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _missing(folder: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def _missing_files(folder: Path, names: list[str], request: _Request, *, what: str = "") -> None:
    """Raises the one-line error naming the files torchvision expects in ``folder``, unless a download will fetch them."""
    missing = _missing(folder, names)
    if not missing or request.download:
        return
    found = "" if len(missing) == len(names) else f"; missing {', '.join(missing)}"
    raise InputError(
        "data_dir",
        f"expected {folder}/ to hold {', '.join(names)}{what}{found}; pass --download (download=True) to fetch it",
    )


def _construct(cls: type, request: _Request, label: str, **kwargs: Any) -> Any:
    """Instantiates a torchvision dataset class, as one-line errors."""
    try:
        return cls(root=str(request.data_dir), download=request.download, **kwargs)
    except Exception as err:
        # torchvision reports unreadable copies and failed downloads with many
        # types (AssertionError from the IDX reader, UnpicklingError,
        # MatReadError, URLError, RuntimeError), none of them user-facing.
        if request.download:
            raise InputError(
                "download", f"could not fetch {label} into {request.data_dir}: {_one_line(err)}"
            ) from err
        raise InputError(
            "data_dir", f"cannot read {label} from {request.data_dir}: {_one_line(err)}"
        ) from err


# --- torchvision datasets ------------------------------------------------------

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _gunzip(source: Path, target: Path) -> Path:
    """Decompresses next to the target first, so a failure leaves no half file behind."""
    partial = target.with_name(target.name + ".partial")
    try:
        with gzip.open(source, "rb") as f_in, open(partial, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        os.replace(partial, target)
    except (OSError, EOFError) as err:
        partial.unlink(missing_ok=True)
        raise InputError("data_dir", f"cannot decompress {source}: {_one_line(err)}") from err
    return target


def _idx_loader(class_name: str, label: str) -> Callable[[_Request], _Pool]:
    """Loader for torchvision's MNIST-format classes (MNIST, FashionMNIST): the train split."""

    def load(request: _Request) -> _Pool:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, class_name)
        raw = request.data_dir / class_name / "raw"
        # The class reads the decompressed files; a copy holding only the .gz
        # archives is decompressed in place, as torchvision's own download does.
        for name in _missing(raw, _IDX_FILES):
            if (raw / f"{name}.gz").is_file():
                _gunzip(raw / f"{name}.gz", raw / name)
        _missing_files(raw, list(_IDX_FILES), request, what=" (or the same with .gz)")
        dataset = _construct(cls, request, label, train=True)
        return _array_pool(
            dataset.data.unsqueeze(1),  # [N, 1, 28, 28]
            dataset.targets,
            request,
            source=f"torchvision.datasets.{class_name} train split, {raw}",
            classes=list(dataset.classes),
        )

    return load


@functools.cache
def _presence_checked_classes() -> tuple[type, type]:
    """torchvision's CIFAR10 and SVHN, checking that files exist instead of their official md5.

    Built on first use, so importing caetune does not import torchvision.
    """
    import torchvision.datasets as tvd

    class CIFAR10(tvd.CIFAR10):
        meta = {**tvd.CIFAR10.meta, "md5": None}  # the md5 of batches.meta, checked by _load_meta

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return not _missing(folder, [name for name, _ in self.train_list + self.test_list])

    class SVHN(tvd.SVHN):
        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.filename).is_file()

    return CIFAR10, SVHN


def _load_cifar10(request: _Request) -> _Pool:
    cls, _ = _presence_checked_classes()
    folder = request.data_dir / cls.base_folder
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    _missing_files(folder, names, request, what=" (the python version of CIFAR-10)")
    dataset = _construct(cls, request, "cifar10", train=True)
    images = (
        torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    )  # [N, 32, 32, 3] -> [N, 3, 32, 32]
    return _array_pool(
        images,
        torch.as_tensor(dataset.targets),
        request,
        source=f"torchvision.datasets.CIFAR10 train split, {folder}",
        classes=list(dataset.classes),
    )


def _load_svhn(request: _Request) -> _Pool:
    _, cls = _presence_checked_classes()
    filename = cls.split_list["train"][1]
    _missing_files(request.data_dir, [filename], request, what=" (SVHN's train split)")
    dataset = _construct(cls, request, "svhn", split="train")
    return _array_pool(
        torch.from_numpy(np.ascontiguousarray(dataset.data)),  # [N, 3, 32, 32]
        torch.from_numpy(dataset.labels),
        request,
        source=f"torchvision.datasets.SVHN train split, {request.data_dir / filename}",
        classes=[str(digit) for digit in range(10)],
    )


def _load_caltech101(request: _Request) -> _Pool:
    import torchvision.datasets

    folder = request.data_dir / "caltech101" / "101_ObjectCategories"
    if not request.download:
        if not folder.is_dir():
            raise InputError(
                "data_dir",
                f"expected {folder}/<category>/image_0001.jpg ... (Caltech-101 as distributed); "
                "pass --download (download=True) to fetch it",
            )
        # torchvision removes this folder from the categories and fails without it.
        if not (folder / "BACKGROUND_Google").is_dir():
            raise InputError(
                "data_dir", f"expected {folder}/BACKGROUND_Google/ (Caltech-101 as distributed)"
            )
    size = request.image_size
    mode = (
        "L" if request.grayscale else "RGB"
    )  # a colour dataset: grey images are expanded, for one shape
    dataset = _construct(
        torchvision.datasets.Caltech101,
        request,
        "caltech101",
        transform=functools.partial(_decode, size=size, mode=mode),
    )

    def decode(index: int) -> np.ndarray:
        try:
            return dataset[index][0]
        except Exception as err:
            # Caltech101.__getitem__ builds the name from its own index lists.
            category = dataset.categories[dataset.y[index]]
            path = folder / category / f"image_{dataset.index[index]:04d}.jpg"
            raise InputError("dataset", f"cannot read image {path}: {_one_line(err)}") from err

    return _file_pool(
        len(dataset),
        decode,
        torch.as_tensor(dataset.y, dtype=torch.int64),
        image_size=size,
        mode=mode,
        source=f"torchvision.datasets.Caltech101, {folder}",
        classes=list(dataset.categories),
    )


# --- vendored, npz and folder --------------------------------------------------


@functools.cache
def _mnist_10k() -> tuple[torch.Tensor, torch.Tensor]:
    """The vendored MNIST test split, ``uint8 [10000, 28, 28]`` and ``int64 [10000]``."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    # torchvision's IDX reader opens plain files only.
    with tempfile.TemporaryDirectory(prefix="caetune-mnist-") as tmp:
        images = read_image_file(
            str(_gunzip(_VENDORED / "t10k-images-idx3-ubyte.gz", Path(tmp) / "images"))
        )
        labels = read_label_file(
            str(_gunzip(_VENDORED / "t10k-labels-idx1-ubyte.gz", Path(tmp) / "labels"))
        )
    return images, labels


def _load_mnist_10k(request: _Request) -> _Pool:
    images, labels = _mnist_10k()
    return _array_pool(
        images.unsqueeze(1),  # [10000, 1, 28, 28]
        labels,
        request,
        source="MNIST test split vendored in caetune/models/data (t10k-*-ubyte.gz)",
        classes=[str(digit) for digit in range(10)],
    )


_NPZ_EXPECTED = "an .npz with 'images' uint8 [N, H, W] or [N, H, W, C] (C in 1, 3) and optional 'labels' int [N]"


def _load_npz(request: _Request) -> _Pool:
    path = request.path
    if not path.is_file():
        raise InputError("dataset", f"expected {_NPZ_EXPECTED}; no file at {path}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(
                "dataset", f"expected {_NPZ_EXPECTED}; {path} holds a single .npy array"
            )
        with archive:
            if "images" not in archive.files:
                found = ", ".join(archive.files) or "nothing"
                raise InputError("dataset", f"expected {_NPZ_EXPECTED}; {path} holds {found}")
            images = archive["images"]
            labels = archive["labels"] if "labels" in archive.files else None
    except InputError:
        raise
    except Exception as err:
        # numpy reports damaged archives as BadZipFile, zlib.error, EOFError or ValueError.
        raise InputError(
            "dataset", f"expected {_NPZ_EXPECTED}; cannot read {path}: {_one_line(err)}"
        ) from err
    _check_npz(path, images, labels)
    tensor = torch.from_numpy(images)
    tensor = (
        tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    )  # -> [N, C, H, W]
    return _array_pool(
        tensor.contiguous(),
        None if labels is None else torch.from_numpy(labels.astype(np.int64)),
        request,
        source=str(path.absolute()),
    )


def _check_npz(path: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    def bad(problem: str) -> InputError:
        return InputError("dataset", f"expected {_NPZ_EXPECTED}; {path}: {problem}")

    if images.dtype != np.uint8:
        nan = " with NaN values" if images.dtype.kind == "f" and np.isnan(images).any() else ""
        raise bad(f"'images' is {images.dtype}{nan}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise bad(f"'images' has shape {list(images.shape)}")
    if images.size == 0:
        raise bad(f"'images' is empty, shape {list(images.shape)}")
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]:
            raise bad(
                f"'labels' is {labels.dtype} {list(labels.shape)} for {images.shape[0]} images"
            )


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root``, sorted by relative path; hidden files and folders are ignored."""
    found = []  # (relative posix path, path)
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            path = Path(folder, name)
            if name.startswith("."):
                continue
            expected = f"expected only image files ({', '.join(IMAGE_SUFFIXES)}) under {root}"
            if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                raise InputError("dataset", f"{expected}; found {path}")
            if (
                not path.is_file()
            ):  # a FIFO would block the reader forever; a dangling link reads nothing
                raise InputError("dataset", f"{expected}; {path} is not a regular file")
            found.append((path.relative_to(root).as_posix(), path))
    return [path for _, path in sorted(found)]


def _image_mode(path: Path) -> str:
    """The PIL mode from the file's header (nothing decoded), or a one-line error naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode
    except Exception as err:
        raise InputError("dataset", f"cannot read image {path}: {_one_line(err)}") from err


def _decode_file(path: Path, *, size: int, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _decode(image, size=size, mode=mode)
    except Exception as err:
        # PIL reports truncated or damaged files as OSError, SyntaxError or ValueError.
        raise InputError("dataset", f"cannot read image {path}: {_one_line(err)}") from err


def _load_folder(request: _Request) -> _Pool:
    root = request.path
    if not root.is_dir():
        raise InputError("dataset", f"expected a folder of image files; no folder at {root}")
    files = _image_files(root)
    if not files:
        raise InputError(
            "dataset",
            f"expected image files ({', '.join(IMAGE_SUFFIXES)}) under {root}; found none",
        )
    # Every header is read up front: a non-image fails the same way whatever the
    # subset, and the channel count is a property of the folder, not of the subset.
    modes = _parallel_map(_image_mode, files)
    if request.grayscale is None:
        mode = "L" if all(m in _GRAY_MODES for m in modes) else "RGB"
    else:
        mode = "L" if request.grayscale else "RGB"
    labels = classes = None
    folders = [
        path.relative_to(root).parts[0] for path in files if len(path.relative_to(root).parts) > 1
    ]
    if len(folders) == len(files):  # labelled only when every image sits in a class folder
        classes = sorted(set(folders))
        label_of = {name: label for label, name in enumerate(classes)}
        labels = torch.tensor([label_of[name] for name in folders], dtype=torch.int64)
    size = request.image_size
    return _file_pool(
        len(files),
        lambda index: _decode_file(files[index], size=size, mode=mode),
        labels,
        image_size=size,
        mode=mode,
        source=str(root.absolute()),
        classes=classes,
    )


DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry(
            "mnist-10k",
            "MNIST test split shipped with caetune (10,000 digits, 28x28 grey; works offline)",
            _load_mnist_10k,
        ),
        DatasetEntry(
            "mnist",
            "MNIST train split via torchvision (60,000 digits, 28x28 grey)",
            _idx_loader("MNIST", "mnist"),
        ),
        DatasetEntry(
            "fashion-mnist",
            "Fashion-MNIST train split via torchvision (60,000 clothes, 28x28 grey)",
            _idx_loader("FashionMNIST", "fashion-mnist"),
        ),
        DatasetEntry(
            "svhn", "SVHN train split via torchvision (73,257 house numbers, 32x32 RGB)", _load_svhn
        ),
        DatasetEntry(
            "cifar10",
            "CIFAR-10 train split via torchvision (50,000 objects, 32x32 RGB)",
            _load_cifar10,
        ),
        DatasetEntry(
            "caltech101",
            "Caltech-101 via torchvision (8,677 objects, resized, default 64x64 RGB)",
            _load_caltech101,
            default_image_size=64,
        ),
        DatasetEntry(
            "npz",
            "a NumPy archive: 'images' uint8 [N,H,W] or [N,H,W,C], optional 'labels'",
            _load_npz,
            takes_path=True,
        ),
        DatasetEntry(
            "folder",
            "image files under a folder (sub-folders as labels), resized, default 32x32",
            _load_folder,
            takes_path=True,
            default_image_size=32,
        ),
    )
}
"""The dataset registry: spec name (or ``PREFIX`` of ``PREFIX:PATH``) -> entry."""
