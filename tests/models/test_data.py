"""The dataset registry: torchvision formats, npz, folders, options and splits."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import caetune.models._data
from caetune import InputError
from caetune.models import (
    DATA_FIELDS,
    DATASETS,
    TrainConfig,
    dataset_names,
    load_data,
    load_dataset,
)
from tests import fixtures

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CIFAR_JPEG = SHARED / "cifar10-test-jpeg"
MNIST_NPZ = SHARED / "mnist-test-10k" / "mnist-test-10k.npz"


def raises_input_error(field: str, *fragments: str):
    """Context manager: an InputError on ``field`` whose one-line message holds every fragment."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(InputError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            err = self.info.value
            assert err.field == field, str(err)
            assert "\n" not in str(err)
            for fragment in fragments:
                assert fragment in str(err), str(err)
            return suppressed

    return Check()


def assert_well_formed(data, *, n_train: int, n_val: int, shape: tuple[int, int, int]):
    assert tuple(data.train.shape) == (n_train, *shape)
    assert tuple(data.val.shape) == (n_val, *shape)
    for images in (data.train, data.val):
        assert images.dtype == torch.uint8 and images.is_contiguous()


def npz_with_ids(tmp_path, n: int = 50) -> Path:
    """An npz whose labels and pixels all equal each image's index, so splits can be traced."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 4, 4)).copy()
    return fixtures.make_npz(tmp_path / "ids.npz", images, labels=np.arange(n))


# --- registry ------------------------------------------------------------------


def test_registry_lists_every_spec_form():
    names = dataset_names()
    for name in (
        "mnist-10k",
        "mnist",
        "fashion-mnist",
        "svhn",
        "cifar10",
        "caltech101",
        "npz:PATH",
        "folder:PATH",
    ):
        assert name in names
    assert all(entry.description for entry in DATASETS.values())


@pytest.mark.parametrize("spec", ["imagenet", "npz", "npz:", "mnist:/tmp/x", "", "folder"])
def test_unknown_or_malformed_spec(spec):
    with raises_input_error("dataset"):
        load_dataset(spec)


# --- mnist-10k (vendored) -------------------------------------------------------


def test_mnist_10k_default_split_and_pixels():
    data = load_dataset("mnist-10k")
    assert_well_formed(data, n_train=8000, n_val=2000, shape=(1, 28, 28))
    assert data.info["pool_size"] == 10000
    assert set(torch.cat([data.train_labels, data.val_labels]).tolist()) == set(range(10))
    if MNIST_NPZ.is_file():  # the same split, shipped as an npz: pixels and labels must agree
        via_npz = load_dataset(f"npz:{MNIST_NPZ}")
        assert torch.equal(data.train, via_npz.train) and torch.equal(data.val, via_npz.val)
        assert torch.equal(data.val_labels, via_npz.val_labels)


# --- torchvision formats --------------------------------------------------------


@pytest.mark.parametrize("spec, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets_read_train_split_through_torchvision(tmp_path, spec, folder):
    images, labels = fixtures.make_mnist(tmp_path, folder=folder, n_train=30)
    data = load_dataset(spec, data_dir=tmp_path, val_fraction=0.2)
    assert_well_formed(data, n_train=24, n_val=6, shape=(1, 28, 28))
    assert data.info["pool_size"] == 30  # the 10 test images stay out
    for split, split_labels in ((data.train, data.train_labels), (data.val, data.val_labels)):
        # labels are i % 10, images unique: find each image's source row
        rows = [
            int(np.flatnonzero((images == img[0].numpy()).all(axis=(1, 2)))[0]) for img in split
        ]
        assert split_labels.tolist() == [labels[r] for r in rows]
    assert (
        tmp_path / folder / "raw" / "train-images-idx3-ubyte"
    ).is_file()  # decompressed as torchvision does


def test_mnist_plain_idx_files_and_download_flag_with_files_present(tmp_path):
    images, _ = fixtures.make_mnist(tmp_path, gz=False, n_train=12)
    data = load_dataset(
        "mnist", data_dir=tmp_path, download=True, val_fraction=0.25
    )  # present: nothing fetched
    assert torch.equal(
        torch.cat([data.train, data.val]).sum(), torch.from_numpy(images).sum().to(torch.int64)
    )


def test_mnist_missing_files_name_them_and_write_nothing(tmp_path):
    root = tmp_path / "nowhere"
    with raises_input_error("data_dir", "MNIST/raw", "t10k-labels-idx1-ubyte", ".gz", "--download"):
        load_dataset("mnist", data_dir=root)
    assert not root.exists()
    fixtures.make_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with raises_input_error("data_dir", "missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_corrupt_file_is_one_line_error(mnist_root):
    root, _, _ = mnist_root
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x0d\x07junk")
    )
    with raises_input_error("data_dir", "cannot read mnist"):
        load_dataset("mnist", data_dir=root)


def test_cifar10_through_torchvision_without_official_md5(cifar10_root):
    root, images, labels = cifar10_root
    data = load_dataset("cifar10", data_dir=root, val_fraction=0.25, seed=3)
    assert_well_formed(data, n_train=15, n_val=5, shape=(3, 32, 32))
    assert data.info["classes"] == fixtures.CIFAR10_CLASSES
    both = torch.cat([data.train, data.val]).permute(0, 2, 3, 1).numpy()  # back to HWC
    both_labels = torch.cat([data.train_labels, data.val_labels]).numpy()
    order = np.lexsort(both.reshape(len(both), -1).T)
    expected = np.lexsort(images.reshape(len(images), -1).T)
    assert np.array_equal(
        both[order], images[expected]
    )  # every train image, none of the (all-255) test ones
    assert np.array_equal(both_labels[order], labels[expected])


def test_cifar10_missing_batch_and_corrupt_meta(cifar10_root):
    root, _, _ = cifar10_root
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with raises_input_error(
        "data_dir", "cifar-10-batches-py", "missing data_batch_3", "--download"
    ):
        load_dataset("cifar10", data_dir=root)
    fixtures.make_cifar10(root)
    (folder / "batches.meta").write_bytes(b"not a pickle")
    with raises_input_error("data_dir", "cannot read cifar10"):
        load_dataset("cifar10", data_dir=root)


def test_svhn_mat_through_torchvision(tmp_path):
    images, labels = fixtures.make_svhn(tmp_path, n=20)
    data = load_dataset("svhn", data_dir=tmp_path, subset=10, seed=1)
    assert_well_formed(data, n_train=8, n_val=2, shape=(3, 32, 32))
    for split, split_labels in ((data.train, data.train_labels), (data.val, data.val_labels)):
        for img, label in zip(split, split_labels, strict=True):
            row = int(np.flatnonzero((images == img.numpy()).all(axis=(1, 2, 3)))[0])
            assert label == labels[row]  # 10 in the file reads as 0
    with raises_input_error("data_dir", "train_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path / "empty")


def test_caltech101_resized_rgb_without_background(tmp_path):
    counts = fixtures.make_caltech101(
        tmp_path, counts={"accordion": 3, "airplanes": 4}, n_background=2
    )
    data = load_dataset("caltech101", data_dir=tmp_path, val_fraction=0.3)
    assert_well_formed(
        data, n_train=5, n_val=2, shape=(3, 64, 64)
    )  # 64 by default, grey images made RGB
    assert data.info["classes"] == ["accordion", "airplanes"]
    assert torch.cat([data.train_labels, data.val_labels]).bincount().tolist() == [
        counts["accordion"],
        counts["airplanes"],
    ]
    grey = load_dataset(
        "caltech101", data_dir=tmp_path, val_fraction=0.3, grayscale=True, image_size=24
    )
    assert_well_formed(grey, n_train=5, n_val=2, shape=(1, 24, 24))


def test_caltech101_missing_and_truncated(tmp_path):
    with raises_input_error("data_dir", "caltech101/101_ObjectCategories", "--download"):
        load_dataset("caltech101", data_dir=tmp_path)
    assert not (tmp_path / "caltech101").exists()  # torchvision would have created it
    fixtures.make_caltech101(tmp_path)
    shutil.rmtree(tmp_path / "caltech101" / "101_ObjectCategories" / "BACKGROUND_Google")
    with raises_input_error("data_dir", "BACKGROUND_Google"):
        load_dataset("caltech101", data_dir=tmp_path)
    fixtures.make_caltech101(tmp_path)
    bad = tmp_path / "caltech101" / "101_ObjectCategories" / "airplanes" / "image_0002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with raises_input_error("dataset", "airplanes/image_0002.jpg"):
        load_dataset("caltech101", data_dir=tmp_path)


# --- npz ------------------------------------------------------------------------


@pytest.mark.parametrize("shape, channels", [((6, 5, 7), 1), ((6, 5, 7, 1), 1), ((6, 5, 7, 3), 3)])
def test_npz_layouts(tmp_path, shape, channels):
    images = fixtures.noise(shape)
    path = fixtures.make_npz(tmp_path / "x.npz", images, labels=np.arange(6))
    data = load_dataset(f"npz:{path}", val_fraction=0.5)
    assert_well_formed(data, n_train=3, n_val=3, shape=(channels, 5, 7))
    nhwc = images.reshape(6, 5, 7, -1)
    for split, split_labels in ((data.train, data.train_labels), (data.val, data.val_labels)):
        assert np.array_equal(split.permute(0, 2, 3, 1).numpy(), nhwc[split_labels.numpy()])


def _bad_npz(tmp_path, case: str) -> Path:
    path = tmp_path / f"{case}.npz"
    good = fixtures.noise((4, 8, 8))
    if case == "float":
        np.savez(path, images=good.astype(np.float32))
    elif case == "nan":
        np.savez(path, images=np.full((4, 8, 8), np.nan, np.float32))
    elif case == "ndim":
        np.savez(path, images=good[0])
    elif case == "channels":
        np.savez(path, images=fixtures.noise((4, 8, 8, 2)))
    elif case == "empty":
        np.savez(path, images=np.zeros((0, 8, 8), np.uint8))
    elif case == "no-images":
        np.savez(path, pixels=good)
    elif case == "labels":
        np.savez(path, images=good, labels=np.arange(3))
    elif case == "corrupt":
        path.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    elif case == "truncated":
        np.savez(path, images=good)
        path.write_bytes(path.read_bytes()[:100])
    elif case == "npy":
        with open(path, "wb") as f:
            np.save(f, good)
    elif case == "missing":
        pass
    return path


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("float", "float32"),
        ("nan", "NaN"),
        ("ndim", "shape [8, 8]"),
        ("channels", "shape [4, 8, 8, 2]"),
        ("empty", "empty"),
        ("no-images", "holds pixels"),
        ("labels", "'labels'"),
        ("corrupt", "cannot read"),
        ("truncated", "cannot read"),
        ("npy", "single .npy array"),
        ("missing", "no file at"),
    ],
)
def test_npz_rejects(tmp_path, case, fragment):
    path = _bad_npz(tmp_path, case)
    with raises_input_error("dataset", "uint8", fragment):
        load_dataset(f"npz:{path}")


# --- folders --------------------------------------------------------------------


def test_folder_order_labels_and_pixels(tmp_path):
    written = fixtures.make_image_folder(
        tmp_path, classes=("dog", "cat"), per_class=4, size=(12, 12)
    )
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    data = load_dataset(f"folder:{tmp_path}", image_size=12, val_fraction=0.25)
    assert_well_formed(data, n_train=6, n_val=2, shape=(3, 12, 12))
    assert data.info["classes"] == ["cat", "dog"]
    everything = load_dataset(f"folder:{tmp_path}", image_size=12, val_fraction=0.25, seed=0)
    both = torch.cat([everything.train, everything.val]).permute(0, 2, 3, 1).numpy()
    both_labels = torch.cat([everything.train_labels, everything.val_labels])
    for img, label in zip(both, both_labels, strict=True):
        row = int(
            np.flatnonzero((written == img).all(axis=(1, 2, 3)))[0]
        )  # lossless PNG: exact pixels
        assert label == row // 4  # sorted class folders, 4 images each


def test_folder_default_size_and_channels(tmp_path):
    fixtures.make_image_folder(tmp_path / "grey", mode="L", size=(20, 10))
    grey = load_dataset(f"folder:{tmp_path / 'grey'}", val_fraction=0.5)
    assert_well_formed(
        grey, n_train=3, n_val=3, shape=(1, 32, 32)
    )  # all grey -> 1 channel, default 32
    Image.fromarray(fixtures.noise((10, 10, 3))).save(tmp_path / "grey" / "top.png")
    mixed = load_dataset(f"folder:{tmp_path / 'grey'}", val_fraction=0.5)
    assert mixed.channels == 3
    assert mixed.train_labels is None  # not every image sits in a class folder
    forced = load_dataset(
        f"folder:{tmp_path / 'grey'}", val_fraction=0.5, grayscale=True, image_size=8
    )
    assert forced.channels == 1 and forced.image_size == (8, 8)


def test_folder_rejects_bad_files(tmp_path):
    with raises_input_error("dataset", "no folder at"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    (tmp_path / "empty").mkdir()
    with raises_input_error("dataset", "found none"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    fixtures.make_image_folder(tmp_path / "a")
    (tmp_path / "a" / "cat" / "notes.txt").write_text("hello")
    with raises_input_error("dataset", "notes.txt"):
        load_dataset(f"folder:{tmp_path / 'a'}")
    fixtures.make_image_folder(tmp_path / "b")
    (tmp_path / "b" / "cat" / "fake.png").write_text("not an image")
    with raises_input_error("dataset", "fake.png"):
        load_dataset(f"folder:{tmp_path / 'b'}")
    fixtures.make_image_folder(tmp_path / "c", suffix=".jpg", size=(64, 64))
    jpeg = tmp_path / "c" / "dog" / "001.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:300])  # header intact, scan data cut
    with raises_input_error("dataset", "001.jpg"):
        load_dataset(f"folder:{tmp_path / 'c'}")


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="shared CIFAR-10 JPEG folder not present")
def test_folder_real_cifar10_jpegs_subset():
    data = load_dataset(f"folder:{CIFAR_JPEG}", subset=100, seed=2)
    assert_well_formed(data, n_train=80, n_val=20, shape=(3, 32, 32))
    assert data.info["pool_size"] == 10000 and len(data.info["classes"]) == 10
    assert data.train.float().std() > 20  # real photographs, not blank


# --- options --------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_subset_first(tmp_path):
    spec = f"npz:{npz_with_ids(tmp_path, 50)}"
    a = load_dataset(spec, subset=20, seed=5, val_fraction=0.25)
    b = load_dataset(spec, subset=20, seed=5, val_fraction=0.25)
    c = load_dataset(spec, subset=20, seed=6, val_fraction=0.25)
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.val_labels, b.val_labels)
    assert not torch.equal(
        torch.cat([a.train_labels, a.val_labels]), torch.cat([c.train_labels, c.val_labels])
    )
    assert len(a.train_labels) == 15 and len(a.val_labels) == 5
    assert not set(a.train_labels.tolist()) & set(a.val_labels.tolist())
    assert torch.equal(a.train[:, 0, 0, 0].long(), a.train_labels)  # labels follow their images
    assert a.info["pool_size"] == 50


def test_grayscale_matches_pil_and_colour_replicates(tmp_path):
    rgb = fixtures.noise((4, 9, 9, 3), seed=7)
    path = fixtures.make_npz(tmp_path / "rgb.npz", rgb, labels=np.arange(4))
    data = load_dataset(f"npz:{path}", grayscale=True, val_fraction=0.5)
    for img, label in zip(data.train, data.train_labels, strict=True):
        pil = np.asarray(Image.fromarray(rgb[label]).convert("L"))
        assert np.array_equal(img[0].numpy(), pil)
    colour = load_dataset("mnist-10k", grayscale=False, subset=10)
    assert colour.channels == 3
    assert torch.equal(colour.train[:, 0], colour.train[:, 2])


def test_image_size_resizes_close_to_pil(tmp_path):
    data = load_dataset("mnist-10k", subset=20, image_size=14, seed=1)
    assert_well_formed(data, n_train=16, n_val=4, shape=(1, 14, 14))
    full = load_dataset("mnist-10k", subset=20, seed=1)
    for small, big in zip(data.train, full.train, strict=True):
        pil = np.asarray(
            Image.fromarray(big[0].numpy()).resize((14, 14), Image.Resampling.BILINEAR), dtype=int
        )
        assert np.abs(small[0].numpy().astype(int) - pil).max() <= 2


@pytest.mark.parametrize(
    "options, field",
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"subset": 1}, "subset"),
        ({"subset": 10_001}, "subset"),
        ({"subset": 2, "val_fraction": 0.2}, "val_fraction"),  # would leave no validation image
        ({"image_size": 0}, "image_size"),
        ({"grayscale": "yes"}, "grayscale"),
        ({"seed": -1}, "seed"),
        ({"download": "no"}, "download"),
    ],
)
def test_bad_options(options, field):
    with raises_input_error(field):
        load_dataset("mnist-10k", **options)


def test_load_data_uses_the_config_fields(tmp_path):
    spec = f"npz:{npz_with_ids(tmp_path, 40)}"
    config = TrainConfig(
        dataset=spec, subset=12, split_seed=4, val_fraction=0.25, image_size=8, grayscale=False
    )
    via_config = load_data(config)
    direct = load_dataset(spec, subset=12, seed=4, val_fraction=0.25, image_size=8, grayscale=False)
    assert torch.equal(via_config.train, direct.train) and torch.equal(
        via_config.val_labels, direct.val_labels
    )
    assert via_config.image_size == (8, 8) and via_config.channels == 3


# A valid value other than the default, per TrainConfig field.
OTHER_VALUES = {
    "dataset": "npz:/x.npz",
    "data_dir": "/data",
    "download": True,
    "image_size": 16,
    "grayscale": True,
    "val_fraction": 0.3,
    "subset": 100,
    "split_seed": 3,
    "model": "model2",
    "n_neurons": 8,
    "n_maps": 4,
    "n_epochs": 2,
    "activation": "elu",
    "batch_size": 8,
    "lr": 0.1,
    "seed": 5,
    "device": "cpu",
    "precision": "fp32",
}


def test_the_data_fields_are_exactly_what_load_data_reads(monkeypatch):
    # The report caches datasets by DATA_FIELDS and a search fixes them: two configs equal on
    # them must load the same images, and each of them must change what is loaded.
    calls = []
    monkeypatch.setattr(
        caetune.models._data, "load_dataset", lambda spec, **kw: calls.append((spec, kw))
    )
    load_data(TrainConfig())
    for field in TrainConfig.__dataclass_fields__:
        assert field in OTHER_VALUES, f"give TrainConfig.{field} a value in OTHER_VALUES"
        load_data(TrainConfig(**{field: OTHER_VALUES[field]}))
        assert (calls[-1] != calls[0]) == (field in DATA_FIELDS), field


def test_training_seed_leaves_the_split_alone(tmp_path):
    # Re-training a config with other seeds must be judged on the same validation images.
    spec = f"npz:{npz_with_ids(tmp_path, 40)}"
    first = load_data(TrainConfig(dataset=spec, subset=20, seed=1))
    other_seed = load_data(TrainConfig(dataset=spec, subset=20, seed=2))
    other_split = load_data(TrainConfig(dataset=spec, subset=20, seed=1, split_seed=5))
    assert torch.equal(first.val_labels, other_seed.val_labels)
    assert not torch.equal(first.val_labels, other_split.val_labels)
