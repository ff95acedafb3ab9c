"""Policies: modules that look at the input and return execution probabilities, and the rules that
turn probabilities into plans (adaptive_jax.plans).

  ofas.OFASHead: one evaluation after the stem plans every block (docs/methods.md 3.2).
  gates.BlockGate: a per-block gate in front of each block (SkipNet / ConvNet-AIG style), the
      baseline OFAS is compared with.
  decisions: threshold (inference), bounded Bernoulli (policy gradient), straight-through (stage A),
      and the OFAS reference code's epsilon-greedy estimator.
"""

from adaptive_jax.policies import decisions
from adaptive_jax.policies.gates import BlockGate
from adaptive_jax.policies.ofas import OFAS_VARIANTS, OFASHead

__all__ = ["BlockGate", "OFASHead", "OFAS_VARIANTS", "decisions"]
