"""The readers of each dataset format: torchvision's datasets, the vendored MNIST, npz, folders.

Each reader takes a :class:`~caetune.models._pool.Request` and returns the
:class:`~caetune.models._pool.Pool` of every image its source offers; the
registry in :mod:`caetune.models._data` names them.

torchvision datasets go through torchvision's own classes and on-disk layout
(``data_dir`` is torchvision's ``root``). The stock CIFAR-10 and SVHN classes
refuse any file whose md5 differs from the official release, which rules out
re-packed copies and tiny test fixtures alike; here they are used through
subclasses that check the files are *present*, not their md5, and otherwise
parse them with the class's own code (a damaged file still fails loudly, as a
one-line :class:`~caetune.InputError`). MNIST-like classes and Caltech-101
check presence only already.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from caetune._errors import InputError
from caetune.models._pool import (
    Pool,
    Request,
    array_pool,
    decode_image,
    file_pool,
    one_line,
    parallel_map,
)

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")

# PIL modes whose pixels carry no colour (LA: grey plus alpha, which is dropped).
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

if TYPE_CHECKING:
    import torchvision.datasets as tvd

_VENDORED = Path(__file__).parent / "data"


def _missing(folder: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def _missing_files(folder: Path, names: list[str], request: Request, *, what: str = "") -> None:
    """Raises the one-line error naming the files torchvision expects in ``folder``.

    Missing files are no error when a download will fetch them.
    """
    missing = _missing(folder, names)
    if not missing or request.download:
        return
    found = "" if len(missing) == len(names) else f"; missing {', '.join(missing)}"
    raise InputError(
        "data_dir",
        f"expected {folder}/ to hold {', '.join(names)}{what}{found}; "
        "pass --download (download=True) to fetch it",
    )


def _construct(cls: type, request: Request, label: str, **kwargs: Any) -> Any:
    """Instantiates a torchvision dataset class, as one-line errors."""
    try:
        return cls(root=str(request.data_dir), download=request.download, **kwargs)
    except Exception as err:
        # torchvision reports unreadable copies and failed downloads with many
        # types (AssertionError from the IDX reader, UnpicklingError,
        # MatReadError, URLError, RuntimeError), none of them user-facing.
        if request.download:
            raise InputError(
                "download", f"could not fetch {label} into {request.data_dir}: {one_line(err)}"
            ) from err
        raise InputError(
            "data_dir", f"cannot read {label} from {request.data_dir}: {one_line(err)}"
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
        raise InputError("data_dir", f"cannot decompress {source}: {one_line(err)}") from err
    return target


def idx_loader(class_name: str, label: str) -> Callable[[Request], Pool]:
    """Loader for torchvision's MNIST-format classes (MNIST, FashionMNIST): the train split."""

    def load(request: Request) -> Pool:
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
        return array_pool(
            dataset.data.unsqueeze(1),  # [N, 1, 28, 28]
            dataset.targets,
            request,
            source=f"torchvision.datasets.{class_name} train split, {raw}",
            classes=list(dataset.classes),
        )

    return load


@functools.cache
def _presence_checked_classes() -> tuple[type[tvd.CIFAR10], type[tvd.SVHN]]:
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


def load_cifar10(request: Request) -> Pool:
    cls, _ = _presence_checked_classes()
    folder = request.data_dir / cls.base_folder
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    _missing_files(folder, names, request, what=" (the python version of CIFAR-10)")
    dataset = _construct(cls, request, "cifar10", train=True)
    images = (
        torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    )  # [N, 32, 32, 3] -> [N, 3, 32, 32]
    return array_pool(
        images,
        torch.as_tensor(dataset.targets),
        request,
        source=f"torchvision.datasets.CIFAR10 train split, {folder}",
        classes=list(dataset.classes),
    )


def load_svhn(request: Request) -> Pool:
    _, cls = _presence_checked_classes()
    filename = cls.split_list["train"][1]
    _missing_files(request.data_dir, [filename], request, what=" (SVHN's train split)")
    dataset = _construct(cls, request, "svhn", split="train")
    return array_pool(
        torch.from_numpy(np.ascontiguousarray(dataset.data)),  # [N, 3, 32, 32]
        torch.from_numpy(dataset.labels),
        request,
        source=f"torchvision.datasets.SVHN train split, {request.data_dir / filename}",
        classes=[str(digit) for digit in range(10)],
    )


def load_caltech101(request: Request) -> Pool:
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
    assert size is not None  # its registry entry gives Caltech-101 a default size
    mode = (
        "L" if request.grayscale else "RGB"
    )  # a colour dataset: grey images are expanded, for one shape
    dataset = _construct(
        torchvision.datasets.Caltech101,
        request,
        "caltech101",
        transform=functools.partial(decode_image, size=size, mode=mode),
    )

    def decode(index: int) -> np.ndarray:
        try:
            return dataset[index][0]
        except Exception as err:
            # Caltech101.__getitem__ builds the name from its own index lists.
            category = dataset.categories[dataset.y[index]]
            path = folder / category / f"image_{dataset.index[index]:04d}.jpg"
            raise InputError("dataset", f"cannot read image {path}: {one_line(err)}") from err

    return file_pool(
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


def load_mnist_10k(request: Request) -> Pool:
    images, labels = _mnist_10k()
    return array_pool(
        images.unsqueeze(1),  # [10000, 1, 28, 28]
        labels,
        request,
        source="MNIST test split vendored in caetune/models/data (t10k-*-ubyte.gz)",
        classes=[str(digit) for digit in range(10)],
    )


_NPZ_EXPECTED = (
    "an .npz with 'images' uint8 [N, H, W] or [N, H, W, C] (C in 1, 3) "
    "and optional 'labels' int [N]"
)


def load_npz(request: Request) -> Pool:
    path = request.path
    assert path is not None  # an npz:PATH spec
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
            "dataset", f"expected {_NPZ_EXPECTED}; cannot read {path}: {one_line(err)}"
        ) from err
    _check_npz(path, images, labels)
    tensor = torch.from_numpy(images)
    tensor = (
        tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    )  # -> [N, C, H, W]
    return array_pool(
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
        raise InputError("dataset", f"cannot read image {path}: {one_line(err)}") from err


def _decode_file(path: Path, *, size: int, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return decode_image(image, size=size, mode=mode)
    except Exception as err:
        # PIL reports truncated or damaged files as OSError, SyntaxError or ValueError.
        raise InputError("dataset", f"cannot read image {path}: {one_line(err)}") from err


def load_folder(request: Request) -> Pool:
    root = request.path
    assert root is not None  # a folder:PATH spec
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
    modes = parallel_map(_image_mode, files)
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
    assert size is not None  # its registry entry gives folders a default size
    return file_pool(
        len(files),
        lambda index: _decode_file(files[index], size=size, mode=mode),
        labels,
        image_size=size,
        mode=mode,
        source=str(root.absolute()),
        classes=classes,
    )
