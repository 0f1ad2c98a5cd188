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


FORMS = {"rate_inside": False, "rate_outside": True}  # learning_rate_outside_momentum


@pytest.mark.parametrize(
    "form,denominator,larc_clip,nesterov,exclusion",
    list(
        itertools.product(
            FORMS, ["sum_of_norms", "norm_of_sum"], [False, True], [False, True], EXCLUSIONS
        )
    ),
)
def test_matches_reference_over_many_steps(form, denominator, larc_clip, nesterov, exclusion):
    """Through the warm-up from γ = 0 and the decay: γ changes every step."""
    kwargs, set_up, decayed, adapted = EXCLUSIONS[exclusion]
    model = make_model()
    optimizer = keras_lars.LARS(
        schedule(),
        nesterov=nesterov,
        trust_ratio_denominator=denominator,
        larc_clip=larc_clip,
        learning_rate_outside_momentum=FORMS[form],
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
        learning_rate_outside_momentum=FORMS[form],
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


@pytest.mark.parametrize("form", FORMS)
def test_without_momentum_matches_reference_and_keeps_no_slots(form):
    """Without momentum both forms are the same rule: w = w − (local rate)·g̃."""
    model = make_model()
    optimizer = keras_lars.LARS(
        schedule(), learning_rate_outside_momentum=FORMS[form], **{**HYPER, "momentum": 0.0}
    )
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
        # A constant γ: the rate outside the buffer changes nothing.
        ({"learning_rate_outside_momentum": True}, [3 - 2.2 / 30, 4 + 0.4 / 30]),
        (
            {"learning_rate_outside_momentum": True, "larc_clip": True},
            [3 - 1.1 / 30, 4 + 0.2 / 30],
        ),
        (
            {"learning_rate_outside_momentum": True, "nesterov": True},
            [3 - 1.9 * 2.2 / 30, 4 + 1.9 * 0.4 / 30],
        ),
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


# Hand-computed, two steps of the paper form with momentum and decay:
# w0 = [3, 4], g1 = [0.8, -0.6], g2 = [0.6, 0.8] (both of norm 1), β = 0.1,
# η = 0.01, γ = 2, m = 0.9.
# Step 1: λ1 = 0.01·5 / (1 + 0.1·5) = 1/30; g̃1 = g1 + 0.1·w0 = [1.1, -0.2];
#   v1 = 2/30·[1.1, -0.2] = [11/150, -2/150]; w1 = w0 − v1 = [439/150, 602/150].
# Step 2: ‖w1‖ = √(439² + 602²)/150; λ2 = 0.01·‖w1‖ / (1 + 0.1·‖w1‖);
#   g̃2 = g2 + 0.1·w1 = [0.6 + 43.9/150, 0.8 + 60.2/150];
#   v2 = 0.9·v1 + 2·λ2·g̃2; w2 = w1 − v2.
W1_NORM = (439**2 + 602**2) ** 0.5 / 150
LAMBDA2 = 0.01 * W1_NORM / (1 + 0.1 * W1_NORM)
V1 = (11 / 150, -2 / 150)
V2 = (
    0.9 * V1[0] + 2 * LAMBDA2 * (0.6 + 43.9 / 150),
    0.9 * V1[1] + 2 * LAMBDA2 * (0.8 + 60.2 / 150),
)
TWO_STEPS = [(1, (439 / 150, 602 / 150), V1), (2, (439 / 150 - V2[0], 602 / 150 - V2[1]), V2)]


@pytest.mark.parametrize("steps,weights,velocity", TWO_STEPS)
def test_two_steps_with_momentum_by_hand(steps, weights, velocity):
    variable = keras.Variable([3.0, 4.0], name="kernel")
    optimizer = keras_lars.LARS(2.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01)
    for gradient in ([0.8, -0.6], [0.6, 0.8])[:steps]:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), weights, rtol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(optimizer.momentums[0]), velocity, rtol=1e-5
    )


# Hand-computed, both forms over two steps whose rate doubles: γ = 1, then 2
# (PolynomialWarmup from 1.0 to its peak 2.0 in one step); w0, g1, g2, β, η
# and m as above. Step 1 is the same in both forms: v1 = u1 = [1.1, -0.2]/30.
# Step 2 starts from the same w1, so λ2 and g̃2 are the same in both:
#   paper:        w2 = w1 − (0.9·v1 + 2·λ2·g̃2)
#   rate outside: w2 = w1 − 2·(0.9·u1 + λ2·g̃2)
# so the rate-outside form moves 0.9·v1 further: its carried momentum moves
# at the new rate.
def test_rate_outside_momentum_moves_the_carried_momentum_at_the_new_rate_by_hand():
    def two_steps(outside):
        variable = keras.Variable([3.0, 4.0], name="kernel")
        rate = keras_lars.PolynomialWarmup(
            2.0, decay_steps=10, warmup_steps=1, warmup_start_learning_rate=1.0
        )
        optimizer = keras_lars.LARS(
            rate,
            momentum=0.9,
            weight_decay=0.1,
            trust_coefficient=0.01,
            learning_rate_outside_momentum=outside,
        )
        for gradient in ([0.8, -0.6], [0.6, 0.8]):
            optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
        return keras.ops.convert_to_numpy(variable).astype(np.float64)

    np.testing.assert_allclose(
        two_steps(True) - two_steps(False), [-0.9 * 1.1 / 30, 0.9 * 0.2 / 30], rtol=0, atol=2e-6
    )


@pytest.mark.parametrize("larc_clip,buffer", [(False, [1.1 / 30, -0.2 / 30]), (True, [1.1, -0.2])])
def test_rate_outside_momentum_at_a_zero_rate_fills_the_buffer_and_holds_the_weights(
    larc_clip, buffer
):
    """w = [3, 4], g = [0.8, -0.6], β = 0.1, η = 0.01: λ = 1/30, g̃ = [1.1, -0.2].
    At γ = 0 (a warm-up's first step) the buffer takes λ·g̃; with LARC's clip
    min(λ/γ, 1)·g̃ = g̃, the limit as γ → 0 (not 0/0); w moves by γ·u = 0."""
    variable = keras.Variable([3.0, 4.0], name="kernel")
    optimizer = keras_lars.LARS(
        0.0,
        momentum=0.9,
        weight_decay=0.1,
        trust_coefficient=0.01,
        larc_clip=larc_clip,
        learning_rate_outside_momentum=True,
    )
    optimizer.apply_gradients([(keras.ops.convert_to_tensor([0.8, -0.6]), variable)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), [3.0, 4.0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(optimizer.momentums[0]), buffer, rtol=1e-6
    )


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("larc_clip", [False, True])
def test_rate_outside_momentum_is_the_paper_form_with_momentum_correction(larc_clip, nesterov):
    """The paper's form whose buffer is rescaled by γ_t/γ_{t−1} before each
    step (Goyal et al. 2017; NVIDIA's MLPerf LARS) gives the same weights, and
    its buffer is γ·u, for a schedule that never reaches 0 (where the rescale
    would divide by zero)."""
    rates = dict(SCHEDULE, warmup_start=0.1)
    model = make_model()
    initial = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    gradients = random_gradients(model, STEPS)
    optimizer = keras_lars.LARS(
        keras_lars.PolynomialWarmup(
            rates["peak"],
            rates["decay_steps"],
            rates["warmup_steps"],
            end_learning_rate=rates["end"],
            warmup_start_learning_rate=rates["warmup_start"],
        ),
        larc_clip=larc_clip,
        nesterov=nesterov,
        learning_rate_outside_momentum=True,
        **HYPER,
    )
    apply_all(optimizer, model.trainable_variables, gradients)

    learning_rates = [reference.polynomial_warmup(t, **rates) for t in range(STEPS)]
    expected_w, expected_v = reference.momentum_corrected_lars_run(
        initial,
        gradients,
        learning_rates,
        decayed=[p in KERNELS for p in PATHS],
        adapted=[p in KERNELS for p in PATHS],
        larc_clip=larc_clip,
        nesterov=nesterov,
        **HYPER,
    )
    for path, variable, want in zip(PATHS, model.trainable_variables, expected_w):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable), want, rtol=2e-5, atol=2e-6, err_msg=path
        )
    for path, velocity, want in zip(PATHS, optimizer.momentums, expected_v):
        np.testing.assert_allclose(
            learning_rates[-1] * keras.ops.convert_to_numpy(velocity),
            want,
            rtol=2e-5,
            atol=2e-6,
            err_msg=path,
        )


def test_the_forms_agree_for_a_constant_rate_and_differ_through_a_warm_up():
    def run(learning_rate, outside):
        model = make_model()
        optimizer = keras_lars.LARS(
            learning_rate, learning_rate_outside_momentum=outside, nesterov=True, **HYPER
        )
        apply_all(optimizer, model.trainable_variables, random_gradients(model, STEPS))
        weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        return weights, [keras.ops.convert_to_numpy(v) for v in optimizer.momentums]

    inside_w, inside_v = run(2.0, False)
    outside_w, outside_u = run(2.0, True)
    for path, a, b, v, u in zip(PATHS, inside_w, outside_w, inside_v, outside_u):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=path)
        np.testing.assert_allclose(2.0 * u, v, rtol=1e-5, atol=1e-6, err_msg=path)

    inside_w, _ = run(schedule(), False)
    outside_w, _ = run(schedule(), True)
    initial = [keras.ops.convert_to_numpy(v) for v in make_model().trainable_variables]
    for path, a, b, w0 in zip(PATHS, inside_w, outside_w, initial):
        # The moves differ by more than a tenth, in every variable.
        assert np.linalg.norm(b - a) > 0.1 * np.linalg.norm(a - w0), path


MANTISSA_BITS = {"float16": 10, "bfloat16": 7}


def as_float64(values, dtype):
    """`values` rounded to `dtype` by the backend, back in float64."""
    tensor = keras.ops.cast(keras.ops.convert_to_tensor(values, "float32"), dtype)
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(tensor, "float32")), np.float64)


def spacing(values, dtype):
    """The gap between neighbouring `dtype` numbers at each of `values`."""
    exponent = np.floor(np.log2(np.abs(values)))
    return 2.0 ** (exponent - MANTISSA_BITS[dtype])


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_low_precision_updates_are_exact_to_a_unit_in_the_last_place(dtype, momentum, form):
    """‖w‖² = 100·300² = 9e6 overflows float16 (max 65504), so the norms must
    be float32. The update w − w0 (about 60, 30 units in the last place for
    bfloat16) must match the reference to one unit: a 2× error in λ cannot
    pass."""
    rng = np.random.default_rng(0)
    w0 = as_float64(300.0 * np.sign(rng.normal(size=100)), dtype)
    g0 = as_float64(rng.normal(scale=200.0, size=100), dtype)
    variable = keras.Variable(w0, dtype=dtype, name="kernel")
    optimizer = keras_lars.LARS(
        20.0,
        momentum=momentum,
        weight_decay=0.0,
        trust_coefficient=0.01,
        learning_rate_outside_momentum=FORMS[form],
    )
    optimizer.apply_gradients([(keras.ops.convert_to_tensor(g0, dtype), variable)])
    got = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32")), np.float64)
    expected, _ = reference.lars_step(
        w0,
        g0,
        0.0,
        20.0,
        momentum=momentum,
        trust_coefficient=0.01,
        learning_rate_outside_momentum=FORMS[form],
    )
    update = got - w0
    assert np.median(np.abs(expected - w0) / spacing(expected, dtype)) > 10  # a real move
    np.testing.assert_array_less(np.abs(update - (expected - w0)), spacing(expected, dtype))


def test_float16_step_smaller_than_float16_can_hold_is_not_lost():
    """γ·λ = 1·(0.001·0.02 / 2000) = 1e-8 is below float16's smallest
    subnormal (6e-8), but the step γ·λ·g = 1e-5 is about one unit in the last
    place of w = 0.01: formed in float32 it moves w, cast to float16 first it
    would vanish."""
    w0 = np.full(4, 0.01)
    g0 = np.full(4, 1000.0)
    variable = keras.Variable(w0, dtype="float16", name="kernel")
    optimizer = keras_lars.LARS(1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001)
    optimizer.apply_gradients([(keras.ops.convert_to_tensor(g0, "float16"), variable)])
    stored_w0 = as_float64(w0, "float16")
    expected, _ = reference.lars_step(
        stored_w0, as_float64(g0, "float16"), 0.0, 1.0, momentum=0.0, trust_coefficient=0.001
    )
    got = as_float64(keras.ops.convert_to_numpy(variable), "float16")
    assert np.all(got < stored_w0)
    np.testing.assert_array_equal(got, as_float64(expected, "float16"))


@pytest.mark.parametrize("form", FORMS)
def test_float64_variables_are_updated_in_float64(form):
    """Through a warm-up (rates 0, 0.5, 1, 1.5: exact in the schedule's
    float32), so that the two forms differ."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7, 5))
    g0 = rng.normal(scale=1e-3, size=(7, 5))
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX stores float64 as float32 unless jax_enable_x64 is set")
    variable = keras.Variable(w0, dtype="float64", name="kernel")
    optimizer = keras_lars.LARS(
        keras_lars.PolynomialWarmup(2.0, decay_steps=10, warmup_steps=4),
        momentum=0.9,
        weight_decay=0.01,
        trust_coefficient=0.02,
        learning_rate_outside_momentum=FORMS[form],
    )
    for _ in range(4):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g0, "float64"), variable)])
    expected, _ = reference.lars_run(
        [w0],
        [[g0]] * 4,
        [0.0, 0.5, 1.0, 1.5],
        [True],
        [True],
        momentum=0.9,
        weight_decay=0.01,
        trust_coefficient=0.02,
        learning_rate_outside_momentum=FORMS[form],
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected[0], rtol=1e-13)


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


# --- Every variant through every update path ---------------------------------
#
# One variable, three updates at rates that change (so that the two forms of
# the momentum buffer differ), with λ near 1 so that LARC's clip binds at the
# first rate and not at the second. Each (variant, path) is one test.

TABLE_RATES = (0.5, 2.0, 1.0)
TABLE_HYPER = dict(weight_decay=0.01, trust_coefficient=0.1)


class TableRate(keras.optimizers.schedules.LearningRateSchedule):
    """γ of each update, from TABLE_RATES."""

    def __call__(self, step):
        rates = keras.ops.convert_to_tensor(TABLE_RATES, "float32")
        return keras.ops.take(rates, keras.ops.minimum(step, len(TABLE_RATES) - 1))

    def get_config(self):
        return {}


MOMENTUM_FORMS = {
    "sgd": dict(momentum=0.0),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "momentum_rate_outside": dict(momentum=0.9, learning_rate_outside_momentum=True),
    "nesterov_rate_outside": dict(momentum=0.9, nesterov=True, learning_rate_outside_momentum=True),
}
# Rate forms: excluded from adaptation (where the rest cannot matter), or
# adapted with each denominator, LARC's clip on and off, ε 0 and > 0.
RATE_FORMS = {"not_adapted": (False, {})}
for _denominator, _clip, _epsilon in itertools.product(
    ["sum_of_norms", "norm_of_sum"], [False, True], [0.0, 1e-3]
):
    RATE_FORMS[f"{_denominator}{'_larc' if _clip else ''}_eps{_epsilon:g}"] = (
        True,
        dict(trust_ratio_denominator=_denominator, larc_clip=_clip, epsilon=_epsilon),
    )
INPUTS = ("random", "zero_weights", "zero_gradients")

VARIANTS = {
    f"{momentum}-{'decayed' if decayed else 'not_decayed'}-{rate}-{inputs}": (
        {**MOMENTUM_FORMS[momentum], **RATE_FORMS[rate][1]},
        decayed,
        RATE_FORMS[rate][0],
        inputs,
    )
    for momentum, decayed, rate, inputs in itertools.product(
        MOMENTUM_FORMS, [True, False], RATE_FORMS, INPUTS
    )
}

# The update paths of each backend: LARS.update_step in keras.ops
# ("generic"), and where the backend has one, its fused path, which each
# backend takes for float32 variables.
UPDATE_PATHS = {
    "tensorflow": ("generic", "tensorflow_kernel"),
    "jax": ("generic",),
    "torch": ("generic", "torch_multi_tensor"),
}[keras.backend.backend()]


def force_update_path(path, monkeypatch):
    """Makes float32 variables take `path`; returns the calls of each fused
    path, counted, so that the test can check which one ran."""
    calls = {"tensorflow_kernel": 0, "torch_multi_tensor": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    lars_module = keras_lars.lars
    monkeypatch.setattr(
        keras_lars.LARS,
        "_tensorflow_update_step",
        counted("tensorflow_kernel", keras_lars.LARS._tensorflow_update_step),
    )
    if path == "generic":
        monkeypatch.setattr(lars_module, "TENSORFLOW_KERNEL_DTYPES", ())
    if keras.backend.backend() == "torch":
        from keras_lars import _torch_lars

        monkeypatch.setattr(
            _torch_lars, "update_all", counted("torch_multi_tensor", _torch_lars.update_all)
        )
        if path == "generic":
            monkeypatch.setattr(_torch_lars, "MULTI_TENSOR_DTYPES", ())
    return calls


@pytest.mark.parametrize("path", UPDATE_PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_on_every_update_path(variant, path, monkeypatch):
    options, decayed, adapted, inputs = VARIANTS[variant]
    calls = force_update_path(path, monkeypatch)
    rng = np.random.default_rng(0)
    w0 = np.zeros((4, 3)) if inputs == "zero_weights" else rng.normal(size=(4, 3))
    w0 = w0.astype("float32").astype(np.float64)
    gradients = [
        np.zeros((4, 3)) if inputs == "zero_gradients" else rng.normal(scale=0.1, size=(4, 3))
        for _ in TABLE_RATES
    ]
    gradients = [g.astype("float32").astype(np.float64) for g in gradients]
    variable = keras.Variable(w0, dtype="float32", name="kernel")
    optimizer = keras_lars.LARS(
        TableRate(),
        weight_decay_exclude_patterns=() if decayed else ("kernel",),
        adaptation_exclude_patterns=() if adapted else ("kernel",),
        track_trust_ratios=True,
        **TABLE_HYPER,
        **options,
    )
    for gradient in gradients:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient, "float32"), variable)])

    assert calls == {name: len(TABLE_RATES) if name == path else 0 for name in calls}, (
        f"the update did not take the {path} path"
    )
    reference_options = dict(options, decayed=decayed, adapted=adapted, **TABLE_HYPER)
    reference_options["denominator"] = reference_options.pop(
        "trust_ratio_denominator", "sum_of_norms"
    )
    (expected_w,), (expected_v,) = reference.lars_run(
        [w0], [[g] for g in gradients], TABLE_RATES, **_run_options(reference_options)
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(variable), expected_w, rtol=2e-5, atol=2e-6
    )
    if options["momentum"] > 0:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(optimizer.momentums[0]), expected_v, rtol=2e-5, atol=2e-6
        )
    else:
        assert optimizer.momentums == []
    (before_last,), _ = reference.lars_run(
        [w0], [[g] for g in gradients[:-1]], TABLE_RATES[:-1], **_run_options(reference_options)
    )
    expected_ratio = adapted and reference.trust_ratio(
        before_last,
        gradients[-1],
        TABLE_HYPER["weight_decay"] if decayed else 0.0,
        TABLE_HYPER["trust_coefficient"],
        reference_options.get("epsilon", 0.0),
        reference_options["denominator"],
    )
    got_ratio = optimizer.trust_ratios()["kernel"]
    assert got_ratio == pytest.approx(expected_ratio or 1.0, rel=1e-5)


def _run_options(options):
    """`reference.lars_run`'s keyword arguments: decayed and adapted as lists."""
    options = dict(options)
    return dict(options, decayed=[options.pop("decayed")], adapted=[options.pop("adapted")])
