"""LARS on sharded variables: keras.distribution.ModelParallel on JAX.

The trust ratio needs the norm of the whole variable, not of the shard a
device holds. Under ModelParallel each kernel is one global jax.Array laid out
over the devices, and the update's reductions are over that global array
(GSPMD inserts the cross-device sums), so training must give the weights of
one device. Four host devices stand in for accelerators (tests/conftest.py).
"""

import keras
import numpy as np
import pytest

import keras_lars
import reference

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution's ModelParallel runs on JAX"
)

DEVICES = 4
# The Dense kernel (in, out) split over its outputs, the Conv kernel
# (height, width, in, out) over its input channels: two different axes.
KERNEL_SPECS = {
    "net/conv/kernel": (None, None, "model", None),
    "net/dense/kernel": (None, "model"),
}
PATHS = ("net/conv/kernel", "net/conv/bias", "net/dense/kernel", "net/dense/bias")
KERNELS = {"net/conv/kernel", "net/dense/kernel"}
HYPER = dict(momentum=0.9, weight_decay=0.01, trust_coefficient=0.02)
SCHEDULE = dict(peak=1.0, decay_steps=10, warmup_steps=3)
STEPS = 8


@pytest.fixture
def model_parallel():
    import jax

    if jax.device_count() < DEVICES:
        pytest.skip(f"needs {DEVICES} devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    mesh = keras.distribution.DeviceMesh(
        (1, DEVICES), ("batch", "model"), keras.distribution.list_devices()[:DEVICES]
    )
    layout_map = keras.distribution.LayoutMap(mesh)
    for path, spec in KERNEL_SPECS.items():
        layout_map[path] = spec
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 4)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, name="dense"),
        ],
        name="net",
    )
    rng = np.random.default_rng(0)
    for variable in model.trainable_variables:
        if variable.path.endswith("bias"):  # non-zero, so that the biases' updates show
            variable.assign(rng.normal(scale=0.1, size=variable.shape).astype("float32"))
    assert [v.path for v in model.trainable_variables] == list(PATHS)
    return model


def make_optimizer(**kwargs):
    schedule = keras_lars.PolynomialWarmup(
        SCHEDULE["peak"], SCHEDULE["decay_steps"], SCHEDULE["warmup_steps"]
    )
    return keras_lars.LARS(schedule, **HYPER, **kwargs)


def assert_sharded_as_specified(model, optimizer):
    """Each kernel split four ways as KERNEL_SPECS says, and its momentum
    split the same way (not gathered onto every device)."""
    from jax.sharding import PartitionSpec

    for variable, momentum in zip(model.trainable_variables, optimizer.momentums):
        sharding = variable.value.sharding
        if variable.path in KERNEL_SPECS:
            assert sharding.spec == PartitionSpec(*KERNEL_SPECS[variable.path]), variable.path
            shard_shape = sharding.shard_shape(variable.shape)
            assert np.prod(shard_shape) * DEVICES == np.prod(variable.shape), variable.path
        else:
            assert sharding.is_fully_replicated, variable.path
        assert momentum.value.sharding.is_equivalent_to(sharding, len(variable.shape)), (
            variable.path
        )


def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 6, 6, 4)).astype("float32")
    y = rng.normal(size=(32, 8)).astype("float32")
    return x, y


def fit(model, optimizer):
    model.compile(optimizer=optimizer, loss="mse")
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)  # 8 steps


@pytest.mark.parametrize("learning_rate_outside_momentum", [False, True])
def test_fit_on_sharded_kernels_gives_the_weights_of_one_device(
    model_parallel, learning_rate_outside_momentum
):
    """Tolerance: the sharded convolution and matrix product sum their
    partial products in another order, so the float32 weights differ in the
    last places (at most 3e-7 here, against the tolerance of 1e-6 + 1e-5·|w|)."""
    form = dict(learning_rate_outside_momentum=learning_rate_outside_momentum)
    with model_parallel.scope():
        sharded = make_model()
        sharded_optimizer = make_optimizer(**form)
        fit(sharded, sharded_optimizer)
        assert_sharded_as_specified(sharded, sharded_optimizer)
    single = make_model()
    fit(single, make_optimizer(**form))
    assert len(single.trainable_variables[0].value.sharding.device_set) == 1

    for path, got, want in zip(PATHS, sharded.get_weights(), single.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=path)
    initial = make_model().get_weights()
    for path, got, start in zip(PATHS, sharded.get_weights(), initial):
        assert np.linalg.norm(got - start) > 1e-3 * np.linalg.norm(start), f"{path} did not move"


@pytest.mark.parametrize("learning_rate_outside_momentum", [False, True])
def test_sharded_update_matches_numpy_reference(model_parallel, learning_rate_outside_momentum):
    """Fixed gradients, so that NumPy can follow: per-shard norms would give
    each shard its own λ and miss the reference by far more than float32."""
    form = dict(learning_rate_outside_momentum=learning_rate_outside_momentum)
    with model_parallel.scope():
        model = make_model()
        initial = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        rng = np.random.default_rng(2)
        gradients = [
            [rng.normal(scale=10.0 ** rng.uniform(-2, 1), size=v.shape) for v in initial]
            for _ in range(STEPS)
        ]
        optimizer = make_optimizer(**form)
        optimizer.build(model.trainable_variables)
        for step_gradients in gradients:
            optimizer.apply_gradients(
                zip(
                    [keras.ops.convert_to_tensor(g, "float32") for g in step_gradients],
                    model.trainable_variables,
                )
            )
        assert_sharded_as_specified(model, optimizer)

    expected_w, expected_v = reference.lars_run(
        initial,
        gradients,
        [reference.polynomial_warmup(t, **SCHEDULE) for t in range(STEPS)],
        decayed=[p in KERNELS for p in PATHS],
        adapted=[p in KERNELS for p in PATHS],
        **HYPER,
        **form,
    )
    for path, variable, want in zip(PATHS, model.trainable_variables, expected_w):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(variable), want, rtol=2e-5, atol=2e-6, err_msg=path
        )
    for path, momentum, want in zip(PATHS, optimizer.momentums, expected_v):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(momentum), want, rtol=2e-5, atol=2e-6, err_msg=path
        )
