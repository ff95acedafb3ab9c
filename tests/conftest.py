"""Test set-up: CPU only, two fake CPU devices (for the sharding tests) before JAX initialises,
XLA's backend at optimisation level 0 (compiling is most of the suite's time), a fresh persistent
compilation cache per session, and strict dtype promotion for the engine's tests
(`strict_dtype_promotion`: no silent float64 / int-float mixing in compiled paths)."""

import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from adaptive_jax.data import Split
from adaptive_jax.data import cifar_binary

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 2)
# Tests check behaviour, not speed, and most of their time is XLA compiling small programs: at
# optimisation level 0 the DFS end-to-end run took 58 s against 87 s cold, the whole suite 548 s
# against 725-884 s the same day (user CPU 16.4 against 22.6-27.3 min). Users and the benchmarks
# keep XLA's default. Set before JAX's backend starts; the experiments' subprocesses
# get the same flag (run_experiment).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
# Many tests train the same tiny model: XLA's persistent cache (fresh per session, so no test
# depends on an earlier session) turns every repeat of an identical computation into a load.
# The experiments' subprocesses share it through the environment.
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="adaptive_jax_xla_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def random_split(n: int, seed: int = 0, num_classes: int = 10) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 rng.integers(0, num_classes, n).astype(np.int32), num_classes)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_experiment(module, *flags, env_extra=None, timeout=600):
    """`python -m module flags...` from the repository root, as a user runs it (one device)."""
    env = dict(os.environ, **(env_extra or {}))
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # nothing else of the caller's (one device, as a user has it)
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def running_statistics(stats, seed: int = 1):
    """Non-trivial BN running statistics of `stats`' shapes, so inference-mode BN is exercised:
    means near 0, variances in [0.5, 1.5]. (A mean of ~1 subtracted in every BN left an
    identity-shortcut ResNet with all-zero logits, which made every comparison of it vacuous.)"""
    rng = np.random.default_rng(seed)

    def statistic(path, v):
        is_mean = "mean" in jax.tree_util.keystr(path)
        values = rng.normal(0.0, 0.1, v.shape) if is_mean else rng.uniform(0.5, 1.5, v.shape)
        return jax.numpy.asarray(values, v.dtype)

    return jax.tree_util.tree_map_with_path(statistic, stats)


@pytest.fixture(scope="session")
def tiny_cifar_manual_dir(tmp_path_factory):
    """A manual dir in the official binary layout: 100 train + 40 test random images."""
    root = tmp_path_factory.mktemp("manual")
    train, test = random_split(100, seed=1), random_split(40, seed=2)
    cifar_binary.write_binary_dir(str(root), {"train": (train.images, train.labels),
                                              "test": (test.images, test.labels)})
    return str(root), train, test


@pytest.fixture
def strict_dtype_promotion():
    """Run the test under `jax.numpy_dtype_promotion("strict")`: an implicit promotion between
    dtypes (say float32 weights and a float64 or int plan) is an error, not a silent cast."""
    with jax.numpy_dtype_promotion("strict"):
        yield
