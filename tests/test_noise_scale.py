"""The gradient noise scale: McCandlish et al.'s estimators against a problem
whose answer is known in closed form, a hand-computed case, the batches it
places, and the study's probe of a Keras model's gradient norms against
NumPy. On TensorFlow, the backend the study runs on."""

import math

import keras
import numpy as np
import pytest

from recipes.study import config as study_config
from recipes.study import noise_scale
from recipes.study import training

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the study runs on TensorFlow (make study)"
)


def test_a_hand_computed_case():
    # |G_1|² = 5 and |G_4|² = 2: |G|² = (4·2 − 5)/3 = 1, tr(Σ) = (5 − 2)/(1 − 1/4) = 4.
    e = noise_scale.estimate([5.0], [2.0], small_batch=1, big_batch=4)
    assert (e.gradient_sq, e.trace, e.simple) == pytest.approx((1.0, 4.0, 4.0))
    # Each batch size's squared norms are averaged before the ratio.
    averaged = noise_scale.estimate([4.0, 6.0], [1.0, 2.0, 3.0], small_batch=1, big_batch=4)
    assert (averaged.gradient_sq, averaged.trace) == pytest.approx((1.0, 4.0))


@pytest.mark.parametrize("gradient_sq,trace", [(1.0, 51.0), (0.01, 88.0), (3.0, 0.5)])
def test_exact_expectations_give_back_both_terms(gradient_sq, trace):
    """E|G_B|² = |G|² + tr(Σ)/B: put in the expectations, get the terms back."""
    small, big = 64, 4096
    e = noise_scale.estimate([gradient_sq + trace / small], [gradient_sq + trace / big], small, big)
    assert (e.gradient_sq, e.trace) == pytest.approx((gradient_sq, trace), rel=1e-9)
    assert e.simple == pytest.approx(trace / gradient_sq, rel=1e-9)


def linear_regression_gradients(rng, delta, sigma, trials, batch):
    """Gradients of ½(x·w − y)² at w = w* + δ, batch means, for y = x·w* + ε,
    x ~ N(0, I), ε ~ N(0, σ²): one row a batch."""
    x = rng.normal(size=(trials, batch, len(delta)))
    residual = x @ delta - rng.normal(scale=sigma, size=(trials, batch))
    return np.einsum("tbd,tb->td", x, residual) / batch


def test_the_estimators_are_unbiased_on_linear_regression():
    """One example's gradient x(x·δ − ε) has mean G = δ and covariance
    Σ = |δ|²I + δδᵀ + σ²I (Isserlis), so |G|² = |δ|² and
    tr(Σ) = (d + 1)|δ|² + dσ²: with d = 10, |δ| = 1, σ = 2, B_simple = 51.
    Averaged over 8,000 independent pairs of batches (8 and 128 examples)
    each estimate lands within 5% of its true value; its standard error there
    is about 1%. Taking |G_big|² for |G|², which leaves out the noise term
    tr(Σ)/B_big, is 40% off: the tolerance tells the two apart."""
    rng = np.random.default_rng(0)
    d, sigma, small, big = 10, 2.0, 8, 128
    delta = rng.normal(size=d)
    delta /= np.linalg.norm(delta)
    gradient_sq, trace = 1.0, (d + 1) + d * sigma**2
    small_sq, big_sq = [], []
    for _ in range(4):  # 4 x 2,000 pairs, to keep the arrays small
        small_sq += list((linear_regression_gradients(rng, delta, sigma, 2000, small) ** 2).sum(1))
        big_sq += list((linear_regression_gradients(rng, delta, sigma, 2000, big) ** 2).sum(1))
    e = noise_scale.estimate(small_sq, big_sq, small, big)
    assert e.gradient_sq == pytest.approx(gradient_sq, rel=0.05)
    assert e.trace == pytest.approx(trace, rel=0.05)
    assert e.simple == pytest.approx(trace / gradient_sq, rel=0.1)
    assert np.mean(big_sq) != pytest.approx(gradient_sq, rel=0.05)


def test_estimate_rejects_batch_sizes_out_of_order():
    with pytest.raises(ValueError, match="small_batch"):
        noise_scale.estimate([1.0], [1.0], small_batch=64, big_batch=64)


def test_a_gradient_lost_in_the_noise_gives_an_unbounded_noise_scale():
    # |G_small|² = 1, |G_big|² = 1/4 at batch 1 and 4: |G|² estimate 0.
    assert noise_scale.estimate([1.0], [0.25], 1, 4).simple == math.inf


def estimates_with(scales):
    """{epoch: B_simple} -> [(epoch, NoiseEstimate)] with |G|² = 1."""
    return [(epoch, noise_scale.NoiseEstimate(1.0, s, 64, 4096)) for epoch, s in scales.items()]


def test_by_epoch_groups_the_draws_and_over_training_takes_the_median():
    record = dict(
        small_batch=1,
        big_batch=4,
        steps_per_epoch=4,
        steps=[0, 0, 3, 4, 5, 8],
        small_sq_norms=[5.0, 5.0, 4.0, 6.0, 5.0, 5.0],
        big_sq_norms=[2.0, 2.0, 1.0, 3.0, 1.5, 1.5],
    )
    estimates = noise_scale.by_epoch(record)
    assert [epoch for epoch, _ in estimates] == [0, 1, 2]  # steps 0 | 1..4 | 5..8
    assert estimates[1][1] == noise_scale.estimate([4.0, 6.0], [1.0, 3.0], 1, 4)
    assert estimates[2][1].simple == pytest.approx(noise_scale.estimate([5.0], [1.5], 1, 4).simple)
    # The start (epoch 0) is left out; an unbounded epoch counts as the largest.
    assert noise_scale.over_training(estimates_with({0: 1.0, 1: 100.0, 2: 300.0})) == 200.0
    scales = {0: 1.0, 1: 100.0, 2: 300.0, 3: math.inf}
    assert noise_scale.over_training(estimates_with(scales)) == 300.0
    with pytest.raises(ValueError, match="after the first step"):
        noise_scale.over_training(estimates_with({0: 5.0}))


def test_batches_are_placed_at_multiples_of_the_rounded_noise_scale():
    assert noise_scale.place_batches(354.2, (1, 4, 16)) == {1: 352, 4: 1408, 16: 5632}
    assert noise_scale.place_batches(2248.0, (0.5, 1, 4)) == {0.5: 1120, 1: 2240, 4: 8960}
    for bad in (math.inf, math.nan, 0.0):
        with pytest.raises(ValueError, match="--batch_sizes"):
            noise_scale.place_batches(bad, (1,))


def test_the_placed_grid_leaves_out_what_cannot_run_and_says_why():
    config = study_config.StudyConfig(noise_multiples=(0.25, 1.0, 4.0, 16.0))
    grid = study_config.placed_grid(config, 354.0, train_examples=30000)
    assert grid.batch_sizes == (128, 352, 1408, 5632)
    assert grid.batch_at(4.0) == 1408 and grid.multiple(1408) == pytest.approx(3.98, abs=0.01)
    small = study_config.placed_grid(config, 354.0, train_examples=1000)
    assert small.batch_sizes == (128, 352)
    left_out = {k: why for k, batch, why in small.placed if batch is None}
    assert left_out == {
        0.25: "88 is not above the reference batch 128",
        4.0: "1408 is more than the 1000 training images",
        16.0: "5632 is more than the 1000 training images",
    }


# --- The probe of a Keras model -----------------------------------------------------


def softmax_regression(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="logits")])


def numpy_gradient(kernel, bias, x, y):
    """Mean cross-entropy's gradient of softmax regression: Xᵀ(p − onehot)/n."""
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return np.concatenate([(x.T @ p / len(y)).ravel(), p.mean(0)])


def test_the_probe_measures_the_gradient_norms_numpy_computes():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    model = softmax_regression(1)
    x = rng.normal(size=(6, 8, 3)).astype("float32")  # 6 small batches of 8 make one big
    y = rng.integers(0, 4, size=(6, 8)).astype("int32")
    small_sq, big_sq = training._squared_norms_function(model, tf)(x, y)

    kernel, bias = (v.numpy().astype("float64") for v in model.trainable_variables)
    gradients = [numpy_gradient(kernel, bias, x[i], y[i]) for i in range(6)]
    assert float(small_sq) == pytest.approx(np.mean([g @ g for g in gradients]), rel=1e-5)
    whole = numpy_gradient(kernel, bias, x.reshape(48, 3), y.reshape(48))
    assert float(big_sq) == pytest.approx(whole @ whole, rel=1e-5)  # the mean of the chunks'


def test_the_probe_leaves_the_run_as_it_was():
    """Its forward passes in training mode move batch norm's statistics; the
    probe puts them back, and moves no weight."""
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(4),
        ]
    )
    rng = np.random.default_rng(2)
    x = rng.normal(loc=3.0, size=(64, 3)).astype("float32")
    y = rng.integers(0, 4, size=64).astype("int32")
    before = [v.numpy().copy() for v in model.variables]

    training._squared_norms_function(model, tf)(x.reshape(4, 16, 3), y.reshape(4, 16))
    moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.variables)]
    assert any(moved), "the test needs a probe that moves the statistics"
    for variable, value in zip(model.variables, before):
        variable.assign(value)

    probe = training.NoiseScaleProbe(
        x, y, small_batch=16, big_batch=32, every_steps=1, probes=3, big_batches=2, seed=0
    )
    probe.set_model(model)
    probe.on_train_begin()
    for value, variable in zip(before, model.variables):
        np.testing.assert_array_equal(value, variable.numpy())
    record = probe.record()
    assert record["steps"] == [0] * 6 and len(record["big_sq_norms"]) == 6
    assert all(s > b > 0 for s, b in zip(record["small_sq_norms"], record["big_sq_norms"]))


def test_the_probe_names_noise_batch_sizes_that_do_not_fit():
    x, y = np.zeros((100, 3), "float32"), np.zeros(100, "int32")
    for small, big in ((64, 128), (48, 64)):
        with pytest.raises(ValueError, match="noise_batch_sizes"):
            training.NoiseScaleProbe(x, y, small, big, 1, 1, 1, seed=0)
