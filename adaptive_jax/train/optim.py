"""Optax optimiser and learning-rate schedules for the CIFAR recipes."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("cosine", "onecycle", "constant", "step")


def learning_rate_schedule(name: str, peak: float, total_steps: int,
                           warmup_steps: int = 0) -> optax.Schedule:
    """Learning rate per step.

    cosine: linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to 0.
    onecycle: Smith's one-cycle (rise for 30 % of the steps, anneal to ~0), cosine-shaped.
    step: `peak`, divided by 10 at 50 % and again at 75 % of the steps (He et al.'s CIFAR
    schedule: 32k and 48k of 64k iterations, as DFS trains).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup_steps, 0),
                                                  max(total_steps, warmup_steps + 1), 0.0)
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(total_steps, peak, pct_start=0.3,
                                              div_factor=25.0, final_div_factor=1e3)
    if name == "constant":
        return optax.constant_schedule(peak)
    if name == "step":
        return optax.piecewise_constant_schedule(
            peak, {max(total_steps // 2, 1): 0.1, max(3 * total_steps // 4, 1): 0.1})
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")


def _decay_mask(params):
    # Decay conv / dense kernels only; BN scales and biases are not regularised. Judge by name,
    # not rank: stacked blocks give every variable an extra leading axis.
    def is_kernel(path, _):
        return any(getattr(k, "key", None) == "kernel" for k in path)

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(*, learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
                   nesterov: bool = True, weight_decay: float = 5e-4) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and L2 weight decay added to the gradient, as in PyTorch's SGD."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=_decay_mask),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )
