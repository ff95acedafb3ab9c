"""Runtime adaptation to resources: operating points, choosing one for a constraint, and a manager
that follows the observed latency and switches between pre-compiled points (Dynamic-OFA, docs/methods.md
6.3). Points are generic: sub-net widths, OFAS penalty levels, DFS budgets, anything whose
executable is already compiled.
"""

from adaptive_jax.runtime.manager import Choice, OperatingPoint, RuntimeManager, Switch, choose

__all__ = ["Choice", "OperatingPoint", "RuntimeManager", "Switch", "choose"]
