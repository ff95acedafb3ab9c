"""Optax training: optimiser, pure train / eval steps, orbax checkpoints, metrics, sharding."""

from adaptive_jax.train.checkpoint import CheckpointError, Checkpointer
from adaptive_jax.train.loop import (NonFiniteError, default_config, train_and_evaluate,
                                     validate_config)
from adaptive_jax.train.metrics import MetricsWriter, read_metrics
from adaptive_jax.train.optim import learning_rate_schedule, make_optimizer
from adaptive_jax.train.steps import (TrainState, apply_gradients, create_train_state,
                                      cross_entropy, make_eval_step, make_train_step)
from adaptive_jax.train.workdir import WorkdirError, WorkdirLock

__all__ = ["CheckpointError", "Checkpointer", "NonFiniteError", "default_config",
           "train_and_evaluate", "validate_config", "MetricsWriter", "read_metrics",
           "learning_rate_schedule", "make_optimizer", "TrainState", "apply_gradients",
           "create_train_state", "cross_entropy", "make_eval_step", "make_train_step",
           "WorkdirError", "WorkdirLock"]
