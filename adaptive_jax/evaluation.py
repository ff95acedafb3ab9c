"""A model's outputs over a whole split: the one batch loop that evaluations share (the training
loop's test plans and top-1, the zoo's logits, the experiments' test logits)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from adaptive_jax import execution
from adaptive_jax.data import datasets, pipeline
from adaptive_jax.data.augment import normalize


def split_outputs(graphdef, params, batch_stats, split: datasets.Split, dataset: str,
                  output: Callable, batch_size: int = 500) -> np.ndarray:
    """`output(model, images)` (eval mode, images normalised with `dataset`'s statistics) for
    every image of `split`, concatenated over the batches (the last one's padding dropped)."""
    mean, std = datasets.CHANNEL_MEAN[dataset], datasets.CHANNEL_STD[dataset]
    output_of = execution.jit_predict(
        graphdef, lambda model, images_u8: output(model, normalize(images_u8, mean, std)))
    outputs = [np.asarray(output_of(params, batch_stats, images))[mask > 0]
               for images, _, mask in pipeline.eval_batches(split, batch_size)]
    return np.concatenate(outputs)
