"""Builds the TFDS `cifar10` dataset (array_record) from a manual directory, without TensorFlow.

TFDS's stock `cifar10` builder downloads the official archive, checks its checksum and encodes
PNGs with TensorFlow. Offline, or without TensorFlow, `build_cifar10_from_manual_dir` produces
the *same* dataset (name, version 3.0.2, features `id` / `image` / `label`, splits, record order)
from the official binary layout: records are read with numpy and encoded as PNG with Pillow.
Afterwards `tfds.data_source("cifar10", data_dir=...)` reads it like any prepared TFDS dataset.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.image_classification import cifar as tfds_cifar

from adaptive_jax.data import cifar_binary


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 HWC image (Pillow, so no TensorFlow)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Cifar10FromBinary(tfds_cifar.Cifar10, skip_registration=True):
    """TFDS's own `cifar10` (same info and features), fed from a binary layout on disk."""

    # The stock class's name comes from the class name; keep the public one.
    name = "cifar10"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the official CIFAR-10 binary release (cifar-10-binary.tar.gz, or its unpacked "
        "cifar-10-batches-bin/) in the manual dir.")

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        source = cifar_binary.find_binary_source(manual_dir)
        if source is None:
            raise FileNotFoundError(
                f"no CIFAR-10 binary data in manual dir {manual_dir}: expected "
                f"{cifar_binary.BINARY_DIRNAME}/ or {cifar_binary.ARCHIVE_NAME} there")
        self.info.features["label"].names = list(cifar_binary.LABEL_NAMES)
        return {
            tfds.Split.TRAIN: self._examples_from(source, "train"),
            tfds.Split.TEST: self._examples_from(source, "test"),
        }

    def _examples_from(self, source: str, split: str):
        images, labels = cifar_binary.read_split(source, split)
        prefix = "train_" if split == "train" else "test_"
        # Same keys and ids as the stock builder, so shuffling and sharding match it.
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"id": f"{prefix}{index:05d}", "image": encode_png(image),
                          "label": int(label)}


def build_cifar10_from_manual_dir(data_dir: str, manual_dir: str) -> str:
    """Prepares TFDS `cifar10` in `data_dir` (array_record) from `manual_dir`. Idempotent.

    Returns the dataset's directory (data_dir/cifar10/3.0.2).
    """
    builder = Cifar10FromBinary(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return os.fspath(builder.data_dir)
