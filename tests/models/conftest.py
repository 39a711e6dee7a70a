"""Fixtures for the models tests: tiny datasets on disk, from ``tests/fixtures.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `tests.fixtures` needs the repository root on sys.path, which pytest's
# default import mode does not give to tests/models.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests import fixtures  # noqa: E402


@pytest.fixture
def mnist_root(tmp_path):
    """A torchvision root with a 30-image MNIST train split (as .gz); yields ``(root, images, labels)``."""
    images, labels = fixtures.make_mnist(tmp_path)
    return tmp_path, images, labels


@pytest.fixture
def cifar10_root(tmp_path):
    """A torchvision root with a 20-image CIFAR-10 train split; yields ``(root, images HWC, labels)``."""
    images, labels = fixtures.make_cifar10(tmp_path, per_batch=4)
    return tmp_path, images, labels
