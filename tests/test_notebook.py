"""notebooks/demo.ipynb runs, cell by cell in order, on the shipped zoo and real CIFAR-10 (smoke
size: 300 test images). Cells run as plain Python in one namespace, as a kernel would run them."""

import json
import os

import pytest

from tests.test_real_data import requires_cifar

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "notebooks", "demo.ipynb")


@requires_cifar
def test_demo_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTIVE_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("ADAPTIVE_JAX_NOTEBOOK_OUT", str(tmp_path))
    with open(NOTEBOOK) as f:
        cells = [c for c in json.load(f)["cells"] if c["cell_type"] == "code"]
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK}[cell {i}]", "exec"), namespace)
    summary = namespace["summary"]
    ofas_row = next(r for r in summary["rows"] if r["threshold"] == "0.5")
    assert ofas_row["test_accuracy"] > 0.5 and ofas_row["latency_b1_ms"] > 0
    assert {r["model"] for r in summary["rows"]} >= {"resnet20", "resnet32_gpu", "resnet20_gpu", "resnet56"}
    chain = [r for r in summary["rows"] if r["kind"] == "cascade"]
    assert len(chain) == 3 and chain[0]["matches"] == "resnet32_gpu"
    assert chain[0]["macs_mean"] == pytest.approx(69124736, rel=0.1)  # ResNet-32's, two-fold
    assert chain[0]["latency_b1_ms"] > 0 and chain[0]["throughput_b64"] > 0
    # the main point again, timed over the 4 whole batches of 64 that 300 images hold
    pooled = next(r for r in summary["rows"] if r["kind"] == "cascade_pooled")
    assert pooled["batch_executor"] == "pooled x4" and pooled["static_at"] == "resnet32_gpu"
    assert pooled["throughput_b64"] > 0 and pooled["static_throughput_b64"] > 0
    for plot in ("accuracy_vs_macs.png", "least_most_compute.png"):
        assert (tmp_path / plot).stat().st_size > 1000
