"""`make demo`: the zoo's adaptive models (OFAS, a cascade) against its static ResNets, measured here.

    python -m experiments.ofas.demo --out=runs/demo                    # make demo (minutes)
    python -m experiments.ofas.demo --out=runs/demo_train/report \
        --ofas_zoo_dir=runs/demo_train/zoo                             # after make demo-train

What it measures and draws: adaptive_jax/demo.py.
"""

from absl import app, flags

from adaptive_jax import demo
from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/demo", "Directory for the report and plots.")
flags.DEFINE_string("ofas", "ofas_resnet32", "Zoo name of the OFAS model.")
flags.DEFINE_string("ofas_zoo_dir", None, "Zoo directory holding --ofas (default: the package's).")
flags.DEFINE_list("static", ["resnet20", "resnet32_gpu"],
                  "Zoo names of the static ResNets compared (the cascade's two join them).")
flags.DEFINE_list("cascade", ["resnet20_gpu", "resnet56"],
                  "SMALL,LARGE zoo names cascaded (empty: no cascade).")
flags.DEFINE_string("cascade_at", "resnet32_gpu", "The static entry whose MACs the cascade matches.")
flags.DEFINE_list("thresholds", ["0.35", "0.5", "0.65"], "Decision thresholds of the OFAS curve.")
flags.DEFINE_integer("num_examples", 0, "Test images evaluated (0: all 10,000).")
flags.DEFINE_integer("latency_images", 16, "Test images timed one by one at batch 1.")
flags.DEFINE_integer("throughput_batches", 4, "Batches of 64 test images timed for throughput.")
flags.DEFINE_integer("pooled_batches", 8, "Batches of 64 test images the cascade also answers "
                     "together, the escalated ones pooled (0: not timed).")


def main(argv):
    common.start(argv, "experiments.ofas.demo")
    if FLAGS.cascade and len(FLAGS.cascade) != 2:
        raise app.UsageError(f"--cascade takes two zoo names, SMALL,LARGE; got {FLAGS.cascade}")
    demo.run(FLAGS.out, FLAGS.ofas, FLAGS.ofas_zoo_dir, tuple(FLAGS.static),
             tuple(float(t) for t in FLAGS.thresholds), FLAGS.num_examples, FLAGS.latency_images,
             FLAGS.throughput_batches, cascade_pair=tuple(FLAGS.cascade),
             cascade_at=FLAGS.cascade_at or None, pooled_batches=FLAGS.pooled_batches)


if __name__ == "__main__":
    app.run(main)
