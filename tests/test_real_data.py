"""The real CIFAR-10, where a manual dir holds it (CI prepares one): the offline TFDS build must
yield exactly the records of the official binary files."""

import os

import numpy as np
import pytest

from adaptive_jax.data import cifar_binary, load_split
from adaptive_jax.data.datasets import MANUAL_DIR_ENV

MANUAL_DIR = os.environ.get(MANUAL_DIR_ENV, "")
SOURCE = cifar_binary.find_binary_source(MANUAL_DIR) if os.path.isdir(MANUAL_DIR) else None

pytestmark = pytest.mark.skipif(
    SOURCE is None, reason=f"set {MANUAL_DIR_ENV} to a dir with cifar-10-batches-bin/ (CI does)")


@pytest.mark.parametrize("split,count", [("test", 10_000), ("train", 50_000)])
def test_tfds_cifar10_equals_the_binary_files(split, count, tmp_path_factory):
    data_dir = os.environ.get("TFDS_DATA_DIR") or str(tmp_path_factory.getbasetemp() / "tfds")
    got = load_split("cifar10", split, data_dir=data_dir, manual_dir=MANUAL_DIR)
    images, labels = cifar_binary.read_split(SOURCE, split)
    assert len(got) == count
    np.testing.assert_array_equal(got.labels, labels)
    np.testing.assert_array_equal(got.images, images)
    assert np.bincount(got.labels).tolist() == [count // 10] * 10
