"""Image classification datasets from TFDS, decoded once into memory.

`load_split("cifar10", "train")` returns uint8 NHWC images and int32 labels. The records come
from `tfds.data_source` (array_record, random access, no TensorFlow) and are decoded by a grain
pipeline. Records are put back in the order of their TFDS `id` when the dataset has one, so a
split's arrays do not depend on how TFDS shuffled the shards.

Where the data come from, in order:
  1. a TFDS dataset already prepared in `data_dir` (`--data_dir`, else `$TFDS_DATA_DIR`, else
     TFDS's default `~/tensorflow_datasets`);
  2. for cifar10 and fashion_mnist, a manual directory (`--manual_dir`, else
     `$ADAPTIVE_JAX_MANUAL_DIR`) holding the official files (CIFAR-10 binary layout, Fashion-MNIST
     IDX files; for fashion_mnist also Debian's /usr/share/datasets/fashion-mnist): the TFDS
     dataset is built from them offline (offline.py);
  3. a normal TFDS download, when `download=True` and a network is there.

Where TFDS (or grain) is not installed (an accelerator image with JAX but no TensorFlow stack),
cifar10 is read straight from the manual directory's binary layout: the same arrays, in the same
order (the TFDS builder keys the records `train_00000`, ... in file order, and `load_split` sorts
by them).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse

import numpy as np

MANUAL_DIR_ENV = "ADAPTIVE_JAX_MANUAL_DIR"
SUPPORTED = ("cifar10", "cifar100", "fashion_mnist")
# Per-channel statistics used for normalisation (docs/methods.md 1.1; fashion_mnist computed on train).
CHANNEL_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409),
                "fashion_mnist": (0.2860,)}
CHANNEL_STD = {"cifar10": (0.2023, 0.1994, 0.2010), "cifar100": (0.2673, 0.2564, 0.2762),
               "fashion_mnist": (0.3530,)}


class DataNotFoundError(FileNotFoundError):
    """The dataset is neither prepared, nor buildable from a manual dir, nor downloadable."""


@dataclasses.dataclass(frozen=True)
class Split:
    """A whole split in memory. images: uint8 (N, H, W, C); labels: int32 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int) -> "Split":
        """The first `n` examples; the whole split when `n` is 0 (a config's "all") or >= its
        length."""
        if n <= 0 or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n], self.num_classes)


def default_data_dir(data_dir: str | None = None) -> str:
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR")
                              or os.path.join("~", "tensorflow_datasets"))


def default_manual_dir(manual_dir: str | None = None) -> str | None:
    return manual_dir or os.environ.get(MANUAL_DIR_ENV) or None


def _missing_message(name: str, data_dir: str, manual_dir: str | None, reason: str) -> str:
    return (
        f"dataset {name!r} is not prepared in {data_dir} ({reason}). Two ways to get it:\n"
        f"  1. with a network: allow the TFDS download (--config.download=True), or run\n"
        f"     `python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        f"data_dir='{data_dir}').download_and_prepare()\"`;\n"
        f"  2. offline: put {_offline_files(name)} in a directory and pass it as --manual_dir or "
        f"${MANUAL_DIR_ENV}" + (f" (now {manual_dir!r}, which holds no such data)" if manual_dir else "")
        + ";\n     for cifar10, `../shared/data/cifar10/prepare DIR` writes that layout from the "
        "bundled copy.")


def _offline_files(name: str) -> str:
    from adaptive_jax.data import offline
    return offline.MANUAL_INSTRUCTIONS.get(name, "(no offline builder for this dataset yet)")


def data_source(name: str, data_dir: str | None = None, manual_dir: str | None = None,
                download: bool = False):
    """TFDS random-access sources for `name`, a dict split -> source; builds or downloads if needed."""
    if name not in SUPPORTED:
        raise ValueError(f"unknown dataset {name!r}; supported: {SUPPORTED}")
    import tensorflow_datasets as tfds  # here, not at import: the binary fallback needs none

    data_dir = default_data_dir(data_dir)
    manual_dir = default_manual_dir(manual_dir)
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        from adaptive_jax.data import offline
        local = offline.find_local_source(name, manual_dir)
        if local is not None:
            offline.build_from_local_files(name, data_dir, local)
        elif download:
            unreachable = _unreachable(builder.info.homepage)
            if unreachable:  # fail now, not after TFDS's minutes of retries
                raise DataNotFoundError(_missing_message(name, data_dir, manual_dir, unreachable))
            try:
                builder.download_and_prepare()
            except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
                raise DataNotFoundError(_missing_message(name, data_dir, manual_dir,
                                                         f"download failed: {e}")) from e
        else:
            raise DataNotFoundError(_missing_message(name, data_dir, manual_dir, "download is off"))
    return tfds.data_source(name, data_dir=data_dir, download=False)


def _unreachable(url: str, timeout_s: float = 5.0) -> str | None:
    """Why the dataset's host cannot be reached (no DNS, no route, a timeout), or None if a TCP
    connection to it opens: a quick probe before a download whose retries take minutes."""
    parsed = urllib.parse.urlparse(url or "")
    host = parsed.hostname
    if not host:
        return None  # nothing to probe: let TFDS try
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"no network: cannot reach {host}:{port} to download ({type(e).__name__}: {e})"
    return None


def _decode(record) -> tuple[np.ndarray, int, str]:
    return record["image"], record["label"], record.get("id", b"")


def load_split(name: str, split: str, data_dir: str | None = None,
               manual_dir: str | None = None, download: bool = False,
               num_threads: int = 2) -> Split:
    """Decodes one split of `name` into memory (see module docstring for where data come from)."""
    if not _tfds_installed():
        return _load_split_without_tfds(name, split, manual_dir)
    import grain

    sources = data_source(name, data_dir, manual_dir, download)
    if split not in sources:
        raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(sources)}")
    source = sources[split]
    dataset = (grain.MapDataset.source(source).map(_decode)
               .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=256)))
    images, labels, ids = zip(*dataset)
    images = np.stack(images)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray(labels, np.int32)
    if ids[0]:
        order = np.argsort(np.asarray(ids))
        images, labels = images[order], labels[order]
    num_classes = source.dataset_info.features["label"].num_classes
    return Split(np.ascontiguousarray(images), labels, num_classes)


def _tfds_installed() -> bool:
    """TFDS and grain (its records are decoded by a grain pipeline) are both importable."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow_datasets", "grain"))


def _load_split_without_tfds(name: str, split: str, manual_dir: str | None) -> Split:
    """cifar10 from the binary layout in the manual dir, for an environment without TFDS."""
    from adaptive_jax.data import cifar_binary

    manual_dir = default_manual_dir(manual_dir)
    source = (cifar_binary.find_binary_source(manual_dir)
              if name == "cifar10" and manual_dir else None)
    if source is None:
        raise DataNotFoundError(
            f"dataset {name!r}: tensorflow_datasets or grain is not installed, and without it "
            f"only cifar10 is read, from the official binary layout in --manual_dir or "
            f"${MANUAL_DIR_ENV} (now {manual_dir!r}). Install them "
            "(`pip install tensorflow-datasets grain`), or for "
            "cifar10 run `../shared/data/cifar10/prepare DIR` and pass DIR as the manual dir.")
    images, labels = cifar_binary.read_split(source, split)
    return Split(images, labels.astype(np.int32), len(cifar_binary.LABEL_NAMES))
