"""Fixtures for the models tests: tiny datasets on disk, from ``tests/fixtures.py``."""

from __future__ import annotations

import pytest

from tests import fixtures  # the repo root is on sys.path via pytest's `pythonpath`


@pytest.fixture
def mnist_root(tmp_path):
    """A torchvision root with a 30-image MNIST train split (as .gz); yields ``(root, images,
    labels)``.
    """
    images, labels = fixtures.make_mnist(tmp_path)
    return tmp_path, images, labels


@pytest.fixture
def cifar10_root(tmp_path):
    """A torchvision root with a 20-image CIFAR-10 train split; yields ``(root, images HWC,
    labels)``.
    """
    images, labels = fixtures.make_cifar10(tmp_path, per_batch=4)
    return tmp_path, images, labels
