"""LARS composed with the base optimizer's options and mixed precision."""

import keras
import numpy as np
import pytest

import keras_lars
import reference
import training

HYPER = dict(momentum=0.9, weight_decay=0.01, trust_coefficient=0.02)


@pytest.fixture
def policy():
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def two_variables():
    rng = np.random.default_rng(0)
    values = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    return values, [
        keras.Variable(v.astype("float32"), name=n) for v, n in zip(values, ["kernel", "bias"])
    ]


def gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=(4, 3)), rng.normal(size=(3,))] for _ in range(steps)]


def apply(optimizer, variables, grads_per_step, scale=1.0):
    for grads in grads_per_step:
        optimizer.apply_gradients(
            [
                (keras.ops.convert_to_tensor(g * scale, "float32"), v)
                for g, v in zip(grads, variables)
            ]
        )


def expected(values, grads_per_step, lr=1.0):
    weights, _ = reference.lars_run(
        values,
        grads_per_step,
        [lr] * len(grads_per_step),
        decayed=[True, False],
        adapted=[True, False],
        **HYPER,
    )
    return weights


def assert_close(variables, want, rtol=1e-5):
    for v, w in zip(variables, want):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v), w, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
def test_gradient_clipping_happens_before_the_update(clip):
    values, variables = two_variables()
    grads = gradients(3)
    apply(keras_lars.LARS(1.0, **HYPER, **{clip: 0.5}), variables, grads)

    def clipped(step):
        if clip == "clipnorm":
            return [g * min(1.0, 0.5 / np.linalg.norm(g)) for g in step]
        total = np.sqrt(sum(np.sum(g**2) for g in step))
        return [g * min(1.0, 0.5 / total) for g in step]

    assert_close(variables, expected(values, [clipped(s) for s in grads]))


def test_gradient_accumulation_averages_then_steps_once():
    values, variables = two_variables()
    grads = gradients(4)
    optimizer = keras_lars.LARS(1.0, gradient_accumulation_steps=2, **HYPER)
    apply(optimizer, variables, grads)
    averaged = [[(a + b) / 2 for a, b in zip(grads[i], grads[i + 1])] for i in (0, 2)]
    assert_close(variables, expected(values, averaged))
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2


def test_accumulation_feeds_the_schedule_updates_not_micro_steps():
    """k = 4: update u averages micro-batches 4u..4u+3 and uses the
    schedule's rate at u (Keras's optimizers would use the rate at 4u + 3)."""
    k, updates = 4, 5
    values, variables = two_variables()
    grads = gradients(k * updates)
    schedule = keras_lars.PolynomialWarmup(2.0, decay_steps=6, warmup_steps=3)
    optimizer = keras_lars.LARS(schedule, gradient_accumulation_steps=k, **HYPER)
    apply(optimizer, variables, grads)

    averaged = [
        [sum(grads[u * k + i][j] for i in range(k)) / k for j in range(2)] for u in range(updates)
    ]
    rates = [
        reference.polynomial_warmup(u, peak=2.0, decay_steps=6, warmup_steps=3)
        for u in range(updates)
    ]
    weights, _ = reference.lars_run(
        values, averaged, rates, decayed=[True, False], adapted=[True, False], **HYPER
    )
    assert_close(variables, weights)
    # Keras's `iterations` counts updates, though its schedules get micro-steps.
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == updates
    learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    assert learning_rate == pytest.approx(reference.polynomial_warmup(updates, 2.0, 6, 3))


def test_exponential_moving_average_of_lars_weights():
    values, variables = two_variables()
    grads = gradients(4)
    optimizer = keras_lars.LARS(1.0, use_ema=True, ema_momentum=0.5, **HYPER)
    apply(optimizer, variables, grads)
    # Keras's EMA: the first average is the weights, then 0.5·avg + 0.5·w.
    averages = None
    for step in range(1, 5):
        weights = expected(values, grads[:step])
        averages = (
            weights if averages is None else [0.5 * a + 0.5 * w for a, w in zip(averages, weights)]
        )
    optimizer.finalize_variable_values(variables)
    assert_close(variables, averages)


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="Keras's LossScaleOptimizer leaks a tracer when applied eagerly on "
    "JAX, with SGD too; the fit test below covers it compiled",
)
def test_loss_scale_optimizer_unscales_before_lars():
    values, variables = two_variables()
    grads = gradients(3)
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras_lars.LARS(1.0, **HYPER), initial_scale=1024.0
    )
    apply(optimizer, variables, grads, scale=1024.0)
    assert_close(variables, expected(values, grads))


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16", "bfloat16"])
def test_trains_under_precision_policy(name, policy):
    policy(name)
    x, y = training.data()
    net = training.model()
    net.compile(optimizer=training.optimizer(), loss="mse")
    if name == "mixed_float16":
        assert isinstance(net.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(net.optimizer.inner_optimizer, keras_lars.LARS)
    history = net.fit(x, y, batch_size=training.BATCH, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses
    velocities = net.optimizer.variables[-len(net.trainable_variables) :]
    assert all(v.dtype == w.dtype for v, w in zip(velocities, net.trainable_variables))
