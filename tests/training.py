"""A linear MLP whose LARS training NumPy can reproduce exactly."""

import keras
import numpy as np

import keras_lars
import reference

IN, HIDDEN, OUT = 6, 5, 3
EXAMPLES, BATCH = 64, 16
HYPER = dict(momentum=0.9, weight_decay=5e-3, trust_coefficient=0.05)
# Default exclusions: biases are neither decayed nor adapted.
DECAYED = ADAPTED = [True, False, True, False]
SCHEDULE = dict(peak=0.3, decay_steps=16, warmup_steps=3)


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(EXAMPLES, IN))
    y = x @ rng.normal(size=(IN, OUT)) + 0.1 * rng.normal(size=(EXAMPLES, OUT))
    return x.astype("float32"), y.astype("float32")


def initial_params(seed=0):
    rng = np.random.default_rng(seed + 100)
    return [
        rng.normal(scale=0.5, size=s).astype("float32")
        for s in [(IN, HIDDEN), (HIDDEN,), (HIDDEN, OUT), (OUT,)]
    ]


def model():
    net = keras.Sequential(
        [
            keras.Input((IN,)),
            keras.layers.Dense(HIDDEN, name="hidden"),
            keras.layers.Dense(OUT, name="out"),
        ],
        name="linear_mlp",
    )
    net.set_weights(initial_params())
    return net


def optimizer(**kwargs):
    s = SCHEDULE
    schedule = keras_lars.PolynomialWarmup(s["peak"], s["decay_steps"], s["warmup_steps"])
    return keras_lars.LARS(schedule, **HYPER, **kwargs)


def reference_training(epochs, **options):
    """NumPy: the same batches in order, exact gradients, the LARS rule
    (`options` as `reference.lars_step`'s, e.g. the rate outside momentum)."""
    x, y = data()
    params = [p.astype(np.float64) for p in initial_params()]
    velocities = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        for start in range(0, EXAMPLES, BATCH):
            grads = reference.linear_mlp_gradients(
                params, x[start : start + BATCH], y[start : start + BATCH]
            )
            lr = reference.polynomial_warmup(step, **SCHEDULE)
            for i, g in enumerate(grads):
                params[i], velocities[i] = reference.lars_step(
                    params[i],
                    g,
                    velocities[i],
                    lr,
                    decayed=DECAYED[i],
                    adapted=ADAPTED[i],
                    **HYPER,
                    **options,
                )
            step += 1
    return params
