"""Real data, where it is on the machine (CI prepares both): the offline TFDS builds must yield
exactly the records of the official files, for CIFAR-10 and for Debian's Fashion-MNIST."""

import os

import numpy as np
import pytest

from adaptive_jax.data import cifar_binary, load_split
from adaptive_jax.data.datasets import MANUAL_DIR_ENV

MANUAL_DIR = os.environ.get(MANUAL_DIR_ENV, "")
SOURCE = cifar_binary.find_binary_source(MANUAL_DIR) if os.path.isdir(MANUAL_DIR) else None

requires_cifar = pytest.mark.skipif(
    SOURCE is None, reason=f"set {MANUAL_DIR_ENV} to a dir with cifar-10-batches-bin/ (CI does)")


@requires_cifar
@pytest.mark.parametrize("split,count", [("test", 10_000), ("train", 50_000)])
def test_tfds_cifar10_equals_the_binary_files(split, count, tmp_path_factory):
    data_dir = os.environ.get("TFDS_DATA_DIR") or str(tmp_path_factory.getbasetemp() / "tfds")
    got = load_split("cifar10", split, data_dir=data_dir, manual_dir=MANUAL_DIR)
    images, labels = cifar_binary.read_split(SOURCE, split)
    assert len(got) == count
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.images, images)
    assert np.bincount(got.labels).tolist() == [count // 10] * 10


FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist (CI installs it)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="apt-get install dataset-fashion-mnist")
def test_tfds_fashion_mnist_from_the_debian_package(tmp_path):
    from adaptive_jax.data import idx_format
    got = load_split("fashion_mnist", "test", data_dir=str(tmp_path / "tfds"))  # finds FASHION_DIR
    images, labels = idx_format.read_split(FASHION_DIR, "test")
    assert got.images.shape == (10_000, 28, 28, 1) and got.num_classes == 10
    # No id feature: compare the records as multisets.
    def canonical_order(images, labels):
        return np.argsort(np.array([i.tobytes() + bytes([int(l)]) for i, l in zip(images, labels)],
                                   dtype=object), kind="stable")

    order_got, order_ref = canonical_order(got.images, got.labels), canonical_order(images, labels)
    np.testing.assert_array_equal(got.images[order_got], images[order_ref])
    np.testing.assert_array_equal(got.labels[order_got], labels[order_ref])
