"""`make demo`: the zoo's trained OFAS model against the zoo's static ResNets, measured here.

    python -m experiments.ofas.demo --out=runs/demo                    # make demo (minutes)
    python -m experiments.ofas.demo --out=runs/demo_train/report \
        --ofas_zoo_dir=runs/demo_train/zoo                             # after make demo-train

What it measures and draws: adaptive_jax/demo.py.
"""

from absl import app, flags, logging

from adaptive_jax import demo

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/demo", "Directory for the report and plots.")
flags.DEFINE_string("ofas", "ofas_resnet32", "Zoo name of the OFAS model.")
flags.DEFINE_string("ofas_zoo_dir", None, "Zoo directory holding --ofas (default: the package's).")
flags.DEFINE_list("static", ["resnet20", "resnet32"], "Zoo names of the static ResNets compared.")
flags.DEFINE_list("thresholds", ["0.35", "0.5", "0.65"], "Decision thresholds of the OFAS curve.")
flags.DEFINE_integer("num_examples", 0, "Test images evaluated (0: all 10,000).")
flags.DEFINE_integer("latency_images", 24, "Test images timed one by one at batch 1.")
flags.DEFINE_integer("throughput_batches", 6, "Batches of 64 test images timed for throughput.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    demo.run(FLAGS.out, FLAGS.ofas, FLAGS.ofas_zoo_dir, tuple(FLAGS.static),
             tuple(float(t) for t in FLAGS.thresholds), FLAGS.num_examples, FLAGS.latency_images,
             FLAGS.throughput_batches)


if __name__ == "__main__":
    app.run(main)
