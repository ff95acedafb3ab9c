"""The model zoo: trained backbones (and adaptive models built on them) shipped with the package.

    from adaptive_jax import zoo
    zoo.list()                                  # [ZooRecord(name="resnet20", test_accuracy=...), ...]
    model, record = zoo.load("resnet32")        # a ready nnx model in eval mode, and its record

Each entry is one `.npz` file (weights and BN statistics) plus a record in `manifest.json` beside
it: the architecture, dataset, test top-1, MACs, parameters, the recipe and the exact command that
produced it, device, software versions, date and the file's sha256. Why `.npz`: numpy alone reads
it (no orbax, tensorstore or TensorFlow, so a notebook or a serving process loads a model without a
training stack), it holds named float32 arrays exactly, and it is read with `allow_pickle=False`,
so a zoo file cannot run code. Loading checks the sha256 against the manifest and every array's
name and shape against the architecture; any mismatch is an error naming the file and the fix.
Recipes that write entries: `experiments/zoo` (backbones) and `experiments/ofas` (OFAS models);
docs/zoo.md lists what is shipped and how each figure was measured.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import difflib
import hashlib
import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ZOO_DIR = os.path.dirname(os.path.abspath(__file__))
MANIFEST = "manifest.json"
MAX_FILE_BYTES = 8 * 1024 * 1024
_ARCHITECTURE_KEY = "__architecture__"
_COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


class ZooError(ValueError):
    """A zoo entry that cannot be loaded as asked: unknown, missing, corrupt or mismatched."""


@dataclasses.dataclass(frozen=True)
class ZooRecord:
    """One manifest entry. `architecture` rebuilds the model (see `build_model`). `macs` is the
    full network's count per image; an adaptive model's measured mean is `metrics["macs_mean"]`."""

    name: str
    file: str
    sha256: str
    architecture: dict
    dataset: str
    test_accuracy: float
    num_test_examples: int
    macs: int
    params: int
    recipe: dict
    command: str
    device: str
    versions: dict
    date: str
    train_time_s: float | None = None
    metrics: dict = dataclasses.field(default_factory=dict)  # method-specific (e.g. OFAS mean MACs)


# ---------------------------------------------------------------------------------------------
# Architectures: plain JSON that rebuilds the model.


def architecture_of(model: nnx.Module) -> dict:
    """The JSON architecture of a CIFAR ResNet or an OFASNet (what `build_model` rebuilds)."""
    from adaptive_jax.methods.ofas import OFASNet
    from adaptive_jax.models.resnet import CifarResNet

    if isinstance(model, CifarResNet):
        s = model.spec
        return {"kind": "resnet", "depth": s.depth, "num_classes": s.num_classes,
                "shortcut": s.shortcut, "widths": builtins.list(s.widths),
                "in_channels": s.in_channels}
    if isinstance(model, OFASNet):
        return {"kind": "ofas", "backbone": architecture_of(model.backbone),
                "policy": model.policy.config()}
    raise ZooError(f"the zoo stores CIFAR ResNets and OFAS models, got {type(model).__name__}")


def build_model(architecture: dict, seed: int = 0) -> nnx.Module:
    """A freshly initialised model of `architecture` (weights are then loaded over it)."""
    from adaptive_jax.methods.ofas import OFASNet
    from adaptive_jax.models.resnet import CifarResNet, ResNetSpec

    kind = architecture.get("kind")
    if kind == "resnet":
        spec = ResNetSpec(depth=architecture["depth"], num_classes=architecture["num_classes"],
                          shortcut=architecture["shortcut"], widths=tuple(architecture["widths"]),
                          in_channels=architecture["in_channels"])
        return CifarResNet(spec, rngs=nnx.Rngs(seed))
    if kind == "ofas":
        backbone = build_model(architecture["backbone"], seed)
        return OFASNet.from_config(backbone, architecture["policy"], rngs=nnx.Rngs(seed + 1))
    raise ZooError(f"unknown architecture kind {kind!r}; expected 'resnet' or 'ofas'")


def describe(architecture: dict) -> str:
    """'ResNet-32 (projection shortcuts, 10 classes, 3 channels)' and the like, for messages."""
    if architecture.get("kind") == "ofas":
        return f"OFAS {describe(architecture['backbone'])}"
    a = architecture
    return (f"ResNet-{a['depth']} ({a['shortcut']} shortcuts, widths {tuple(a['widths'])}, "
            f"{a['num_classes']} classes, {a['in_channels']} input channels)")


# ---------------------------------------------------------------------------------------------
# Weights <-> flat named arrays.


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """{"params/stem_conv/kernel": array, "batch_stats/stem_bn/mean": array, ...}."""
    arrays = {}
    for prefix, kind in _COLLECTIONS.items():
        pure = nnx.state(model, kind).to_pure_dict()
        for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
            arrays[f"{prefix}/{_path_name(path)}"] = np.asarray(jax.device_get(leaf))
    return arrays


def assign_arrays(model: nnx.Module, arrays: dict[str, np.ndarray], source: str,
                  prefix: str = "") -> None:
    """Loads `arrays` (named as `flat_arrays` names them) into `model`, after checking that the
    names and shapes are exactly the model's: a missing, extra or misshapen array is an error
    naming `source` and the first differences."""
    expected = flat_arrays(model)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    shapes = [f"{k}: {source} has {arrays[k].shape}, the model {expected[k].shape}"
              for k in sorted(set(expected) & set(arrays)) if arrays[k].shape != expected[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if extra:
            parts.append(f"unexpected {len(extra)} (e.g. {extra[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[:2]})")
        raise ZooError(f"{source} does not fit the model{prefix}: arrays " + "; ".join(parts))
    for collection, kind in _COLLECTIONS.items():
        state = nnx.state(model, kind)
        pure = state.to_pure_dict()
        leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
        # jax arrays, as a freshly built model holds: numpy leaves would break an eager call
        # that indexes them with a traced value (the cond executor's loop over stacked blocks)
        values = [jnp.asarray(arrays[f"{collection}/{_path_name(path)}"], dtype=leaf.dtype)
                  for path, leaf in leaves]
        state.replace_by_pure_dict(jax.tree_util.tree_unflatten(treedef, values))
        nnx.update(model, state)


# ---------------------------------------------------------------------------------------------
# The manifest.


def _zoo_dir(zoo_dir: str | None) -> str:
    return zoo_dir or os.environ.get("ADAPTIVE_JAX_ZOO_DIR") or ZOO_DIR


def _read_manifest(zoo_dir: str) -> dict[str, dict]:
    path = os.path.join(zoo_dir, MANIFEST)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ZooError(f"the zoo manifest {path} is not valid JSON ({e}); restore it with "
                           f"`git checkout -- {path}`") from None


def _write_atomically(path: str, write) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a shipped file from other users
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def list_entries(zoo_dir: str | None = None) -> builtins.list[ZooRecord]:
    """Every entry of the zoo, sorted by name."""
    manifest = _read_manifest(_zoo_dir(zoo_dir))
    return [ZooRecord(**manifest[name]) for name in sorted(manifest)]


def record(name: str, zoo_dir: str | None = None) -> ZooRecord:
    """The manifest record of `name`; an unknown name is an error listing what there is."""
    manifest = _read_manifest(_zoo_dir(zoo_dir))
    if name not in manifest:
        close = difflib.get_close_matches(name, builtins.list(manifest), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ZooError(f"unknown zoo model {name!r}{hint} The zoo has: {sorted(manifest)}. "
                       "Train a new entry with `python -m experiments.zoo.main` (docs/zoo.md).")
    return ZooRecord(**manifest[name])


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_arrays(name: str, zoo_dir: str | None = None) -> tuple[dict[str, np.ndarray], ZooRecord]:
    """The verified arrays of entry `name`: the file's sha256 must be the manifest's, and the
    architecture stored in the file must be the manifest's."""
    rec = record(name, zoo_dir)
    path = os.path.join(_zoo_dir(zoo_dir), rec.file)
    fix = (f"restore it with `git checkout -- {path}` (the zoo files live in the repository), "
           f"or re-create it with: {rec.command}")
    if not os.path.exists(path):
        raise ZooError(f"zoo file {path} of {name!r} is missing; {fix}")
    digest = sha256_of(path)
    if digest != rec.sha256:
        raise ZooError(f"zoo file {path} of {name!r} is corrupt or was replaced: its sha256 is "
                       f"{digest}, the manifest records {rec.sha256}; {fix}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    stored = json.loads(str(arrays.pop(_ARCHITECTURE_KEY, "null")))
    if stored != rec.architecture:
        raise ZooError(f"zoo file {path} holds {describe(stored) if stored else 'no architecture'}"
                       f" but the manifest says {describe(rec.architecture)}; {fix}")
    return arrays, rec


def load(name: str, zoo_dir: str | None = None) -> tuple[nnx.Module, ZooRecord]:
    """(model in eval mode, record) of zoo entry `name`, verified (see `load_arrays`)."""
    arrays, rec = load_arrays(name, zoo_dir)
    model = build_model(rec.architecture)
    assign_arrays(model, arrays, f"zoo file {rec.file}")
    model.eval()
    return model, rec


def save_entry(name: str, graphdef, state, *, dataset: str, test_accuracy: float,
               num_test_examples: int, recipe: dict, command: str, test_split=None,
               train_time_s: float | None = None, metrics: dict | None = None,
               zoo_dir: str | None = None) -> ZooRecord:
    """Writes `name`'s weights file and manifest record (both atomically) and returns the record.

    `state` holds `params` and `batch_stats` (a loop `TrainState`); MACs and parameters are
    counted from the model itself, the device and versions read from this process. With
    `test_split`, the record also keeps top-1 on its first SMOKE_EXAMPLES images, the figure the
    test suite reproduces.
    """
    from adaptive_jax import cost, latency

    zoo_dir = _zoo_dir(zoo_dir)
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    model.eval()
    metrics = dict(metrics or {})
    if test_split is not None:
        n = SMOKE_EXAMPLES
        metrics[f"test_accuracy_first_{n}"] = evaluate(
            model, test_split.images[:n], test_split.labels[:n], dataset)["accuracy"]
    architecture = architecture_of(model)
    arrays = flat_arrays(model)
    arrays[_ARCHITECTURE_KEY] = np.asarray(json.dumps(architecture, sort_keys=True))
    file = os.path.join("files", f"{name}.npz")
    path = os.path.join(zoo_dir, file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_atomically(path, lambda f: np.savez(f, **arrays))
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        os.unlink(path)
        raise ZooError(f"{name}: {size / 2**20:.1f} MB is over the zoo's {MAX_FILE_BYTES / 2**20:.0f} MB "
                       "per file; the zoo ships in the repository")
    backbone = model.backbone if hasattr(model, "backbone") else model
    in_channels = backbone.spec.in_channels
    signature = latency.device_signature()
    import flax
    import optax
    rec = ZooRecord(
        name=name, file=file, sha256=sha256_of(path), architecture=architecture, dataset=dataset,
        test_accuracy=float(test_accuracy), num_test_examples=int(num_test_examples),
        macs=int(cost.model_cost(backbone, (1, 32, 32, in_channels)).macs),
        params=int(cost.param_count(model)), recipe=_jsonable(recipe), command=command,
        device=f"{signature['backend']}: {signature['device']} ({signature['host_cpu']})",
        versions={"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                  "numpy": np.__version__},
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        train_time_s=None if train_time_s is None else float(train_time_s),
        metrics=_jsonable(metrics))
    manifest = _read_manifest(zoo_dir)
    manifest[name] = dataclasses.asdict(rec)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _write_atomically(os.path.join(zoo_dir, MANIFEST), lambda f: f.write(text.encode()))
    return rec


def _jsonable(value: Any):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


# ---------------------------------------------------------------------------------------------
# Fine-tuning from the zoo.

INIT_PREFIX = "zoo:"


def backbone_of(model: nnx.Module):
    """The network inside `model` that a zoo backbone initialises: a CIFAR ResNet (the model
    itself, or its `.backbone`) or a slimmable ResNet (its full width)."""
    from adaptive_jax.models.resnet import CifarResNet
    from adaptive_jax.models.slimmable import SlimmableResNet

    if isinstance(model, (CifarResNet, SlimmableResNet)):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, CifarResNet):
        return backbone
    raise ZooError(f"init_from needs a model built on a CIFAR ResNet (a ResNet, a slimmable ResNet "
                   f"or a model with a .backbone ResNet); {type(model).__name__} has none")


def _slimmable_architecture(model) -> dict:
    """The plain ResNet a slimmable ResNet's full width is (what a zoo backbone must be)."""
    from adaptive_jax.models.resnet import STAGE_WIDTHS
    s = model.spec
    return {"kind": "resnet", "depth": s.depth, "num_classes": s.num_classes,
            "shortcut": "projection", "widths": builtins.list(STAGE_WIDTHS),
            "in_channels": s.in_channels}


def _as_slimmable_arrays(arrays: dict[str, np.ndarray], model) -> dict[str, np.ndarray]:
    """A zoo ResNet's arrays under a slimmable ResNet's names, at its full width: stage s block i
    is `blocks/{s n + i}` (the stacked `rest` unstacked), every BN the full width's `norms/{w}`.
    The narrower widths keep the slimmable net's own arrays (set from these afterwards)."""
    n = model.blocks_per_stage
    full = len(model.spec.widths) - 1
    out = dict(flat_arrays(model))

    def bn(name):  # ".../bn1/scale" -> ".../bn1/norms/{full}/scale"
        head, leaf = name.rsplit("/", 1)
        return f"{head}/norms/{full}/{leaf}"

    for key, value in arrays.items():
        collection, path = key.split("/", 1)
        parts = path.split("/")
        if parts[0] == "stages":
            stage, kind, rest = int(parts[1]), parts[2], parts[3:]
            rest = "/".join(rest).replace("projection/conv/", "projection/").replace(
                "projection/bn/", "projection_bn/")
            targets = ([(stage * n, value)] if kind == "first" else
                       [(stage * n + 1 + i, value[i]) for i in range(value.shape[0])])
            for block, v in targets:
                name = f"{collection}/blocks/{block}/{rest}"
                out[bn(name) if "bn" in rest.split("/")[-2] else name] = v
        elif parts[0] == "stem_bn":
            out[bn(key)] = value
        else:
            out[key] = value
    return out


def init_from(model: nnx.Module, source: str, zoo_dir: str | None = None) -> ZooRecord:
    """Loads the backbone weights and BN statistics of zoo entry `source` ("zoo:resnet32") into
    `model`'s CIFAR ResNet, in place; everything else in `model` (a policy head) keeps its fresh
    initialisation. A slimmable ResNet gets them at its full width, and every narrower width's BN
    starts from the full width's on its channel prefix. A backbone of another architecture is an
    error naming both sides."""
    from adaptive_jax.models.slimmable import SlimmableResNet, inherit_batch_norm_from_full_width

    if not source.startswith(INIT_PREFIX):
        raise ZooError(f"init_from {source!r}: expected 'zoo:<name>' (e.g. 'zoo:resnet32'); "
                       f"the zoo has {[r.name for r in list_entries(zoo_dir)]}")
    name = source[len(INIT_PREFIX):]
    arrays, rec = load_arrays(name, zoo_dir)
    architecture = rec.architecture
    if architecture.get("kind") == "ofas":  # an OFAS entry: take its backbone
        architecture = architecture["backbone"]
        arrays = {f"{k.split('/', 1)[0]}/{k.split('/', 2)[2]}": v for k, v in arrays.items()
                  if k.split("/")[1] == "backbone"}
    target = backbone_of(model)
    slimmable = isinstance(target, SlimmableResNet)
    wanted = _slimmable_architecture(target) if slimmable else architecture_of(target)
    if wanted != architecture:
        raise ZooError(f"init_from {source!r}: the zoo model is a {describe(architecture)}, but the "
                       f"model being trained is a {describe(wanted)}; set config.model to match "
                       f"(e.g. --config.model.depth={architecture['depth']}) or pick another entry")
    if slimmable:
        arrays = _as_slimmable_arrays(arrays, target)
    assign_arrays(target, arrays, f"zoo file {rec.file} ({source})", prefix="'s backbone")
    if slimmable:
        inherit_batch_norm_from_full_width(target)
    return rec


# ---------------------------------------------------------------------------------------------
# Evaluation: what reproduces an entry's figure.

SMOKE_EXAMPLES = 1000  # entries also record top-1 on the first this-many test images (the tests')


def evaluate(model: nnx.Module, images_u8: np.ndarray, labels: np.ndarray, dataset: str = "cifar10",
             batch_size: int = 500) -> dict:
    """Top-1 of `model` (eval mode; an OFAS model runs its thresholded plans) on uint8 images:
    {"accuracy", "correct", "count"}."""
    from adaptive_jax.data import pipeline
    from adaptive_jax.data.augment import normalize
    from adaptive_jax.data.datasets import CHANNEL_MEAN, CHANNEL_STD, Split

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    mean, std = CHANNEL_MEAN[dataset], CHANNEL_STD[dataset]
    from adaptive_jax.execution import jit_predict

    model.eval()
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def count_correct(model, images, labels, mask):
        logits = model(normalize(images, mean, std))
        return ((logits.argmax(-1) == labels) * mask).sum()

    correct_in = jit_predict(graphdef, count_correct)
    split = Split(np.asarray(images_u8), np.asarray(labels), int(np.max(labels)) + 1)
    correct = sum(int(correct_in(params, batch_stats, *batch))
                  for batch in pipeline.eval_batches(split, batch_size))
    return {"accuracy": correct / len(split), "correct": correct, "count": len(split)}


def logits(model: nnx.Module, images_u8: np.ndarray, dataset: str = "cifar10",
           batch_size: int = 500) -> np.ndarray:
    """(N, classes) logits of `model` (eval mode) on uint8 images, batch by batch
    (`evaluation.split_outputs`)."""
    from adaptive_jax import evaluation
    from adaptive_jax.data.datasets import Split

    model.eval()
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    split = Split(np.asarray(images_u8), np.zeros(len(images_u8), np.int32), 0)
    return evaluation.split_outputs(graphdef, params, batch_stats, split, dataset,
                                    lambda m, x: m(x), batch_size)


def format_records(records: builtins.list[ZooRecord]) -> str:
    from adaptive_jax.report import format_table

    rows = [{"name": r.name, "model": describe(r.architecture), "dataset": r.dataset,
             "top1": r.test_accuracy, "macs": r.metrics.get("macs_mean", r.macs),
             "params": r.params, "device": r.device}
            for r in records]
    return format_table(rows, [("name", "name", "s"), ("model", "architecture", "s"),
                               ("dataset", "dataset", "s"), ("top1", "top-1", ".4f"),
                               ("macs", "MACs/img", ".3e"), ("params", "params", ",d"),
                               ("device", "trained on", "s")])


list = list_entries  # noqa: A001  zoo.list(), as the package's users call it
