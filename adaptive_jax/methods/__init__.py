"""Methods: a policy, a backbone and how they run together (docs/architecture.md).

  ofas   OFASNet: one head after the stem plans every block (docs/methods.md 3); FixedPlanNet,
         the static sub-net it is compared with; `make_predictors` for serving.
  dfs    DFSNet: a bitwidth per image and block, 0 bits = skip (docs/dfs.md), by the paper's
         recurrent gate (block by block) or a once-for-all head after the stem.
  gates  GatedResNet: a gate in front of every block (SkipNet / ConvNet-AIG), decided block by
         block.

Methods import models, policies and execution; nothing below imports them.
"""

from adaptive_jax.methods import dfs, gates, ofas
from adaptive_jax.methods.dfs import DFSNet
from adaptive_jax.methods.gates import GatedResNet
from adaptive_jax.methods.ofas import FixedPlanNet, OFASNet, make_predictors

__all__ = ["DFSNet", "FixedPlanNet", "GatedResNet", "OFASNet", "dfs", "gates", "make_predictors",
           "ofas"]
