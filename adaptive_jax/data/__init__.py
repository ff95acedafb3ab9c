"""Datasets (TFDS + grain, offline builder), augmentation and input iterators."""

from adaptive_jax.data.augment import augment, normalize, random_crop, random_flip
from adaptive_jax.data.datasets import (CHANNEL_MEAN, CHANNEL_STD, DataNotFoundError, Split,
                                        data_source, load_split)
from adaptive_jax.data.pipeline import EpochIterator, IteratorState, eval_batches

__all__ = ["augment", "normalize", "random_crop", "random_flip", "CHANNEL_MEAN", "CHANNEL_STD",
           "DataNotFoundError", "Split", "data_source", "load_split", "EpochIterator",
           "IteratorState", "eval_batches"]
