r"""Training-step throughput: ResNet-50 with LARS against momentum SGD, same run.

Runs the recipes' training step (`recipes.train_loop.Trainer`, synthetic images
made on the device, so no input pipeline is measured) for ResNet-50 v1.5 with
the recipes' LARS (trust ratios tracked, as the recipes run it) and with
`keras.optimizers.SGD(momentum=0.9)`, alternating rounds of `--steps` steps,
and prints images per second for each and the ratio of their step times
(median over rounds). The optimizer step is a small part of a training step,
so the goal is LARS / SGD <= 1.05.

    python -m benchmarks.train_step [--batch_size=16] [--image_size=224] [--rounds=5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lars  # noqa: E402
from recipes import models  # noqa: E402
from recipes.train_loop import Trainer  # noqa: E402

CLASSES = 1000


def trainer(optimizer, batch_size, image_size):
    strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    model = models.build("resnet50", CLASSES, image_size)
    return Trainer(
        strategy,
        model,
        optimizer,
        global_batch_size=batch_size,
        label_smoothing=0.1,
        synthetic=(image_size, CLASSES, "float32"),
    )


def seconds_per_step(run, steps):
    start = time.perf_counter()
    run.train(None, steps)  # returns once the loop has finished
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    runs = {
        "SGD(momentum=0.9)": trainer(
            keras.optimizers.SGD(0.1, momentum=0.9), args.batch_size, args.image_size
        ),
        "LARS": trainer(
            keras_lars.LARS(1.0, weight_decay=1e-4, track_trust_ratios=True),
            args.batch_size,
            args.image_size,
        ),
    }
    for run in runs.values():  # compile
        run.train(None, 2)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(seconds_per_step(run, args.steps))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"ResNet-50 v1.5 training step, batch {args.batch_size} at {args.image_size}x"
        f"{args.image_size}, synthetic data, backend {keras.backend.backend()}, "
        f"median of {args.rounds} rounds of {args.steps} steps"
    )
    print("| optimizer | ms/step | images/s |")
    print("|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {1000 * seconds:.0f} | {args.batch_size / seconds:.1f} |")
    ratio = medians["LARS"] / medians["SGD(momentum=0.9)"]
    print(f"LARS / SGD step time: {ratio:.3f}")


if __name__ == "__main__":
    main()
