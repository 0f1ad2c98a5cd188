r"""Training-step throughput: ResNet-50 with LARS against momentum SGD, same run.

Runs the recipes' training step for ResNet-50 v1.5 with the recipes' LARS
(trust ratios tracked, as the recipes run it) and with
`keras.optimizers.SGD(momentum=0.9)`, alternating rounds of `--steps` steps,
and prints images per second for each and the ratio of their step times
(median over rounds). The optimizer step is a small part of a training step,
so the goal is LARS / SGD <= 1.05. No input pipeline is measured:

- TensorFlow: `recipes.imagenet.train_loop.Trainer`, synthetic images made inside the
  step;
- JAX: what `recipes/imagenet/jax_runner.py` runs, `model.fit` (jit-compiled) with
  `steps_per_execution` = `--steps`, on one random batch fed again and again.

TensorFlow's `--compile_optimizer=yes` runs each optimizer's update as one XLA
computation (the recipes' `--compile_optimizer`); `both` times each optimizer
both ways in the same rounds and prints the ratios both ways.

    python -m benchmarks.train_step [--batch_size=16] [--image_size=224] [--rounds=5]
    python -m benchmarks.train_step --compile_optimizer=both
    KERAS_BACKEND=jax python -m benchmarks.train_step
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lars  # noqa: E402
from recipes.imagenet import models  # noqa: E402

CLASSES = 1000


def tensorflow_steps(optimizer, batch_size, image_size, compile_optimizer=False):
    """A callable running n training steps of the recipes' TensorFlow loop."""
    import tensorflow as tf

    from recipes.imagenet.train_loop import Trainer

    keras.utils.set_random_seed(0)
    trainer = Trainer(
        tf.distribute.get_strategy(),
        models.build("resnet50", CLASSES, image_size),
        optimizer,
        global_batch_size=batch_size,
        label_smoothing=0.1,
        synthetic=(image_size, CLASSES),
        compile_optimizer=compile_optimizer,
    )
    return lambda n: trainer.train(None, n)  # returns once the loop has finished


def jax_steps(optimizer, batch_size, image_size, steps_per_execution):
    """A callable running n (a multiple of `steps_per_execution`) steps of
    `model.fit`, as recipes/imagenet/jax_runner.py does."""
    keras.utils.set_random_seed(0)
    model = models.build("resnet50", CLASSES, image_size)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    rng = np.random.default_rng(0)
    batch = (  # uint8 images, as the recipe's input pipeline ships them
        rng.integers(0, 256, size=(batch_size, image_size, image_size, 3)).astype("uint8"),
        rng.integers(0, CLASSES, size=batch_size).astype("int32"),
    )

    def batches():
        while True:
            yield batch

    stream = batches()

    def run(n):
        model.fit(stream, steps_per_epoch=n, epochs=1, verbose=0, shuffle=False)
        # fit returns after the last step's metrics are read back: finished.

    return run


def seconds_per_step(run, steps):
    start = time.perf_counter()
    run(steps)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--compile_optimizer",
        choices=("no", "yes", "both"),
        default="no",
        help="TensorFlow: the update after the all-reduce as one XLA computation",
    )
    args = parser.parse_args()
    optimizers = {
        "SGD(momentum=0.9)": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        "LARS": lambda: keras_lars.LARS(1.0, weight_decay=1e-4, track_trust_ratios=True),
    }
    if keras.backend.backend() == "jax":
        if args.compile_optimizer != "no":
            parser.error("--compile_optimizer is for TensorFlow: JAX compiles its whole step")
        runs = {
            name: jax_steps(optimizer(), args.batch_size, args.image_size, args.steps)
            for name, optimizer in optimizers.items()
        }
    else:
        ways = {"no": [False], "yes": [True], "both": [False, True]}[args.compile_optimizer]
        runs = {
            name + (", compiled update" if compiled else ""): tensorflow_steps(
                optimizer(), args.batch_size, args.image_size, compiled
            )
            for compiled in ways
            for name, optimizer in optimizers.items()
        }
    for run in runs.values():  # compile
        run(args.steps)
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
    for suffix in ("", ", compiled update"):
        if "LARS" + suffix in medians:
            ratio = medians["LARS" + suffix] / medians["SGD(momentum=0.9)" + suffix]
            print(f"LARS / SGD step time{suffix}: {ratio:.3f}")
    for name in optimizers:
        if name in medians and name + ", compiled update" in medians:
            ratio = medians[name + ", compiled update"] / medians[name]
            print(f"{name} compiled update / uncompiled, step time: {ratio:.3f}")


if __name__ == "__main__":
    main()
