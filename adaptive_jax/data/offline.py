"""Builds TFDS datasets (array_record) from local files, offline and without TensorFlow.

TFDS's stock builders download their archives, check checksums and encode PNGs with TensorFlow.
These subclasses keep the stock builders' name, version, features and record keys, and only
replace where the records come from: numpy readers of the official file formats, PNG encoding
with Pillow. Afterwards `tfds.data_source(name, data_dir=...)` reads the dataset like any other.

  * cifar10: the official binary layout (`cifar-10-batches-bin/` or `cifar-10-binary.tar.gz`),
    what `../shared/data/cifar10/prepare DIR` writes;
  * fashion_mnist: the official IDX files (`train-images-idx3-ubyte.gz`, ...), as Debian's
    `dataset-fashion-mnist` package installs them in /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import fcntl
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.image_classification import cifar as tfds_cifar
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from adaptive_jax.data import cifar_binary, idx_format

# Where a system package puts the files when no manual dir is given.
SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
MANUAL_INSTRUCTIONS = {
    "cifar10": "the official CIFAR-10 binary release: cifar-10-batches-bin/ or cifar-10-binary.tar.gz",
    "fashion_mnist": "the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...), e.g. from "
                     "Debian's dataset-fashion-mnist package",
}


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 HWC image (Pillow, so no TensorFlow)."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


class Cifar10FromBinary(tfds_cifar.Cifar10, skip_registration=True):
    """TFDS's own `cifar10` (same info and features), fed from the binary layout on disk."""

    name = "cifar10"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS["cifar10"]

    def _split_generators(self, dl_manager):
        source = cifar_binary.find_binary_source(os.fspath(dl_manager.manual_dir))
        self.info.features["label"].names = list(cifar_binary.LABEL_NAMES)
        return {tfds.Split.TRAIN: self._examples(source, "train"),
                tfds.Split.TEST: self._examples(source, "test")}

    def _examples(self, source: str, split: str):
        images, labels = cifar_binary.read_split(source, split)
        # Same keys and ids as the stock builder, so shuffling and sharding match it.
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"id": f"{split}_{index:05d}", "image": encode_png(image),
                          "label": int(label)}


class FashionMnistFromIdx(tfds_mnist.FashionMNIST, skip_registration=True):
    """TFDS's own `fashion_mnist`, fed from the IDX files on disk."""

    name = "fashion_mnist"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS["fashion_mnist"]

    def _split_generators(self, dl_manager):
        directory = os.fspath(dl_manager.manual_dir)
        return {tfds.Split.TRAIN: self._examples(directory, "train"),
                tfds.Split.TEST: self._examples(directory, "test")}

    def _examples(self, directory: str, split: str):
        images, labels = idx_format.read_split(directory, split)
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": encode_png(image), "label": int(label)}


BUILDERS = {"cifar10": Cifar10FromBinary, "fashion_mnist": FashionMnistFromIdx}


def find_local_source(name: str, manual_dir: str | None) -> str | None:
    """The directory (or archive) holding `name`'s files: the manual dir, else a system dir."""
    candidates = ([manual_dir] if manual_dir else []) + list(SYSTEM_DIRS.get(name, ()))
    for directory in candidates:
        if not os.path.isdir(directory):
            continue
        if name == "cifar10" and cifar_binary.find_binary_source(directory):
            return directory
        if name == "fashion_mnist":
            for sub in (directory, os.path.join(directory, "fashion-mnist")):
                if idx_format.has_split_files(sub):
                    return sub
    return None


def build_from_local_files(name: str, data_dir: str, manual_dir: str) -> str:
    """Prepares TFDS `name` in `data_dir` (array_record) from `manual_dir`. Idempotent.

    Returns the dataset's directory (data_dir/name/version).
    """
    if name not in BUILDERS:
        raise ValueError(f"no offline builder for {name!r}; offline builders: {sorted(BUILDERS)}")
    os.makedirs(data_dir, exist_ok=True)
    # One builder per data dir at a time: two processes (parallel test workers, two runs started
    # together) would otherwise both write the same dataset. The second waits, then finds it built.
    with open(os.path.join(data_dir, f".{name}.build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        return os.fspath(builder.data_dir)
