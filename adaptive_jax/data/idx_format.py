"""Reader for the IDX files of MNIST and Fashion-MNIST (`train-images-idx3-ubyte[.gz]`, ...).

Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
big-endian uint32 per dimension; the data follow in row-major order. numpy only.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IdxFormatError(ValueError):
    """A file is not a well-formed uint8 IDX file."""


def decode_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(f"{source}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise IdxFormatError(f"{source}: IDX type 0x{raw[2]:02x} is not uint8 (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
    if len(raw) - header != int(np.prod(shape)):
        raise IdxFormatError(f"{source}: header says {shape} = {int(np.prod(shape))} bytes, "
                             f"file holds {len(raw) - header}; truncated?")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    array = np.asarray(array, np.uint8)
    return (bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.tobytes())


def _read(directory: str, name: str) -> np.ndarray:
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(path, "rb") as f:
                return decode_idx(f.read(), path)
    raise FileNotFoundError(f"missing {name}[.gz] in {directory}")


def has_split_files(directory: str) -> bool:
    return all(os.path.isfile(os.path.join(directory, f)) or
               os.path.isfile(os.path.join(directory, f + ".gz"))
               for files in SPLIT_FILES.values() for f in files)


def read_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 (N, 28, 28, 1), labels int64 (N,)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FILES)}")
    image_file, label_file = SPLIT_FILES[split]
    images, labels = _read(directory, image_file), _read(directory, label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IdxFormatError(f"{directory}: {split} images {images.shape} and labels "
                             f"{labels.shape} do not pair up")
    return images[..., None], labels.astype(np.int64)
