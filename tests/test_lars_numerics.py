"""LARS against the NumPy reference: every option, every exclusion, many steps.

Runs on whichever Keras backend is active (the Makefile runs all three).
"""

import itertools

import keras
import numpy as np
import pytest

import keras_lars
import reference

STEPS = 12
SCHEDULE = dict(peak=2.0, decay_steps=10, warmup_steps=3, end=0.01)
HYPER = dict(momentum=0.9, weight_decay=0.01, trust_coefficient=0.02, epsilon=1e-3)

PATHS = (
    "mlp/dense/kernel",
    "mlp/dense/bias",
    "mlp/batch_normalization/gamma",
    "mlp/batch_normalization/beta",
    "mlp/dense_1/kernel",
    "mlp/dense_1/bias",
)
KERNELS = {"mlp/dense/kernel", "mlp/dense_1/kernel"}

# name -> (constructor arguments, set-up calls, decayed paths, adapted paths).
# The expected sets are spelt out here, not derived from the optimizer.
EXCLUSIONS = {
    "default": ({}, None, KERNELS, KERNELS),
    "none": (
        dict(weight_decay_exclude_patterns=(), adaptation_exclude_patterns=()),
        None,
        set(PATHS),
        set(PATHS),
    ),
    "weight_decay_only": (
        dict(adaptation_exclude_patterns=()),
        None,
        KERNELS,
        set(PATHS),
    ),
    "adaptation_only": (
        dict(weight_decay_exclude_patterns=()),
        None,
        set(PATHS),
        KERNELS,
    ),
    "methods": (
        dict(weight_decay_exclude_patterns=(), adaptation_exclude_patterns=()),
        lambda opt, model: (
            opt.exclude_from_weight_decay(var_names=["gamma", "dense/bias"]),
            opt.exclude_from_layer_adaptation(var_list=[model.trainable_variables[4]]),
        ),
        set(PATHS) - {"mlp/batch_normalization/gamma", "mlp/dense/bias"},
        set(PATHS) - {"mlp/dense_1/kernel"},
    ),
}


def make_model(seed=0):
    """Dense -> BatchNorm -> Dense, with non-zero biases except the last."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, name="dense"),
            keras.layers.BatchNormalization(name="batch_normalization"),
            keras.layers.Dense(3, name="dense_1"),
        ],
        name="mlp",
    )
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables[1:4]:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    assert [v.path for v in model.trainable_variables] == list(PATHS)
    return model


def random_gradients(model, steps, seed=1):
    """Per step, one gradient per variable, with scales over three decades."""
    rng = np.random.default_rng(seed)
    return [
        [
            rng.normal(scale=10.0 ** rng.uniform(-2, 1), size=v.shape)
            for v in model.trainable_variables
        ]
        for _ in range(steps)
    ]


def apply_all(optimizer, variables, gradients_per_step):
    for gradients in gradients_per_step:
        optimizer.apply_gradients(
            zip([keras.ops.convert_to_tensor(g, "float32") for g in gradients], variables)
        )


def schedule():
    s = SCHEDULE
    return keras_lars.PolynomialWarmup(
        s["peak"], s["decay_steps"], s["warmup_steps"], end_learning_rate=s["end"]
    )


def reference_rates(steps):
    return [reference.polynomial_warmup(t, **SCHEDULE) for t in range(steps)]


@pytest.mark.parametrize(
    "denominator,larc_clip,nesterov,exclusion",
    list(
        itertools.product(["sum_of_norms", "norm_of_sum"], [False, True], [False, True], EXCLUSIONS)
    ),
)
def test_matches_reference_over_many_steps(denominator, larc_clip, nesterov, exclusion):
    kwargs, set_up, decayed, adapted = EXCLUSIONS[exclusion]
    model = make_model()
    optimizer = keras_lars.LARS(
        schedule(),
        nesterov=nesterov,
        trust_ratio_denominator=denominator,
        larc_clip=larc_clip,
        **HYPER,
        **kwargs,
    )
    if set_up:
        set_up(optimizer, model)
    initial = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    gradients = random_gradients(model, STEPS)

    apply_all(optimizer, model.trainable_variables, gradients)

    expected_w, expected_v = reference.lars_run(
        initial,
        gradients,
        reference_rates(STEPS),
        decayed=[p in decayed for p in PATHS],
        adapted=[p in adapted for p in PATHS],
        nesterov=nesterov,
        denominator=denominator,
        larc_clip=larc_clip,
        **HYPER,
    )
    for path, variable, want in zip(PATHS, model.trainable_variables, expected_w):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable), want, rtol=2e-5, atol=2e-6, err_msg=path
        )
    for path, velocity, want in zip(PATHS, optimizer.momentums, expected_v):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(velocity), want, rtol=2e-5, atol=2e-6, err_msg=path
        )


@pytest.mark.parametrize("denominator", ["sum_of_norms", "norm_of_sum"])
def test_tracked_trust_ratios_are_the_last_updates_lambda(denominator):
    model = make_model()
    initial = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    gradients = random_gradients(model, STEPS)
    optimizer = keras_lars.LARS(
        schedule(), trust_ratio_denominator=denominator, track_trust_ratios=True, **HYPER
    )
    apply_all(optimizer, model.trainable_variables, gradients)

    before_last, _ = reference.lars_run(
        initial,
        gradients[:-1],
        reference_rates(STEPS - 1),
        decayed=[p in KERNELS for p in PATHS],
        adapted=[p in KERNELS for p in PATHS],
        denominator=denominator,
        **HYPER,
    )
    expected = {
        path: (
            reference.trust_ratio(
                w,
                g,
                HYPER["weight_decay"],
                HYPER["trust_coefficient"],
                HYPER["epsilon"],
                denominator,
            )
            if path in KERNELS
            else 1.0  # excluded from adaptation
        )
        for path, w, g in zip(PATHS, before_last, gradients[-1])
    }
    got = optimizer.trust_ratios()
    assert list(got) == list(PATHS)
    for path in PATHS:
        assert got[path] == pytest.approx(expected[path], rel=1e-5), path
    # Tracking changes nothing in the update.
    untracked_model = make_model()
    untracked = keras_lars.LARS(schedule(), trust_ratio_denominator=denominator, **HYPER)
    apply_all(untracked, untracked_model.trainable_variables, gradients)
    for a, b in zip(model.trainable_variables, untracked_model.trainable_variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_trust_ratios_need_tracking_and_a_build():
    with pytest.raises(ValueError, match="track_trust_ratios=True"):
        keras_lars.LARS().trust_ratios()
    with pytest.raises(ValueError, match="built"):
        keras_lars.LARS(track_trust_ratios=True).trust_ratios()


def test_without_momentum_matches_reference_and_keeps_no_slots():
    model = make_model()
    optimizer = keras_lars.LARS(schedule(), **{**HYPER, "momentum": 0.0})
    initial = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    gradients = random_gradients(model, STEPS)
    apply_all(optimizer, model.trainable_variables, gradients)
    expected, _ = reference.lars_run(
        initial,
        gradients,
        reference_rates(STEPS),
        decayed=[p in KERNELS for p in PATHS],
        adapted=[p in KERNELS for p in PATHS],
        **{**HYPER, "momentum": 0.0},
    )
    assert optimizer.momentums == []
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), want, rtol=2e-5, atol=2e-6)


# Hand-computed: w = [3, 4] (‖w‖ = 5), g = [0.8, -0.6] (‖g‖ = 1), β = 0.1,
# η = 0.01, γ = 2, m = 0.9. Then g + βw = [1.1, -0.2] and ‖g + βw‖ = √1.25.
# Paper: λ = 0.05 / 1.5 = 1/30, v = 2/30·[1.1, -0.2].
# Norm of sum: λ = 0.05 / √1.25 = 0.0447214, v = 2λ·[1.1, -0.2].
# LARC clip: local rate min(1/30, 2) = 1/30, v = [1.1, -0.2] / 30.
# Nesterov: w − (m·v + v) = w − 1.9·v.
@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({}, [3 - 2.2 / 30, 4 + 0.4 / 30]),
        (
            {"trust_ratio_denominator": "norm_of_sum"},
            [3 - 0.1 / 1.25**0.5 * 1.1, 4 + 0.1 / 1.25**0.5 * 0.2],
        ),
        ({"larc_clip": True}, [3 - 1.1 / 30, 4 + 0.2 / 30]),
        ({"nesterov": True}, [3 - 1.9 * 2.2 / 30, 4 + 1.9 * 0.4 / 30]),
    ],
)
def test_single_step_by_hand(kwargs, expected):
    variable = keras.Variable([3.0, 4.0], name="kernel")
    optimizer = keras_lars.LARS(
        2.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01, **kwargs
    )
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([0.8, -0.6]), variable)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, rtol=1e-6)


def test_zero_weights_fall_back_to_global_rate():
    # ‖w‖ = 0: λ = 1, so the step is γ·g (the decay term is zero too).
    variable = keras.Variable([0.0, 0.0], name="kernel")
    optimizer = keras_lars.LARS(3.0, momentum=0.0, weight_decay=0.1)
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([1.0, -2.0]), variable)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), [-3.0, 6.0])


@pytest.mark.parametrize("denominator", ["sum_of_norms", "norm_of_sum"])
def test_zero_gradient_falls_back_to_global_rate(denominator):
    # Paper form: ‖g‖ = 0, so λ = 1 and the step is γ·β·w.
    # Norm-of-sum: ‖g + βw‖ > 0, so λ = η‖w‖/‖βw‖ = η/β.
    variable = keras.Variable([3.0, 4.0], name="kernel")
    optimizer = keras_lars.LARS(
        2.0,
        momentum=0.0,
        weight_decay=0.1,
        trust_coefficient=0.01,
        trust_ratio_denominator=denominator,
    )
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([0.0, 0.0]), variable)])
    trust_ratio = 1.0 if denominator == "sum_of_norms" else 0.01 / 0.1
    expected = np.array([3.0, 4.0]) * (1 - 2.0 * trust_ratio * 0.1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, rtol=1e-6)


def test_zero_everything_leaves_variable_unchanged_and_finite():
    variable = keras.Variable([0.0, 0.0], name="kernel")
    optimizer = keras_lars.LARS(2.0, epsilon=0.0)
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([0.0, 0.0]), variable)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), [0.0, 0.0])


@pytest.mark.parametrize("dtype,rtol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_low_precision_variables_use_float32_norms(dtype, rtol):
    # ‖w‖² = 100·300² = 9e6 overflows float16 (max 65504): a float16 norm
    # would be inf and the trust ratio 0 or NaN.
    rng = np.random.default_rng(0)
    w0 = (300.0 * np.sign(rng.normal(size=100))).astype(dtype if dtype == "float16" else "float32")
    g0 = rng.normal(scale=200.0, size=100)
    variable = keras.Variable(w0, dtype=dtype, name="kernel")
    optimizer = keras_lars.LARS(1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.01)
    optimizer.apply_gradients([(keras.ops.convert_to_tensor(g0, dtype), variable)])
    got = keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32"))
    stored_w = np.asarray(
        keras.ops.convert_to_numpy(
            keras.ops.cast(keras.ops.convert_to_tensor(w0, dtype), "float32")
        ),
        np.float64,
    )
    stored_g = np.asarray(
        keras.ops.convert_to_numpy(
            keras.ops.cast(keras.ops.convert_to_tensor(g0, dtype), "float32")
        ),
        np.float64,
    )
    expected, _ = reference.lars_step(
        stored_w, stored_g, 0.0, 1.0, momentum=0.0, trust_coefficient=0.01
    )
    assert np.all(np.isfinite(got))
    assert not np.allclose(got, stored_w)  # it moved
    np.testing.assert_allclose(got, expected, rtol=rtol)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("exclusion", ["default", "weight_decay_only", "none"])
def test_norm_of_sum_matches_optax_lars(nesterov, exclusion):
    """optax.lars (a JAX implementation, whatever the Keras backend) is the
    reference for the ‖g + βw‖ form; its own schedules build the warm-up."""
    optax = pytest.importorskip("optax")
    jnp = pytest.importorskip("jax.numpy")
    kwargs, _, decayed, adapted = EXCLUSIONS[exclusion]
    model = make_model()
    params = {
        p: jnp.asarray(keras.ops.convert_to_numpy(v))
        for p, v in zip(PATHS, model.trainable_variables)
    }
    gradients = random_gradients(model, STEPS)

    optimizer = keras_lars.LARS(
        schedule(), nesterov=nesterov, trust_ratio_denominator="norm_of_sum", **HYPER, **kwargs
    )
    apply_all(optimizer, model.trainable_variables, gradients)

    s = SCHEDULE
    optax_schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, s["peak"], s["warmup_steps"]),
            optax.polynomial_schedule(s["peak"], s["end"], 2, s["decay_steps"]),
        ],
        [s["warmup_steps"]],
    )
    reference_optimizer = optax.lars(
        optax_schedule,
        weight_decay=HYPER["weight_decay"],
        weight_decay_mask={p: p in decayed for p in PATHS},
        trust_coefficient=HYPER["trust_coefficient"],
        eps=HYPER["epsilon"],
        trust_ratio_mask={p: p in adapted for p in PATHS},
        momentum=HYPER["momentum"],
        nesterov=nesterov,
    )
    state = reference_optimizer.init(params)
    for step_gradients in gradients:
        grads = {p: jnp.asarray(g, "float32") for p, g in zip(PATHS, step_gradients)}
        updates, state = reference_optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)

    for path, variable in zip(PATHS, model.trainable_variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable),
            np.asarray(params[path]),
            rtol=2e-5,
            atol=2e-6,
            err_msg=path,
        )
