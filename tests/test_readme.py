"""The README's Python examples run as written (a user's first contact with the API).

Each example is executed from the README's own text. Names an example takes as given (a trained
`model`, `images`, a `backbone`, `plans`) come from the zoo and from random inputs; data come
from the tiny CIFAR-10 copy; the OFAS training example runs its own calls on the smoke config.
"""

import os
import re

import numpy as np
import pytest

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")


def readme_examples() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def example(*needles: str) -> str:
    """The one README example that contains every needle (so a reordered README still finds it)."""
    found = [code for code in readme_examples() if all(n in code for n in needles)]
    assert len(found) == 1, f"expected one README example with {needles}, found {len(found)}"
    return found[0]


@pytest.fixture
def tiny_data_env(tiny_cifar_manual_dir, tmp_path, monkeypatch):
    from adaptive_jax.data.datasets import MANUAL_DIR_ENV

    monkeypatch.setenv(MANUAL_DIR_ENV, tiny_cifar_manual_dir[0])
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.chdir(tmp_path)


def test_every_python_block_is_covered_here():
    # A new README example must get a test below; this fails until it does.
    assert len(readme_examples()) == 5


def test_train_step_example(tiny_data_env):
    names = {}
    exec(example("make_train_step"), names)
    metrics = names["metrics"]
    assert np.isfinite(float(metrics["loss"])) and 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert names["train"].images.shape == (100, 32, 32, 3)  # the tiny copy, loaded by name


def test_ofas_training_example(tiny_data_env):
    from experiments.ofas.configs.default import get_config

    code = example("stage_b_task")
    assert "config = ofas.default_config()" in code
    smoke = get_config("smoke")  # the CPU recipe's ResNet-32 would train for hours
    code = code.replace("config = ofas.default_config()", "config = SMOKE", 1)
    names = {"SMOKE": smoke}
    exec(code, names)
    b = names["b"]
    assert 0.0 <= b["test_accuracy"] <= 1.0 and 0.0 < b["test_block_macs_frac"] <= 1.0
    assert os.path.isdir("runs/ofas/stage_a") and os.path.isdir("runs/ofas/penalty_2")


def test_inference_examples_on_a_zoo_model():
    # A zoo model, as a user gets it (zoo.load): its arrays must be jax arrays, or the eager
    # `cond` call below fails indexing a stacked block with a traced index.
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from adaptive_jax import zoo

    model, _ = zoo.load("ofas_resnet32")
    images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
    names = {"model": model, "images": images, "batches": [images, images]}
    exec(example("model.plan(images)"), names)
    assert names["plan"].shape == (8, 15) and names["logits"].shape == (8, 10)

    exec(example("fastest_exact"), names)
    assert names["name"] in ("bucketed", "masked")
    served = names["serve"](names["params"], names["batch_stats"], images)
    served = served[0] if isinstance(served, tuple) else served
    np.testing.assert_allclose(np.asarray(served), np.asarray(model.predict(images, "masked")[0]),
                               rtol=1e-4, atol=1e-4)

    backbone, _ = zoo.load("resnet20")
    plans = jnp.asarray(np.random.default_rng(1).integers(0, 3, (8, 9)), jnp.int32)
    names = {"backbone": backbone, "images": images, "plans": plans}
    exec(example("InnerWidths"), names)
    assert names["logits"].shape == (8, 10)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(nnx.state(backbone)))
