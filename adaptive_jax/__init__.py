"""adaptive_jax: adaptive neural networks in JAX / Flax NNX where skipped work really does not run.

The house (docs/architecture.md), bottom to top: a policy *decides*, a plan *says*, an executor
*runs*.

  plans       what a network runs, as data: block plans, option plans, static plans
  nn, models  layers; backbones (CifarResNet, SlimmableResNet) and the menus of options a unit
              can run (models.options); the walk over a backbone's units
  policies    heads and gates that turn an input into execution probabilities, and decisions
  execution   executors (masked, cond / switch, bucketed, static) as values; compiled predict
              functions; executable caches
  methods     a policy + a backbone + how they run: OFAS, per-block gates
  cost        MACs / BitOPs per unit and option, counted from the jaxpr
  latency     measured milliseconds; report: tables and plots
  runtime     operating points and the manager that switches between them
  train, data Optax training loop and tasks, orbax checkpoints; TFDS datasets
  zoo         trained backbones and OFAS models shipped with the package
"""

from adaptive_jax import (config, cost, data, execution, latency, methods, models, nn, plans,
                          policies, report, runtime, train, zoo)
from adaptive_jax.execution import (Executor, StaticExecutor, SubnetExecutor, bucketed, cond,
                                    make_predict_fn, masked, static, switch)
from adaptive_jax.methods import DFSNet, FixedPlanNet, GatedResNet, OFASNet
from adaptive_jax.models import CifarResNet, ResNetSpec, resnet
from adaptive_jax.models.options import RUN_OR_SKIP, Bitwidths, InnerWidths, UnitOptions
from adaptive_jax.models.slimmable import SlimmableResNet, SlimmableSpec, WidthSubnet
from adaptive_jax.plans import (BlockLayout, OptionLayout, StaticBlockPlan, StaticOptionPlan,
                                StaticPlan)
from adaptive_jax.runtime import OperatingPoint, RuntimeManager

__version__ = "0.1.0"
__all__ = [
    # subpackages and modules
    "config", "cost", "data", "execution", "latency", "methods", "models", "nn", "plans",
    "policies", "report", "runtime", "train", "zoo",
    # models and menus
    "CifarResNet", "ResNetSpec", "resnet", "SlimmableResNet", "SlimmableSpec", "RUN_OR_SKIP",
    "Bitwidths", "InnerWidths", "UnitOptions",
    # plans
    "BlockLayout", "OptionLayout", "StaticBlockPlan", "StaticOptionPlan", "StaticPlan",
    "WidthSubnet",
    # executors
    "Executor", "StaticExecutor", "SubnetExecutor", "bucketed", "cond", "make_predict_fn",
    "masked", "static", "switch",
    # methods and runtime
    "DFSNet", "FixedPlanNet", "GatedResNet", "OFASNet", "OperatingPoint", "RuntimeManager",
]
