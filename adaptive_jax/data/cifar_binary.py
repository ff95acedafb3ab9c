"""Reader for the official CIFAR-10 *binary* release (`cifar-10-batches-bin/`).

Each record is 1 label byte followed by 3072 pixel bytes: the 1024 red, then green, then blue
values of a 32x32 image in row-major order. The layout is what the official "CIFAR-10 binary
version" archive unpacks to, and what `../shared/data/cifar10/prepare DIR` writes offline.
Only numpy is needed: no TensorFlow.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping

import numpy as np

BINARY_DIRNAME = "cifar-10-batches-bin"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
RECORD_BYTES = 1 + 32 * 32 * 3
SPLIT_FILES: Mapping[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")


class CifarFormatError(ValueError):
    """A file does not hold whole CIFAR-10 binary records."""


def decode_records(raw: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decodes CIFAR-10 binary records.

    Returns:
      images: uint8 (N, 32, 32, 3), HWC.
      labels: int64 (N,), in [0, 10).
    """
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        raise CifarFormatError(
            f"{source}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte "
            "CIFAR-10 records; the file is truncated or not a CIFAR-10 binary batch.")
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(LABEL_NAMES):
        raise CifarFormatError(f"{source}: label {labels.max()} is out of range [0, 10).")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def find_binary_source(manual_dir: str) -> str | None:
    """Path of the binary directory or archive inside `manual_dir`, or None if absent."""
    candidates = [manual_dir, os.path.join(manual_dir, BINARY_DIRNAME)]
    for path in candidates:
        if os.path.isfile(os.path.join(path, SPLIT_FILES["test"][0])):
            return path
    for name in sorted(os.listdir(manual_dir)) if os.path.isdir(manual_dir) else ():
        if name.endswith((".tar.gz", ".tgz", ".tar")) and "cifar-10" in name:
            return os.path.join(manual_dir, name)
    return None


def read_split(source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one split ('train' or 'test') from a binary directory or its tar archive."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; expected one of {sorted(SPLIT_FILES)}")
    raws = []
    if os.path.isdir(source):
        for name in SPLIT_FILES[split]:
            path = os.path.join(source, name)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"missing CIFAR-10 batch file {path}")
            with open(path, "rb") as f:
                raws.append((path, f.read()))
    else:
        with tarfile.open(source) as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            for name in SPLIT_FILES[split]:
                if name not in members:
                    raise FileNotFoundError(f"{source} has no member {name}")
                raws.append((f"{source}:{name}", tar.extractfile(members[name]).read()))
    parts = [decode_records(raw, src) for src, raw in raws]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def encode_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Inverse of `decode_records`; used by tests to write small fake batches."""
    images = np.asarray(images, np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([np.asarray(labels, np.uint8)[:, None], planes], axis=1).tobytes()


def write_binary_dir(out_dir: str, splits: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Writes arrays in the official binary layout (train split cut into 5 batch files)."""
    bindir = os.path.join(out_dir, BINARY_DIRNAME)
    os.makedirs(bindir, exist_ok=True)
    for split, (images, labels) in splits.items():
        files = SPLIT_FILES[split]
        for name, idx in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            with open(os.path.join(bindir, name), "wb") as f:
                f.write(encode_records(images[idx], labels[idx]))
    with open(os.path.join(bindir, "batches.meta.txt"), "w") as f:
        f.write("\n".join(LABEL_NAMES) + "\n\n")
    return bindir


