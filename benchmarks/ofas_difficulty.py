"""How much of a test image's difficulty can a policy see where OFAS decides (issue 11)?

OFAS plans every block once, after the stem (docs/methods.md 3). Routing that pays spends more
blocks on the images a cheap network gets wrong, so the head must tell them apart from its input.
This measures how well anything linear on that input could: on a zoo backbone, features are taken
at each depth (the head's own input, the 4 x 4-pooled stem output, as the zoo OFAS head sees it;
each block's output, globally pooled; a downsampled image for comparison), and two probes are
fit on one half of the test set and scored on the other (then the halves swap):

- a logistic regression predicting "the backbone gets this image wrong" (AUC);
- a 10-class softmax regression (an early-exit classifier at that depth): its top-1, and the AUC
  of its 1 - max softmax for the same event.

The backbone's own 1 - max softmax (the whole network run) is the reference. AUC 0.5 is chance.

    taskset -c 0 python -m benchmarks.ofas_difficulty --model=resnet32

Figures: `ofas_difficulty_auc` per feature (the better probe's AUC), and
`ofas_difficulty_auc_backbone_confidence`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from absl import app, flags
from flax import nnx

from adaptive_jax import report, zoo
from adaptive_jax.data import datasets, normalize
from adaptive_jax.policies import OFASHead
from benchmarks import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet32", "Zoo backbone whose features are probed.")
flags.DEFINE_integer("test_examples", 0, "The first this-many test images (0: all).")
flags.DEFINE_integer("probe_steps", 500, "Full-batch Adam steps per probe.")
flags.DEFINE_float("probe_l2", 1e-3, "L2 penalty of the probes' weights.")
flags.DEFINE_integer("head_pool_grid", 4, "The OFAS head's pooling grid (the zoo config's).")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $TFDS_DATA_DIR).")
flags.DEFINE_string("manual_dir", None, "CIFAR-10 manual dir (default: $ADAPTIVE_JAX_MANUAL_DIR).")


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half):
    the Mann-Whitney statistic over the ranks."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"an AUC needs positives and negatives, got {n_pos} and {n_neg}")
    ranks = scipy.stats.rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


_PROBE_TX = optax.adam(0.01)


def _probe_loss(params, x, y, l2):
    z = x @ params[0] + params[1]
    data = (optax.sigmoid_binary_cross_entropy(z[:, 0], y) if z.shape[1] == 1
            else optax.softmax_cross_entropy_with_integer_labels(z, y))
    return data.mean() + l2 * (params[0] ** 2).sum()


@jax.jit
def _probe_update(params, opt_state, x, y, l2):
    updates, opt_state = _PROBE_TX.update(jax.grad(_probe_loss)(params, x, y, l2), opt_state)
    return optax.apply_updates(params, updates), opt_state


def fit_linear_probe(features: np.ndarray, targets: np.ndarray, num_outputs: int, l2: float,
                     steps: int):
    """A linear map of standardised features, fit by full-batch Adam: `num_outputs=1` a logistic
    regression of 0/1 targets, else a softmax regression of class labels. Returns a function of
    features to probabilities ((N,) or (N, num_outputs))."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    x, y = jnp.asarray((features - mean) / std), jnp.asarray(targets)
    params = (jnp.zeros((features.shape[1], num_outputs)), jnp.zeros(num_outputs))
    opt_state = _PROBE_TX.init(params)
    for _ in range(steps):  # compiled once per feature width and output count
        params, opt_state = _probe_update(params, opt_state, x, y, l2)

    def predict(new: np.ndarray) -> np.ndarray:
        z = jnp.asarray((new - mean) / std) @ params[0] + params[1]
        return np.asarray(jax.nn.sigmoid(z[:, 0]) if num_outputs == 1 else jax.nn.softmax(z))

    return predict


def probe_scores(features: np.ndarray, labels: np.ndarray, wrong: np.ndarray, num_classes: int,
                 l2: float, steps: int) -> dict:
    """Two-fold (first half / second half) scores of both probes on `features`."""
    half = len(labels) // 2
    folds = [(np.arange(half), np.arange(half, len(labels))),
             (np.arange(half, len(labels)), np.arange(half))]
    binary, early_exit, top1 = [], [], []
    for fit, held in folds:
        p_wrong = fit_linear_probe(features[fit], wrong[fit].astype(np.float32), 1, l2, steps)
        binary.append(roc_auc(p_wrong(features[held]), wrong[held]))
        probs = fit_linear_probe(features[fit], labels[fit], num_classes, l2, steps)(features[held])
        early_exit.append(roc_auc(-probs.max(-1), wrong[held]))
        top1.append(float(np.mean(probs.argmax(-1) == labels[held])))
    return {"auc_wrong_probe": float(np.mean(binary)), "auc_exit_confidence": float(np.mean(early_exit)),
            "exit_top1": float(np.mean(top1))}


def backbone_features(model, images_u8: np.ndarray, dataset: str, pool_grid: int,
                      batch_size: int = 500) -> dict[str, np.ndarray]:
    """Per image: the OFAS head's input (`OFASHead.pooled` of the stem output), an 8 x 8-pooled
    image, every block's output globally pooled ((L, N, widest) zero-padded), and the logits."""
    mean, std = datasets.CHANNEL_MEAN[dataset], datasets.CHANNEL_STD[dataset]
    spec = model.spec
    head = OFASHead(spec.widths[0], spec.num_blocks, pool_grid=pool_grid, rngs=nnx.Rngs(0))
    widest = max(spec.widths)

    @nnx.jit
    def features(model, batch):
        x = normalize(batch, mean, std)
        stem = model.stem(x)

        def step(modules, h, _):
            h = modules[0](h)
            pooled = h.mean(axis=(1, 2))
            return h, jnp.pad(pooled, ((0, 0), (0, widest - pooled.shape[-1])))

        out, blocks = model.walk(stem, step)
        b, height, width, c = x.shape
        image = x.reshape(b, 8, height // 8, 8, width // 8, c).mean(axis=(2, 4)).reshape(b, -1)
        return {"head_input": head.pooled(stem), "image": image, "blocks": blocks,
                "logits": model.classify(out)}

    model.eval()
    parts = [jax.device_get(features(model, jnp.asarray(images_u8[i:i + batch_size])))
             for i in range(0, len(images_u8), batch_size)]
    return {k: np.concatenate([p[k] for p in parts], axis=1 if k == "blocks" else 0)
            for k in parts[0]}


def main(argv):
    del argv
    model, record = zoo.load(FLAGS.model)
    test = datasets.load_split(record.dataset, "test", FLAGS.data_dir, FLAGS.manual_dir)
    n = FLAGS.test_examples or len(test)
    images, labels = test.images[:n], np.asarray(test.labels[:n])
    feats = backbone_features(model, images, record.dataset, FLAGS.head_pool_grid)
    probs = np.asarray(jax.nn.softmax(feats["logits"]))
    wrong = probs.argmax(-1) != labels
    reference = roc_auc(-probs.max(-1), wrong)

    widths = [w for w in model.spec.widths for _ in range(model.spec.blocks_per_stage)]
    named = [("image, 8x8 pooled", feats["image"]),
             (f"OFAS head input (stem, {FLAGS.head_pool_grid}x{FLAGS.head_pool_grid} pooled)",
              feats["head_input"])]
    named += [(f"after block {i}", feats["blocks"][i][:, :widths[i]])
              for i in range(model.spec.num_blocks)]
    rows = []
    for name, x in named:
        scores = probe_scores(x, labels, wrong, test.num_classes, FLAGS.probe_l2, FLAGS.probe_steps)
        rows.append({"features": name, "numbers": x.shape[1], **scores})
    rows.append({"features": "backbone's own softmax (the whole network)", "numbers": test.num_classes,
                 "auc_wrong_probe": float("nan"), "auc_exit_confidence": reference,
                 "exit_top1": float(np.mean(~wrong))})
    text = report.format_table(rows, [
        ("features", "features", "s"), ("numbers", "numbers", "d"),
        ("auc_wrong_probe", "AUC (wrong probe)", ".3f"),
        ("auc_exit_confidence", "AUC (exit confidence)", ".3f"), ("exit_top1", "exit top-1", ".3f")])
    header = (f"{FLAGS.model}: 'the backbone gets this image wrong' ({wrong.mean():.4f} of {n} test "
              f"images) predicted from each depth's features; linear probes, two-fold over the test set")
    print(header)
    print(text, flush=True)
    model_name = f"{FLAGS.model}"
    figures = [{"metric": "ofas_difficulty_auc", "value": round(max(r["auc_wrong_probe"],
                                                                    r["auc_exit_confidence"]), 4),
                "unit": "auc", "model": model_name, "features": r["features"],
                "auc_wrong_probe": round(r["auc_wrong_probe"], 4),
                "auc_exit_confidence": round(r["auc_exit_confidence"], 4),
                "exit_top1": round(r["exit_top1"], 4), "test_examples": n}
               for r in rows[:-1]]
    figures.append({"metric": "ofas_difficulty_auc_backbone_confidence", "value": round(reference, 4),
                    "unit": "auc", "model": model_name, "test_examples": n})
    common.append_results("ofas_difficulty", figures, header + "\n\n" + text,
                          notes="what a linear policy at each depth could know of an image's "
                                "difficulty; OFAS's head decides at the stem (docs/ofas.md)")


if __name__ == "__main__":
    app.run(main)
