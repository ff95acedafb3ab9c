"""Greedy search for a static plan under a budget: the static baselines adaptive methods must beat
at equal cost (OFAS: the best static sub-net at its MACs; DFS: the best static mixed-precision
allocation at its BitOPs, HAQ-like)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def greedy_descent(start: np.ndarray, moves: Callable[[np.ndarray], list[tuple[int, np.ndarray]]],
                   price: Callable[[np.ndarray], float], accuracy: Callable[[np.ndarray], float],
                   budget: float) -> tuple[np.ndarray, list[dict]]:
    """From `start`, take one move at a time, each time the one whose plan keeps the highest
    `accuracy` (ties: the cheaper plan, then the later unit), until `price(plan) <= budget`.

    `moves(plan)` -> [(unit, cheaper plan)]. Returns the final plan and the path (plan, price,
    accuracy, and the unit each step moved). A budget no move sequence reaches is an error."""
    plan = np.asarray(start)
    path = [{"plan": plan.tolist(), "price": float(price(plan)), "accuracy": accuracy(plan)}]
    while price(plan) > budget:
        candidates = [(accuracy(trial), -float(price(trial)), unit, trial)
                      for unit, trial in moves(plan)]
        if not candidates:
            raise ValueError(f"no static plan reaches the budget {budget:.4g} (the cheapest "
                             f"reached costs {price(plan):.4g})")
        best = max(candidates, key=lambda c: c[:3])
        plan = best[3]
        path.append({"plan": plan.tolist(), "price": -best[1], "accuracy": best[0],
                     "moved": best[2]})
    return plan, path
