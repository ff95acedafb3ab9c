"""Training nested sub-nets in one set of weights (Yang & Fan, docs/methods.md 4; US-Nets, 2.4), as a
`Task` of the training loop.

Modes (`config.slim.mode`):
- "multi_path": every width each step, gradients summed, one update (Slimmable Networks): the
  costly baseline, len(widths) forward / backward passes per step.
- "single_path": one width per epoch, drawn at random from the menu (the paper's proposal): one
  pass per step. `slim.steps_per_switch` draws more often (short schedules: 2 epochs would train
  only 2 of 4 widths). The width is static per compiled step; the host picks the step's.
- "progressive": single-path as docs/methods.md 4.2 reconstructs it (the paper's tables were not
  retrievable): one run in which the sub-nets are derived one after another, widest first, at
  evenly spaced points of the schedule; from then on every step sums the cross-entropies of the
  full net and of every sub-net derived so far. Its cost grows from one pass to all of them.
- "sandwich": the largest and the smallest width plus `num_random` widths from the rest of the
  menu each step; the largest learns from the labels, the others from its predictions (in-place
  distillation, soft targets with stop-gradient).
- "alone": only `slim.width` (a plain network of that width: the reference each width of the
  slimmable net is compared with).
Evaluation reports top-1 of every width: `test_accuracy_w0.25`, ... (`test_accuracy` = full width).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from adaptive_jax import config as config_lib
from adaptive_jax.data.augment import normalize
from adaptive_jax.models.slimmable import SlimmableResNet, SlimmableSpec
from adaptive_jax.nn.slim import width_index
from adaptive_jax.train import loop, steps

MODES = ("multi_path", "single_path", "progressive", "sandwich", "alone")


def default_config() -> ml_collections.ConfigDict:
    c = loop.default_config()
    c.slim = ml_collections.ConfigDict()
    c.slim.widths = (0.25, 0.5, 0.75, 1.0)
    c.slim.mode = "sandwich"
    c.slim.width = 1.0        # "alone": the one width trained
    c.slim.num_random = 1     # "sandwich": widths drawn between the smallest and the largest
    c.slim.steps_per_switch = 0  # "single_path": steps between width draws; 0 -> one epoch
    return c


def check_config(config) -> None:
    """The width menu and training mode: run before any data is loaded."""
    c = config_lib
    c.check_config_values(config, {
        "slim.widths": c.sequence_of(c.number(above=0, maximum=1), unique=True),
        "slim.width": c.number(above=0, maximum=1),
        "slim.num_random": c.integer(0), "slim.steps_per_switch": c.integer(0)})
    if config.slim.mode not in MODES:
        raise ValueError(f"unknown slim.mode {config.slim.mode!r}; expected one of {MODES}")
    SlimmableSpec(config.model.depth, widths=tuple(config.slim.widths))  # the menu's checks
    if config.slim.mode == "alone":
        width_index(tuple(config.slim.widths), config.slim.width)


def build_model(config, num_classes: int, in_channels: int) -> SlimmableResNet:
    check_config(config)
    spec = SlimmableSpec(config.model.depth, num_classes, tuple(config.slim.widths), in_channels,
                         config.model.conv_lowering)
    return SlimmableResNet(spec, rngs=nnx.Rngs(config.seed))


def make_train_step(graphdef, tx, config, *, num_classes: int, mean, std,
                    steps_per_epoch: int = 1):
    widths = tuple(config.slim.widths)
    mode = config.slim.mode

    def loss(train_widths, model, images, labels, key, step):
        losses, teacher, accuracy = [], None, None
        for w in train_widths:  # widest first: it is the teacher in sandwich mode
            logits = model(images, w)
            if mode == "sandwich" and teacher is not None:
                value = steps.soft_cross_entropy(logits, teacher).mean()
            else:
                value = steps.cross_entropy(logits, labels, num_classes).mean()
                teacher = logits
            losses.append(value)
            if accuracy is None:
                accuracy = (logits.argmax(-1) == labels).mean()
        return sum(losses), {"loss": losses[0], "accuracy": accuracy}

    branches, pick = _branches(config, widths, steps_per_epoch)

    # One compiled step per set of widths, picked on the host. A `lax.switch` over the
    # gradient branches ran 3.2x slower on XLA:CPU (sandwich 10.1 s per step; 3.1 s picked on
    # the host; `python -m benchmarks.slimmable_train_cost`, both in RESULTS.md).
    compiled = [jax.jit(steps.make_step(graphdef, tx, functools.partial(loss, b), mean=mean, std=std),
                        donate_argnums=0) for b in branches]
    if len(compiled) == 1:
        return compiled[0]
    pick = jax.jit(pick)

    def train_step(state: steps.TrainState, images_u8, labels):
        return compiled[int(pick(state.step, state.rng))](state, images_u8, labels)

    return train_step


def _branches(config, widths: tuple[float, ...], steps_per_epoch: int):
    """(the width sets a step may train, widest first; pick(step, rng) -> index of this step's)."""
    mode = config.slim.mode
    if mode == "multi_path":
        return [widths[::-1]], lambda step, rng: 0
    if mode == "alone":
        return [(config.slim.width,)], lambda step, rng: 0
    if mode == "progressive":
        # set k: the full width and the k next widths; k grows evenly over the schedule
        total = steps_per_epoch * config.num_epochs
        return ([widths[::-1][:k + 1] for k in range(len(widths))],
                lambda step, rng: jnp.minimum(step * len(widths) // total, len(widths) - 1))
    if mode == "single_path":
        # one width per epoch (or per slim.steps_per_switch steps): one draw for all its steps
        period = config.slim.steps_per_switch or steps_per_epoch

        def pick(step, rng):
            key = jax.random.fold_in(jax.random.fold_in(rng, 7_919), step // period)
            return jax.random.randint(key, (), 0, len(widths))
        return [(w,) for w in widths], pick
    # sandwich: largest, smallest, and num_random of the widths between
    middle = widths[1:-1]
    if config.slim.num_random and middle:
        k = min(config.slim.num_random, len(middle))
        picks = [tuple(sorted(c, reverse=True)) for c in itertools.combinations(middle, k)]
    else:
        picks = [()]

    def pick(step, rng):
        _, width_key = jax.random.split(jax.random.fold_in(rng, step))
        return jax.random.randint(width_key, (), 0, len(picks))
    return [(widths[-1],) + p + (widths[0],) for p in picks], pick


def make_eval_step(graphdef, config, *, num_classes: int, mean, std):
    widths = (config.slim.width,) if config.slim.mode == "alone" else tuple(config.slim.widths)

    def eval_step(params, batch_stats, images_u8, labels, mask):
        model = nnx.merge(graphdef, params, batch_stats)
        model.eval()
        images = normalize(images_u8, mean, std)
        out = {"count": mask.sum()}
        for w in widths:
            logits = model(images, w)
            correct = ((logits.argmax(-1) == labels) * mask).sum()
            out[f"accuracy_w{w:g}_sum"] = correct
            if w == widths[-1]:
                out["accuracy_sum"] = correct
                out["loss_sum"] = (steps.cross_entropy(logits, labels, num_classes) * mask).sum()
        return out

    return jax.jit(eval_step)


def task() -> loop.Task:
    return loop.Task(build_model=build_model, make_train_step=make_train_step,
                     make_eval_step=make_eval_step, reference_config=default_config,
                     validate_config=check_config)
