"""What the bundled CIFAR-10 copy costs: ResNets trained on the original pixels, run on it.

    git clone https://github.com/akamaster/pytorch_resnet_cifar10 REF   # commit d5489e8
    python -m benchmarks.jpeg_cost --weights_dir=REF/pretrained_models --finetune_epochs=4

The project's CIFAR-10 comes from a copy stored as quality-75 JPEGs with 4:2:0 chroma
(docs/zoo.md), and no copy of the original pixels is at hand. Idelbayev's reference ResNets
(He et al.'s CIFAR architecture, option-A shortcuts; BSD-2 licence) were trained on the original
pixels and reach 91.78 / 92.78 / 93.14 / 93.62 % (ResNet-20 / 32 / 44 / 56, the figure each
checkpoint stores). For each checkpoint in `--weights_dir` this benchmark reports

  * its top-1 on the copy's test images as trained (how far the copy's pixels are from the
    original ones, as a network that learned the originals sees them), and on the first
    `--train_eval_examples` training images (which it was trained on as originals);
  * its top-1 on the copy's test images after `--finetune_epochs` epochs on the copy's training
    images (its own recipe's SGD, weight decay and normalisation, a cosine decay from
    `--finetune_lr`; our augmentation): what a network that learned the originals reaches once
    it has adapted to the copy. It starts from what the originals taught it, which training on
    the copy alone does not have, so (published - fine-tuned) is an estimate from below of what
    the copy costs a network trained on it from scratch.

The network and its fine-tuning are `benchmarks.reference_resnet`; this module is the command.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from adaptive_jax import report, zoo
from adaptive_jax.data import datasets
from benchmarks.common import append_results
from benchmarks.reference_resnet import checkpoints, fine_tune, load_reference, top1

FLAGS = flags.FLAGS
flags.DEFINE_string("weights_dir", None, "Directory of the reference checkpoints "
                    "(resnet<depth>-<hash>.th: pytorch_resnet_cifar10's pretrained_models).")
flags.DEFINE_list("depths", [], "Only these depths (default: every checkpoint in weights_dir).")
flags.DEFINE_integer("finetune_epochs", 0, "Epochs of fine-tuning on the copy (0: evaluate only).")
flags.DEFINE_float("finetune_lr", 0.01, "Peak learning rate of the fine-tuning's cosine decay.")
flags.DEFINE_integer("batch_size", 128, "Fine-tuning batch size (the reference recipe's).")
flags.DEFINE_integer("num_train_examples", 0, "First this-many training images (0: all).")
flags.DEFINE_integer("num_test_examples", 0, "First this-many test images (0: all 10,000).")
flags.DEFINE_integer("train_eval_examples", 10000, "First this-many training images the checkpoint "
                     "is scored on as trained (0: all).")
flags.DEFINE_bool("record", True, "Append the figures to benchmarks/RESULTS.md and results.jsonl.")
flags.mark_flag_as_required("weights_dir")

DATASET = "cifar10"
# Our zoo entry of the same depth trained on the copy, for the table (docs/zoo.md).
ZOO_COUNTERPART = {20: "resnet20_gpu", 32: "resnet32_gpu", 56: "resnet56"}


def main(argv):
    del argv
    train = datasets.load_split(DATASET, "train").first(FLAGS.num_train_examples)
    test = datasets.load_split(DATASET, "test").first(FLAGS.num_test_examples)
    train_eval = train.first(FLAGS.train_eval_examples)
    records = {r.name: r for r in zoo.list()}
    rows, figures = [], []
    for path in checkpoints(FLAGS.weights_dir, FLAGS.depths):
        params, statistics, depth, published = load_reference(path)
        model = f"reference_resnet{depth}"
        row = {"model": model, "published": published,
               "on_copy": top1(params, statistics, depth, test),
               "train_on_copy": top1(params, statistics, depth, train_eval)}
        context = {"checkpoint": os.path.basename(path), "published_accuracy": published,
                   "test_examples": len(test)}
        figures.append({"metric": "original_pixels_model_accuracy_on_copy", "value": row["on_copy"],
                        "unit": "top-1", "model": model, "train_images_top1": row["train_on_copy"],
                        "train_images": len(train_eval), **context})
        start, per_epoch = time.perf_counter(), []
        for epoch, params, statistics, accuracy, loss in fine_tune(
                params, statistics, depth, train, test, FLAGS.finetune_epochs, FLAGS.finetune_lr,
                FLAGS.batch_size):
            print(f"{model}: epoch {epoch}, test top-1 {accuracy:.4f}, train loss {loss:.4f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            row["finetuned"] = accuracy
            per_epoch.append(round(accuracy, 4))
        if FLAGS.finetune_epochs:
            figures.append({"metric": "finetuned_on_copy_accuracy", "value": row["finetuned"],
                            "unit": "top-1", "model": model, "epochs": FLAGS.finetune_epochs,
                            "peak_lr": FLAGS.finetune_lr, "train_examples": len(train),
                            "per_epoch": per_epoch, **context})
        counterpart = records.get(ZOO_COUNTERPART.get(depth, ""))
        if counterpart is not None:
            row["zoo"] = f"{counterpart.name} {counterpart.test_accuracy:.4f}"
        rows.append(row)
    columns = [("model", "model", "s"), ("published", "original pixels (checkpoint)", ".4f"),
               ("on_copy", "copy, as trained", ".4f"), ("train_on_copy", "copy train, as trained", ".4f"),
               ("finetuned", f"copy, fine-tuned {FLAGS.finetune_epochs} ep", ".4f"),
               ("zoo", "zoo entry trained on the copy", "s")]
    if not FLAGS.finetune_epochs:
        columns = [c for c in columns if c[0] != "finetuned"]
    table = report.format_table(rows, columns)
    print(table)
    if FLAGS.record:
        append_results("jpeg_cost", figures, table,
                       notes=f"test images: {len(test)}; training images: {len(train)}")


if __name__ == "__main__":
    app.run(main)
