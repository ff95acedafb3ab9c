"""Deterministic, resumable epoch iterator over an in-memory split.

The order of epoch `e` is a permutation drawn from `numpy.random.default_rng([seed, e])`, so the
iterator's whole state is two integers (epoch, batch index). Saving them with a checkpoint and
restoring them gives exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from adaptive_jax.data.datasets import Split


@dataclasses.dataclass
class IteratorState:
    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IteratorState":
        unknown = set(d) - {"epoch", "batch"}
        if unknown:
            raise ValueError(f"unknown data-iterator state keys {sorted(unknown)}")
        return cls(int(d["epoch"]), int(d["batch"]))


class EpochIterator:
    """Yields (images uint8 (B, H, W, C), labels int32 (B,)) training batches; drops the remainder."""

    def __init__(self, split: Split, batch_size: int, seed: int,
                 state: IteratorState | None = None):
        if batch_size < 1 or batch_size > len(split):
            raise ValueError(f"batch_size must be in [1, {len(split)}] for this split, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.state = state or IteratorState()
        self._order_epoch = -1
        self._order = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.split) // self.batch_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))
            self._order_epoch = epoch
        return self._order

    def epoch_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The remaining batches of the current epoch; advances the state past each one."""
        order = self._epoch_order(self.state.epoch)
        while self.state.batch < self.batches_per_epoch:
            idx = np.sort(order[self.state.batch * self.batch_size:
                                (self.state.batch + 1) * self.batch_size])
            self.state.batch += 1
            yield self.split.images[idx], self.split.labels[idx]
        self.state = IteratorState(self.state.epoch + 1, 0)


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every example once, in order; the last batch is zero-padded to `batch_size`.

    Yields (images, labels, mask) with mask float32 (B,) marking real examples, so one compiled
    evaluation step serves every batch.
    """
    n = len(split)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        images, labels = split.images[start:stop], split.labels[start:stop]
        mask = np.ones(batch_size, np.float32)
        if stop - start < batch_size:
            pad = batch_size - (stop - start)
            images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
            mask[stop - start:] = 0
        yield images, labels, mask
