"""The static executor's executables survive the process: a second process loads them from XLA's
persistent compilation cache instead of compiling."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = r"""
import json, sys
import jax, numpy as np
from flax import nnx
from adaptive_jax import execution
execution.use_persistent_cache(sys.argv[1])
from adaptive_jax.models import CifarResNet, ResNetSpec
from adaptive_jax.plans import BlockLayout, StaticBlockPlan
model = CifarResNet(ResNetSpec(8), rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
executor = execution.StaticExecutor(graphdef, params, stats)
layout = BlockLayout.of(model.spec)
plans = [StaticBlockPlan.from_array(np.array(bits, bool), layout) for bits in ([1, 0, 1], [0, 1, 1])]
executor.warm_up(plans)
out = executor(np.ones((1, 32, 32, 3), np.float32), plans[0])
print(json.dumps({"hits": execution.persistent_cache_hits(), "logits": np.asarray(out).tolist()}))
"""


def _serve(cache_dir):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", SERVER, str(cache_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_executables_instead_of_compiling(tmp_path):
    cache = tmp_path / "xla_cache"
    first = _serve(cache)
    assert first["hits"] == 0
    assert any(cache.iterdir())
    second = _serve(cache)
    assert second["hits"] >= 2  # both plans' executables (and anything else the process compiled)
    assert second["logits"] == first["logits"]
