"""benchmarks.jpeg_cost, its reference ResNet and its checkpoint reader: legacy torch.save files
read without torch, the option-A path, and the benchmark end to end on tiny data (a subprocess:
the command's absl flags stay out of the test process)."""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from benchmarks import reference_resnet, torch_checkpoint
from benchmarks.torch_checkpoint import TorchCheckpointError, read_legacy
from tests.conftest import run_experiment


class _Tensor:
    """What the writer below pickles for an array: a view (offset, shape, strides in elements)
    into a named float32 storage."""

    def __init__(self, storage_key: str, offset: int, shape, strides):
        self.storage_key, self.offset, self.shape, self.strides = storage_key, offset, shape, strides


def write_legacy(path, obj, storages: dict[str, np.ndarray], monkeypatch) -> None:
    """Writes `obj` (dicts, numbers, `_Tensor`s) as torch.save's legacy format would, without
    torch: fake `torch` / `torch._utils` modules give the pickle the globals torch's has."""
    torch_module, utils_module = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch_module.FloatStorage, utils_module._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    torch_module._utils = utils_module
    monkeypatch.setitem(sys.modules, "torch", torch_module)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_module)

    class StorageKey(str):
        pass

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if isinstance(value, StorageKey):
                return ("storage", FloatStorage, str(value), "cpu", storages[value].size, None)
            return None

        def reducer_override(self, value):
            if isinstance(value, _Tensor):
                return _rebuild_tensor_v2, (StorageKey(value.storage_key), value.offset,
                                            tuple(value.shape), tuple(value.strides), False,
                                            collections.OrderedDict())
            return NotImplemented

    with open(path, "wb") as f:
        for header in (torch_checkpoint.LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        Pickler(f, protocol=2).dump(obj)
        pickle.dump(list(storages), f, protocol=2)
        for key, data in storages.items():
            f.write(struct.pack("<q", data.size))
            f.write(np.ascontiguousarray(data, np.float32).tobytes())


def test_legacy_checkpoint_read_without_torch(tmp_path, monkeypatch):
    """Views into shared storages (an offset, a transposed stride) come back as the arrays."""
    shared = np.arange(20, dtype=np.float32)
    other = np.linspace(-1, 1, 6).astype(np.float32)
    state = collections.OrderedDict([
        ("module.a", _Tensor("0", 0, (2, 3), (3, 1))),
        ("module.b", _Tensor("0", 6, (3, 2), (1, 3))),  # a transposed view after `a`
        ("module.c", _Tensor("1", 0, (6,), (1,))),
    ])
    path = tmp_path / "model.th"
    write_legacy(path, {"state_dict": state, "best_prec1": 91.5, "epoch": 3},
                 {"0": shared, "1": other}, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # reading needs no torch
    checkpoint = read_legacy(str(path))
    assert checkpoint["best_prec1"] == 91.5 and checkpoint["epoch"] == 3
    got = checkpoint["state_dict"]
    np.testing.assert_array_equal(got["module.a"], shared[:6].reshape(2, 3))
    np.testing.assert_array_equal(got["module.b"], shared[6:12].reshape(2, 3).T)
    np.testing.assert_array_equal(got["module.c"], other)
    assert all(v.dtype == np.float32 for v in got.values())


def test_legacy_reader_refuses_what_it_cannot_read(tmp_path, monkeypatch):
    whole = tmp_path / "whole.th"
    write_legacy(whole, {"w": _Tensor("0", 0, (4,), (1,))}, {"0": np.ones(4, np.float32)},
                 monkeypatch)
    for cut in (3, 20):  # inside the storage's 16 bytes of data, inside its 8-byte element count
        truncated = tmp_path / f"cut{cut}.th"
        truncated.write_bytes(whole.read_bytes()[:-cut])
        with pytest.raises(TorchCheckpointError, match=rf"cut{cut}\.th: truncated \(storage 0\)"):
            read_legacy(str(truncated))
    evil = tmp_path / "evil.th"
    with open(evil, "wb") as f:
        for header in (torch_checkpoint.LEGACY_MAGIC, 1001, {}):
            pickle.dump(header, f, protocol=2)
        f.write(b"cos\nsystem\n(S'true'\ntR.")  # a pickle that would call os.system
    with pytest.raises(TorchCheckpointError, match=r"evil\.th: the checkpoint names os\.system"):
        read_legacy(str(evil))
    text = tmp_path / "notes.th"
    text.write_bytes(pickle.dumps({"not": "a checkpoint"}))
    with pytest.raises(TorchCheckpointError, match="notes.th: not a torch.save checkpoint"):
        read_legacy(str(text))
    import zipfile
    with zipfile.ZipFile(tmp_path / "new.th", "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(TorchCheckpointError, match="zip-format.*_use_new_zipfile_serialization"):
        read_legacy(str(tmp_path / "new.th"))


def reference_state(depth: int, seed: int = 0, zero_blocks: bool = False):
    """A reference ResNet's arrays (PyTorch names and layouts). zero_blocks: the stem copies the
    image's 3 channels into its first 3 and every residual branch is zero, so the network is the
    stem and its shortcuts alone."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, cin, cout):
        state[name] = (np.zeros((cout, cin, 3, 3), np.float32) if zero_blocks
                       else rng.normal(0, (2 / (9 * cin)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32))

    def bn(name, c):
        state[f"{name}.weight"] = np.ones(c, np.float32) if zero_blocks else rng.uniform(0.5, 1.5, c).astype(np.float32)
        state[f"{name}.bias"] = np.zeros(c, np.float32) if zero_blocks else rng.normal(0, 0.1, c).astype(np.float32)
        state[f"{name}.running_mean"] = np.zeros(c, np.float32) if zero_blocks else rng.normal(0, 0.1, c).astype(np.float32)
        state[f"{name}.running_var"] = np.full(c, 1 - reference_resnet.BN_EPSILON, np.float32)

    conv("conv1.weight", 3, 16)
    if zero_blocks:
        for c in range(3):
            state["conv1.weight"][c, c, 1, 1] = 1.0
    bn("bn1", 16)
    cin = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for block in range((depth - 2) // 6):
            conv(f"layer{stage}.{block}.conv1.weight", cin, width)
            bn(f"layer{stage}.{block}.bn1", width)
            conv(f"layer{stage}.{block}.conv2.weight", width, width)
            bn(f"layer{stage}.{block}.bn2", width)
            cin = width
    state["linear.weight"] = rng.normal(0, 0.1, (10, 64)).astype(np.float32)
    state["linear.bias"] = rng.normal(0, 0.1, 10).astype(np.float32)
    return state


def split_state(state):
    import jax.numpy as jnp
    params = {k: jnp.asarray(v) for k, v in state.items() if not k.endswith(reference_resnet.STATISTICS)}
    statistics = {k: jnp.asarray(v) for k, v in state.items() if k.endswith(reference_resnet.STATISTICS)}
    return params, statistics


def test_reference_forward_follows_option_a_shortcuts():
    """With every residual branch zero, the logits are the linear layer of the image's channels
    carried by the shortcuts alone: every 4th pixel, in channels 8 + 16 = 24 to 26 (option A puts
    half the new channels before the input's), averaged: computed here by hand."""
    state = reference_state(depth=14, zero_blocks=True)
    images = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    params, statistics = split_state(state)
    logits, _ = reference_resnet.forward(params, statistics, images, depth=14)
    features = np.zeros((2, 64), np.float32)
    features[:, 24:27] = np.maximum(images, 0)[:, ::4, ::4, :].mean((1, 2))
    expected = features @ state["linear.weight"].T + state["linear.bias"]
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-6)


def test_reference_forward_training_mode_updates_statistics_as_pytorch():
    """Batch statistics normalise; running ones move by momentum 0.1 toward the batch mean and
    the unbiased batch variance (the stem here copies the image into channels 0-2)."""
    state = reference_state(depth=8, zero_blocks=True)
    images = np.random.default_rng(4).normal(1.0, 2.0, size=(4, 32, 32, 3)).astype(np.float32)
    params, statistics = split_state(state)
    _, updated = reference_resnet.forward(params, statistics, images, depth=8, train=True)
    _, unchanged = reference_resnet.forward(params, statistics, images, depth=8)
    mean = np.zeros(16, np.float32)
    mean[:3] = images.mean((0, 1, 2))
    var = np.full(16, 0.0, np.float32)
    var[:3] = images.reshape(-1, 3).var(0, ddof=1)
    np.testing.assert_allclose(np.asarray(updated["bn1.running_mean"]), 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(updated["bn1.running_var"]),
                               0.9 * (1 - reference_resnet.BN_EPSILON) + 0.1 * var, rtol=1e-4)
    assert all(np.array_equal(unchanged[k], statistics[k]) for k in statistics)


def test_jpeg_cost_benchmark_end_to_end(tiny_cifar_manual_dir, tmp_path, monkeypatch):
    """A depth-8 reference checkpoint on the tiny copy: evaluated as trained, fine-tuned one
    epoch, both recorded with the checkpoint's own accuracy; the as-trained figures are the
    in-process forward's on the same test and training images."""
    manual_dir, train, test = tiny_cifar_manual_dir
    state = reference_state(depth=8, seed=5)
    storages, tensors = {}, collections.OrderedDict()
    for i, (name, array) in enumerate(state.items()):
        storages[str(i)] = array.ravel()
        strides = tuple(int(np.prod(array.shape[d + 1:])) for d in range(array.ndim))
        tensors[f"module.{name}"] = _Tensor(str(i), 0, array.shape, strides)
    weights = tmp_path / "weights"
    weights.mkdir()
    write_legacy(weights / "resnet8-0000.th", {"state_dict": tensors, "best_prec1": 87.5},
                 storages, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    results = tmp_path / "results"
    proc = run_experiment("benchmarks.jpeg_cost", f"--weights_dir={weights}", "--finetune_epochs=1",
                          "--batch_size=32", env_extra={"ADAPTIVE_JAX_RESULTS_DIR": str(results),
                                                        "ADAPTIVE_JAX_MANUAL_DIR": manual_dir,
                                                        "TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reference_resnet8: epoch 1, test top-1" in proc.stdout
    recorded = {r["metric"]: r for r in map(json.loads, (results / "results.jsonl").read_text().splitlines())}
    as_trained, finetuned = recorded["original_pixels_model_accuracy_on_copy"], recorded["finetuned_on_copy_accuracy"]
    for figure in (as_trained, finetuned):
        assert figure["model"] == "reference_resnet8" and figure["published_accuracy"] == 0.875
        assert figure["test_examples"] == len(test.labels)
    assert finetuned["epochs"] == 1 and finetuned["train_examples"] == 100
    assert len(finetuned["per_epoch"]) == 1 and finetuned["per_epoch"][0] == pytest.approx(finetuned["value"], abs=1e-4)
    assert as_trained["train_images"] == 100
    params, statistics = split_state(state)
    for split, figure in ((test, as_trained["value"]), (train, as_trained["train_images_top1"])):
        images = (split.images.astype(np.float32) / 255 - reference_resnet.MEAN) / reference_resnet.STD
        logits, _ = reference_resnet.forward(params, statistics, images, depth=8)
        assert figure == pytest.approx(np.mean(np.asarray(logits).argmax(-1) == split.labels))
    assert "## jpeg_cost" in (results / "RESULTS.md").read_text()


def test_a_checkpoint_of_another_network_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "resnet20-0000.th"
    write_legacy(path, {"state_dict": {"fc.weight": _Tensor("0", 0, (2, 2), (2, 1))}},
                 {"0": np.zeros(4, np.float32)}, monkeypatch)
    with pytest.raises(reference_resnet.ReferenceCheckpointError,
                       match=r"resnet20-0000\.th: no reference ResNet state_dict"):
        reference_resnet.load_reference(str(path))


def test_fine_tune_of_zero_epochs_yields_nothing(tiny_cifar_manual_dir):
    """--finetune_epochs=0 (evaluation only) trains nothing, rather than failing to build a
    schedule of zero steps."""
    _, train, test = tiny_cifar_manual_dir
    params, statistics = split_state(reference_state(depth=8))
    assert list(reference_resnet.fine_tune(params, statistics, 8, train, test, epochs=0, peak_lr=0.01,
                                    batch_size=32)) == []


def test_jpeg_cost_finds_checkpoints_by_depth(tmp_path):
    """Shallowest first by depth, not by name; other files ignored; none: where to get them."""
    with pytest.raises(FileNotFoundError, match="akamaster/pytorch_resnet_cifar10"):
        reference_resnet.checkpoints(str(tmp_path), [])
    for name in ("resnet110-1d1ed7c2.th", "resnet20-12fca82f.th", "resnet56.th", "resnet_notes.th"):
        (tmp_path / name).write_bytes(b"")
    names = lambda paths: [os.path.basename(p) for p in paths]
    assert names(reference_resnet.checkpoints(str(tmp_path), [])) == [
        "resnet20-12fca82f.th", "resnet56.th", "resnet110-1d1ed7c2.th"]
    assert names(reference_resnet.checkpoints(str(tmp_path), ["110", "20"])) == [
        "resnet20-12fca82f.th", "resnet110-1d1ed7c2.th"]
    with pytest.raises(FileNotFoundError, match="of depth 32"):
        reference_resnet.checkpoints(str(tmp_path), ["32"])
