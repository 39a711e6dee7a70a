"""Tiny datasets written in each dataset's true on-disk format, for any test.

Each builder writes under a torchvision-style root (what ``data_dir`` points
at) and returns what it wrote, so tests can compare pixels exactly. Images are
seeded random noise: small, and any mix-up of order or layout shows.

Usage from any test package::

    from tests.fixtures import make_cifar10
    images, labels = make_cifar10(tmp_path, per_batch=4)
    data = load_dataset("cifar10", data_dir=tmp_path, subset=10)
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def noise(shape: tuple[int, ...], *, seed: int = 0) -> np.ndarray:
    """Seeded uint8 noise of the given shape."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Writes a uint8 array in LeCun's IDX format, gzip-compressed when ``path`` ends in ``.gz``.

    The header is two zero bytes, the type code (0x08: unsigned byte), the
    number of dimensions, then each dimension as a big-endian uint32.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = (
        bytes([0, 0, 0x08, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.tobytes()
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


def make_mnist(
    root: str | Path,
    *,
    folder: str = "MNIST",
    n_train: int = 30,
    n_test: int = 10,
    gz: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Writes ``ROOT/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    ``folder="FashionMNIST"`` gives Fashion-MNIST's layout. Train labels are
    ``arange(n_train) % 10`` and test images are all 255, so tests can tell
    which split was read.

    Returns:
        Train images ``uint8 [n_train, 28, 28]`` and labels ``uint8 [n_train]``.
    """
    raw = Path(root) / folder / "raw"
    suffix = ".gz" if gz else ""
    train = noise((n_train, 28, 28), seed=seed)
    train_labels = (np.arange(n_train) % 10).astype(np.uint8)
    write_idx(raw / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(raw / f"train-labels-idx1-ubyte{suffix}", train_labels)
    write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", np.full((n_test, 28, 28), 255, np.uint8))
    write_idx(raw / f"t10k-labels-idx1-ubyte{suffix}", np.zeros(n_test, np.uint8))
    return train, train_labels


def make_cifar10(
    root: str | Path, *, per_batch: int = 4, n_test: int = 4, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Writes ``ROOT/cifar-10-batches-py/`` as the python version of CIFAR-10 has it.

    ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` are pickled dicts
    with ``data`` uint8 ``[n, 3072]`` (1024 red, 1024 green, 1024 blue values,
    row-major) and ``labels``; ``batches.meta`` holds ``label_names``.

    Returns:
        Train images ``uint8 [5 * per_batch, 32, 32, 3]`` (HWC, as torchvision
        exposes them) and labels ``int64 [5 * per_batch]``.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images = noise((5 * per_batch, 32, 32, 3), seed=seed)
    labels = np.arange(5 * per_batch) % 10

    def dump(name: str, batch_images: np.ndarray, batch_labels: np.ndarray) -> None:
        entry = {
            "batch_label": name,
            "labels": [int(v) for v in batch_labels],
            "data": batch_images.transpose(0, 3, 1, 2).reshape(len(batch_images), 3072),
            "filenames": [f"{name}_{i}.png" for i in range(len(batch_images))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        dump(f"data_batch_{b + 1}", images[part], labels[part])
    dump("test_batch", np.full((n_test, 32, 32, 3), 255, np.uint8), np.zeros(n_test, np.int64))
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072},
            f,
            protocol=2,
        )
    return images, labels


def make_svhn(root: str | Path, *, n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Writes ``ROOT/train_32x32.mat`` (MATLAB v5): uint8 ``X [32, 32, 3, N]`` and ``y [N, 1]``.

    As in the real file, digit 0 is labelled 10.

    Returns:
        Images ``uint8 [N, 3, 32, 32]`` and labels ``int64 [N]`` with 0 for zero.
    """
    from scipy.io import savemat

    images = noise((n, 3, 32, 32), seed=seed)
    labels = np.arange(n) % 10
    Path(root).mkdir(parents=True, exist_ok=True)
    mat_labels = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(n, 1)
    savemat(
        str(Path(root) / "train_32x32.mat"), {"X": images.transpose(2, 3, 1, 0), "y": mat_labels}
    )
    return images, labels


def make_caltech101(
    root: str | Path,
    *,
    counts: dict[str, int] | None = None,
    n_background: int = 2,
    seed: int = 0,
) -> dict[str, int]:
    """Writes ``ROOT/caltech101/101_ObjectCategories/<category>/image_0001.jpg`` ...

    Includes ``BACKGROUND_Google`` (torchvision drops it). JPEGs vary in size
    and every third one is greyscale, like the real set's mix.

    Returns:
        Images per real category (background excluded).
    """
    from PIL import Image

    counts = counts or {"accordion": 3, "airplanes": 4}
    base = Path(root) / "caltech101" / "101_ObjectCategories"
    rng = np.random.default_rng(seed)
    for category, count in {**counts, "BACKGROUND_Google": n_background}.items():
        (base / category).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            height, width = int(rng.integers(24, 80)), int(rng.integers(24, 80))
            grey = i % 3 == 2
            pixels = rng.integers(
                0, 256, size=(height, width) if grey else (height, width, 3), dtype=np.uint8
            )
            Image.fromarray(pixels).save(base / category / f"image_{i + 1:04d}.jpg", quality=90)
    return dict(counts)


def make_image_folder(
    root: str | Path,
    *,
    classes: tuple[str, ...] = ("cat", "dog"),
    per_class: int = 3,
    size: tuple[int, int] = (16, 16),
    mode: str = "RGB",
    suffix: str = ".png",
    seed: int = 0,
) -> np.ndarray:
    """Writes ``ROOT/<class>/<i>.png`` (lossless unless ``suffix`` is ``.jpg``).

    Args:
        size: ``(height, width)`` of every image.
        mode: ``RGB`` or ``L``.

    Returns:
        The images in sorted path order: ``uint8 [N, H, W, 3]`` or ``[N, H, W]``.
    """
    from PIL import Image

    shape = size + ((3,) if mode == "RGB" else ())
    written = []
    for c, name in enumerate(sorted(classes)):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = noise(shape, seed=seed * 1000 + c * 100 + i)
            Image.fromarray(pixels).save(Path(root) / name / f"{i:03d}{suffix}")
            written.append(pixels)
    return np.stack(written)


def make_npz(
    path: str | Path, images: np.ndarray, labels: np.ndarray | None = None, **arrays: np.ndarray
) -> Path:
    """Writes ``images`` (and ``labels``, and any extra arrays) with ``numpy.savez``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        arrays["labels"] = labels
    np.savez(path, images=images, **arrays)
    return path
