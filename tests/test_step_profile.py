"""benchmarks.step_profile / op_profile: the train step's ops, each timed from the profiler's
trace (the helpers are imported from op_profile, which defines no absl flags)."""

import gzip
import json

import pytest

from benchmarks import op_profile
from tests.conftest import run_experiment

HLO = """HloModule jit_step

%fused_computation.3 (param_0.1: f32[8,4]) -> f32[8,4] {
  %param_0.1 = f32[8,4]{1,0} parameter(0)
  ROOT %max.2 = f32[8,4]{1,0} maximum(%param_0.1, %param_0.1)
}

ENTRY %main.9 (x.1: f32[8,16], w.2: f32[16,4]) -> f32[8,4] {
  %x.1 = f32[8,16]{1,0} parameter(0)
  %w.2 = f32[16,4]{1,0} parameter(1)
  %dot.4 = f32[8,4]{1,0} dot(%x.1, %w.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %dot.5 = f32[8,4]{1,0} dot(%x.1, %w.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %maximum_fusion.7 = f32[8,4]{1,0} fusion(%dot.4), kind=kLoop, calls=%fused_computation.3
}
"""


def test_hlo_output_shapes_names_every_instruction_with_its_shape_without_layout():
    shapes = op_profile.hlo_output_shapes(HLO)
    assert shapes["dot.4"] == shapes["maximum_fusion.7"] == "f32[8,4]"
    assert shapes["x.1"] == "f32[8,16]" and shapes["max.2"] == "f32[8,4]"
    assert op_profile.op_kind("transpose_copy_fusion.42") == "transpose_copy_fusion"
    assert op_profile.op_kind("copy") == "copy"


def test_summarise_groups_by_kind_and_shape_per_step_and_folds_negligible_kinds():
    shapes = {"dot.4": "f32[8,4]", "dot.5": "f32[8,4]", "maximum_fusion.7": "f32[8,4]",
              "copy.1": "f32[2]", "add.2": "f32[2]"}
    op_us = {"dot.4": 3000.0, "dot.5": 5000.0, "maximum_fusion.7": 1960.0, "copy.1": 20.0,
             "add.2": 20.0}
    kinds, by_shape = op_profile.summarise(op_us, shapes, steps=2)
    assert [r["kind"] for r in kinds] == ["dot", "maximum_fusion", "2 other kinds"]
    dot = kinds[0]
    assert dot["ops"] == 2 and dot["ms"] == pytest.approx(4.0)
    assert dot["share"] == pytest.approx(0.8)
    assert kinds[-1]["ms"] == pytest.approx(0.02) and kinds[-1]["ops"] == 2
    assert sum(r["share"] for r in kinds) == pytest.approx(1.0)
    assert by_shape[0] == {"kind": "dot", "shape": "f32[8,4]", "ops": 2, "ms": pytest.approx(4.0),
                           "each": pytest.approx(2.0), "share": pytest.approx(0.8)}


def test_a_trace_without_the_program_s_ops_is_an_error_not_an_empty_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.trace.json.gz"):
        op_profile.traced_op_microseconds(str(tmp_path), {"dot.4"})
    run = tmp_path / "plugins" / "profile" / "run"
    run.mkdir(parents=True)
    with gzip.open(run / "host.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": [{"ph": "X", "name": "other.1", "dur": 5.0}]}, f)
    with pytest.raises(ValueError, match="names none of the program's ops"):
        op_profile.traced_op_microseconds(str(tmp_path), {"dot.4"})
    assert op_profile.traced_op_microseconds(str(tmp_path), {"other.1"}) == {"other.1": 5.0}


def test_step_profile_times_the_real_step_s_ops_and_records_them(tmp_path):
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.step_profile", "--depth=8", "--batch_size=8", "--steps=2",
                          env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet8, batch 8, conv lowering auto: step" in proc.stdout
    recorded = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    by_metric = {}
    for r in recorded:
        by_metric.setdefault(r["metric"], []).append(r)
    assert by_metric["train_step_ms"][0]["value"] > 0
    ops_ms = by_metric["train_step_ops_ms"][0]["value"]
    assert ops_ms > 0
    kinds = by_metric["train_step_op_kind_ms"]
    assert kinds and all(r["value"] > 0 and r["model"] == "resnet8" for r in kinds)
    assert sum(r["value"] for r in kinds) <= ops_ms + 0.01 * len(kinds)
    assert "## step_profile" in (results / "RESULTS.md").read_text()
