"""Per-op times of a compiled JAX program, read from `jax.profiler`'s trace (no TensorFlow, no
xprof: the trace's JSON events and the optimised HLO's text are all it needs).

Each event of the trace is one op the executable ran (a fusion, a convolution, a dot), named as
in the optimised HLO; joined with the HLO's output shapes, the times add up per kind of op and per
kind and shape. Used by `benchmarks.step_profile`.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

MIN_SHARE = 0.005  # kinds below this share of the ops' time are summed into one row
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ")


def hlo_output_shapes(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its output shape (layout dropped), for every instruction in the text."""
    shapes = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            shapes[match.group(1)] = re.sub(r"\{[^}]*\}", "", match.group(2))
    return shapes


def op_kind(name: str) -> str:
    """`transpose_copy_fusion.42` -> `transpose_copy_fusion`."""
    return re.sub(r"\.\d+$", "", name)


def traced_op_microseconds(trace_dir: str, op_names) -> dict[str, float]:
    """Total microseconds per op of `op_names` in the trace written under `trace_dir`."""
    files = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: this jax's profiler wrote "
                                "no trace events; nothing to read")
    with gzip.open(files[0]) as f:
        events = json.load(f)["traceEvents"]
    totals = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in op_names:
            totals[event["name"]] += float(event["dur"])
    if not totals:
        raise ValueError(f"the trace under {trace_dir} names none of the program's ops: was the "
                         "traced call the program whose HLO gave `op_names`?")
    return dict(totals)


def summarise(op_us: dict[str, float], shapes: dict[str, str], steps: int):
    """(rows by kind, rows by kind and shape), milliseconds per step, largest first."""
    by_kind, by_shape = collections.Counter(), collections.Counter()
    count_kind, count_shape = collections.Counter(), collections.Counter()
    for name, us in op_us.items():
        kind = op_kind(name)
        by_kind[kind] += us
        by_shape[(kind, shapes[name])] += us
        count_kind[kind] += 1
        count_shape[(kind, shapes[name])] += 1
    total = sum(by_kind.values())
    kind_rows = [{"kind": k, "ops": count_kind[k], "ms": us / steps / 1e3, "share": us / total}
                 for k, us in by_kind.most_common()]
    small = [r for r in kind_rows if r["share"] < MIN_SHARE]
    if len(small) > 1:  # the many kinds of negligible ops, as one row
        kind_rows = [r for r in kind_rows if r["share"] >= MIN_SHARE]
        kind_rows.append({"kind": f"{len(small)} other kinds",
                          "ops": sum(r["ops"] for r in small), "ms": sum(r["ms"] for r in small),
                          "share": sum(r["share"] for r in small)})
    shape_rows = [{"kind": k, "shape": s, "ops": count_shape[(k, s)], "ms": us / steps / 1e3,
                   "each": us / steps / 1e3 / count_shape[(k, s)], "share": us / total}
                  for (k, s), us in by_shape.most_common()]
    return kind_rows, shape_rows
