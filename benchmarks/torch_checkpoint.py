"""Reads a PyTorch checkpoint in the legacy `torch.save` format (PyTorch < 1.6) with numpy alone.

Reference CIFAR ResNets trained on the original CIFAR-10 pixels are published in this format
(benchmarks/jpeg_cost.py reads them); installing PyTorch to read a few megabytes of float32 is
not worth a ~1 GB wheel. The format: three small pickles (magic number, protocol version, system
information), the object's pickle, whose tensors refer to storages by key, the list of storage
keys, then each storage's raw bytes after an 8-byte element count.

Only tensors, storages and ordered dicts are accepted from the pickle, so a checkpoint cannot
run code: any other global it names is an error.
"""

from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                  "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
                  "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                  "BoolStorage": np.bool_}
_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2")


class TorchCheckpointError(ValueError):
    """The file is not a legacy torch.save checkpoint this reader understands."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype):
        self.key, self.dtype = key, dtype


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, shape, strides):
        self.storage, self.offset = storage, offset
        self.shape, self.strides = tuple(shape), tuple(strides)


def _rebuild_tensor(storage, offset, shape, strides, *unused):
    return _TensorRef(storage, offset, shape, strides)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path
        self.storage_dtypes: dict[str, np.dtype] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in _REBUILDERS:
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise TorchCheckpointError(
            f"{self.path}: the checkpoint names {module}.{name}; only tensors, storages and "
            "ordered dicts are read (load it with PyTorch and save its state_dict as plain arrays)")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, _size, view = saved_id
        if kind != "storage" or view is not None:
            raise TorchCheckpointError(f"{self.path}: unsupported storage record {saved_id!r}")
        self.storage_dtypes[str(key)] = storage_type.dtype
        return _StorageRef(str(key), storage_type.dtype)


def read_legacy(path: str) -> Any:
    """The object `torch.save` wrote to `path`, every tensor as a numpy array."""
    if zipfile.is_zipfile(path):
        raise TorchCheckpointError(
            f"{path}: a zip-format checkpoint (PyTorch >= 1.6); this reader takes the legacy "
            "format only: re-save it with torch.save(obj, path, _use_new_zipfile_serialization=False)")
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as e:
            raise TorchCheckpointError(f"{path}: not a torch.save checkpoint ({e})") from e
        if magic != LEGACY_MAGIC:
            raise TorchCheckpointError(f"{path}: not a torch.save checkpoint (magic {magic!r})")
        pickle.load(f), pickle.load(f)  # protocol version, system information
        unpickler = _Unpickler(f, path)
        obj = unpickler.load()
        keys = pickle.load(f)
        storages = {}
        for key in keys:
            if str(key) not in unpickler.storage_dtypes:
                raise TorchCheckpointError(f"{path}: storage {key} has no type in the pickle")
            dtype = unpickler.storage_dtypes[str(key)]
            header = f.read(8)
            raw = f.read(struct.unpack("<q", header)[0] * dtype.itemsize) if len(header) == 8 else b""
            if len(header) != 8 or len(raw) != struct.unpack("<q", header)[0] * dtype.itemsize:
                raise TorchCheckpointError(f"{path}: truncated (storage {key}); download it again")
            storages[str(key)] = np.frombuffer(raw, dtype)
    return _materialise(obj, storages)


def _materialise(obj, storages):
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, storages)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages) for v in obj)
    if isinstance(obj, _TensorRef):
        flat = storages[obj.storage.key]
        size = int(np.prod(obj.shape)) if obj.shape else 1
        reach = obj.offset + sum((n - 1) * s for n, s in zip(obj.shape, obj.strides)) + 1
        if size and reach > len(flat):
            raise TorchCheckpointError(f"a tensor reaches past its storage ({reach} > {len(flat)})")
        return np.lib.stride_tricks.as_strided(
            flat[obj.offset:], obj.shape, tuple(s * flat.itemsize for s in obj.strides)).copy()
    return obj
