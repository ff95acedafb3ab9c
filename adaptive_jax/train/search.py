"""Greedy search for a static plan under a budget: the static baselines adaptive methods must beat
at equal cost (OFAS: the best static sub-net at its MACs; DFS: the best static mixed-precision
allocation at its BitOPs, HAQ-like)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import numpy as np


def journaled(evaluate: Callable[[np.ndarray], float], path: str | None = None,
              context: dict | None = None) -> Callable[[np.ndarray], float]:
    """`evaluate(plan)` memoised, and with `path` also kept on disk as the search goes: one JSON
    line per plan evaluated, so a search interrupted after hours (a DFS allocation evaluates
    hundreds of plans on held-out images) resumes where it stopped instead of starting again.

    `context` (JSON values: what the figures depend on, such as the held-out set's size) is
    written on each line; lines of another context are not reused, so a journal kept beside a
    run never answers for a different search. A last line cut short by an interruption is
    ignored (it is evaluated again)."""
    context = {} if context is None else json.loads(json.dumps(context))
    known: dict[tuple, float] = {}
    if path is not None and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted write
                if entry.get("context") == context:
                    known[_plan_key(entry["plan"])] = float(entry["value"])
        with open(path, "rb+") as f:  # end a cut line, so the next entry starts a line of its own
            if f.seek(0, os.SEEK_END):
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def value(plan) -> float:
        key = _plan_key(plan)
        if key not in known:
            known[key] = float(evaluate(plan))
            if path is not None:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "a") as f:
                    f.write(json.dumps({"context": context, "plan": list(key),
                                        "value": known[key]}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        return known[key]

    return value


def _plan_key(plan) -> tuple:
    array = np.asarray(plan)
    return tuple(bool(v) for v in array) if array.dtype == np.bool_ else tuple(int(v) for v in array)


def greedy_descent(start: np.ndarray, moves: Callable[[np.ndarray], list[tuple[int, np.ndarray]]],
                   price: Callable[[np.ndarray], float], accuracy: Callable[[np.ndarray], float],
                   budget: float, per_saving: bool = False) -> tuple[np.ndarray, list[dict]]:
    """From `start`, take one move at a time, each time the one whose plan keeps the highest
    `accuracy` (ties: the cheaper plan, then the later unit), until `price(plan) <= budget`.

    `per_saving=True` ranks moves by accuracy lost per unit of price saved instead (a move that
    loses nothing ranks first, the larger saving first among those): for moves of unequal
    savings (a block from float to 16 bits saves 75 % of its BitOPs, from 16 to 14 bits 6 %),
    where ranking by accuracy alone takes the smallest steps, each costing a search round.

    `moves(plan)` -> [(unit, cheaper plan)]. Returns the final plan and the path (plan, price,
    accuracy, and the unit each step moved). A budget no move sequence reaches is an error."""
    plan = np.asarray(start)
    path = [{"plan": plan.tolist(), "price": float(price(plan)), "accuracy": accuracy(plan)}]
    now = path[0]["accuracy"]
    while price(plan) > budget:
        cost_now = float(price(plan))

        def rank(trial):
            if not per_saving:
                return accuracy(trial)
            return -max(0.0, now - accuracy(trial)) / max(cost_now - float(price(trial)), 1e-12)

        candidates = [(rank(trial), -float(price(trial)), unit, trial)
                      for unit, trial in moves(plan)]
        if not candidates:
            raise ValueError(f"no static plan reaches the budget {budget:.4g} (the cheapest "
                             f"reached costs {price(plan):.4g})")
        best = max(candidates, key=lambda c: c[:3])
        plan = best[3]
        now = accuracy(plan) if per_saving else best[0]  # (each candidate's was just computed)
        path.append({"plan": plan.tolist(), "price": -best[1], "accuracy": now, "moved": best[2]})
    return plan, path


def mixture_at(below: dict, above: dict, cost: float, cost_key: str, keys: tuple[str, ...]) -> dict:
    """Two static plans' results (`below[cost_key] <= cost <= above[cost_key]`) mixed at `cost`
    per image: the one above runs on a share w of the images, w = (cost - below) / (above -
    below), so the mean cost is `cost`, and every figure in `keys` (accuracy, other prices) is, in
    expectation, the interpolation between the two. Whole blocks or bitwidth steps are coarse, so
    the greedy plan under an adaptive point's cost is cheaper than it; the mixture is the static
    (input-blind) comparison at exactly equal cost. Returns {"share_above": w, "cost_cv": the
    per-image cost's coefficient of variation, cost_key: cost, key: mixed value for each key}."""
    low, high = below[cost_key], above[cost_key]
    if not low <= cost <= high or low == high:
        raise ValueError(f"a mixture of static plans at {cost_key} {cost:.4g} needs one at or below "
                         f"and one above it, got {low:.4g} and {high:.4g}")
    w = (cost - low) / (high - low)
    mixed = {key: (1 - w) * below[key] + w * above[key] for key in keys}
    return {"share_above": w, "cost_cv": (high - low) * math.sqrt(w * (1 - w)) / cost,
            cost_key: float(cost), **mixed}


def bracketing_mixture(rows: list[dict], cost: float, cost_key: str,
                       keys: tuple[str, ...]) -> dict | None:
    """`mixture_at` of the two `rows` (static plans' results) nearest `cost`, the dearest at or
    below it and the cheapest above it, with their rows as "below" and "above"; None when no two
    rows bracket `cost`."""
    lower = [r for r in rows if r[cost_key] <= cost]
    upper = [r for r in rows if r[cost_key] > cost]
    if not (lower and upper):
        return None
    below = max(lower, key=lambda r: r[cost_key])
    above = min(upper, key=lambda r: r[cost_key])
    return {**mixture_at(below, above, cost, cost_key, keys), "below": below, "above": above}
