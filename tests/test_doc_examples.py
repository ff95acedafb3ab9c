"""The Python examples of the README and docs/ run as written (a user's first contact with the API).

Each example is executed from the document's own text. Names an example takes as given (a trained
`model`, `images`, a `backbone`, `plans`) come from the zoo and from random inputs; data come
from the tiny CIFAR-10 copy; the OFAS training example runs its own calls on the smoke config.
"""

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))
README = os.path.join(ROOT, "README.md")


def examples(path: str = README) -> list[str]:
    with open(path) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def example(*needles: str, path: str = README) -> str:
    """The one example of `path` that contains every needle (so a reordered document still finds
    it)."""
    found = [code for code in examples(path) if all(n in code for n in needles)]
    assert len(found) == 1, f"expected one example in {path} with {needles}, found {len(found)}"
    return found[0]


@pytest.fixture
def tiny_data_env(tiny_cifar_manual_dir, tmp_path, monkeypatch):
    from adaptive_jax.data.datasets import MANUAL_DIR_ENV

    monkeypatch.setenv(MANUAL_DIR_ENV, tiny_cifar_manual_dir[0])
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.chdir(tmp_path)


def test_every_python_example_is_covered_here():
    # A new example must get a test below; this fails until it does.
    counts = {name: len(examples(os.path.join(ROOT, name)))
              for name in ["README.md"] + [f"docs/{d}" for d in sorted(os.listdir(f"{ROOT}/docs"))]}
    assert {name: n for name, n in counts.items() if n} == {
        "README.md": 6, "docs/dfs.md": 1, "docs/zoo.md": 1}


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
    served = names["serve"](names["params"], names["batch_stats"], images)  # the plans' logits
    np.testing.assert_allclose(np.asarray(served), np.asarray(model.predict(images, "masked")[0]),
                               rtol=1e-4, atol=1e-4)

    backbone, _ = zoo.load("resnet20")
    plans = jnp.asarray(np.random.default_rng(1).integers(0, 3, (8, 9)), jnp.int32)
    names = {"backbone": backbone, "images": images, "plans": plans}
    exec(example("InnerWidths"), names)
    assert names["logits"].shape == (8, 10)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(nnx.state(backbone)))


def test_zoo_example():
    names = {}
    exec(example("zoo.load", path=os.path.join(ROOT, "docs/zoo.md")), names)
    assert names["record"].name == "resnet32" and "experiments.zoo.main" in names["record"].command


def test_dfs_example():
    import jax.numpy as jnp

    images = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32, 32, 3)), jnp.float32)
    names = {"images": images, "image": images[:1]}
    exec(example("DFSNet", path=os.path.join(ROOT, "docs/dfs.md")), names)
    plan, costs = names["plan"], names["costs"]
    assert plan.shape == (1, 15) and names["decisions"].shape == (4, 15, 7)
    # prepared weights run the same plan as the per-call quantisation
    unprepared = names["predict"](names["model"], images[:1])[1]
    np.testing.assert_array_equal(np.asarray(plan), np.asarray(unprepared))
    assert float(costs.plan_bitops(plan)[0]) > 0


def test_cascade_example():
    from adaptive_jax.data import CHANNEL_MEAN, CHANNEL_STD, normalize

    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, (118, 32, 32, 3), dtype=np.uint8)  # held out, as the images served
    held_out_u8 = u8[:40]
    pixels = normalize(u8[40:], CHANNEL_MEAN["cifar10"], CHANNEL_STD["cifar10"])
    images, many = pixels[:8], pixels[8:]  # 70: two batches of 64, the last short
    names = {"held_out_u8": held_out_u8, "images": images, "many_images": many,
             "request": many[:16]}
    exec(example("pooled_predictor"), names)
    logits, escalated = names["logits"], names["escalated"]
    assert logits.shape == (70, 10) and escalated.shape == (70,)
    assert 0 < escalated.sum() < 70  # both networks answer some
    # the pooled answers are the batch-by-batch ones
    serve, states = names["serve"], names["states"]
    for start in (0, 64):
        want, sent = serve(*states, many[start:start + 64])
        np.testing.assert_allclose(logits[start:start + 64], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(escalated[start:start + 64], sent)
    # the streaming server: the request's confident images at once, the escalated ones by now
    # (poll: nothing due, fewer than 64 wait and none for 20 ms) or at the end of the stream
    sure, late, rest = names["sure"], names["late"], names["rest"]
    ids = np.concatenate([sure.ids, late.ids, rest.ids])
    np.testing.assert_array_equal(np.sort(ids), np.arange(16))
    np.testing.assert_array_equal(np.sort(np.concatenate([late.ids, rest.ids])),
                                  np.flatnonzero(escalated[:16]))
    answered = np.concatenate([sure.logits, late.logits, rest.logits])[np.argsort(ids)]
    np.testing.assert_allclose(answered, logits[:16], rtol=1e-5, atol=1e-5)
    # the threaded server: the whole request, in its row order, as the pooled answers
    np.testing.assert_allclose(names["request_logits"], logits[:16], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(names["request_escalated"], escalated[:16])
