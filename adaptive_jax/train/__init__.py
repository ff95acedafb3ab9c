"""Optax training: optimiser, pure train / eval steps, orbax checkpoints, metrics, sharding."""

from adaptive_jax.train.checkpoint import CheckpointError, Checkpointer
from adaptive_jax.train.loop import default_config, train_and_evaluate
from adaptive_jax.train.metrics import MetricsWriter, read_metrics
from adaptive_jax.train.optim import learning_rate_schedule, make_optimizer
from adaptive_jax.train.steps import (TrainState, create_train_state, cross_entropy, make_eval_step,
                                      make_train_step)

__all__ = ["CheckpointError", "Checkpointer", "default_config", "train_and_evaluate",
           "MetricsWriter", "read_metrics", "learning_rate_schedule", "make_optimizer",
           "TrainState", "create_train_state", "cross_entropy", "make_eval_step", "make_train_step"]
