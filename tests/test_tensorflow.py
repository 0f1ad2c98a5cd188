"""TensorFlow-only behaviour: sparse gradients and tf.distribute strategies."""

import os
import sys

import keras
import numpy as np
import pytest

import commands
import keras_lars
import reference
import training
from cluster import reserved_ports

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.IndexedSlices and tf.distribute are TensorFlow features",
)
tf = pytest.importorskip("tensorflow")
# Each test's strategy input iterators are destroyed when it ends, while young
# (conftest.py): collected a few tests later, they held this file's process
# for minutes on busy cores.
COLLECT_AFTER_EACH_TEST = True

HERE = os.path.dirname(os.path.abspath(__file__))


def test_indexed_slices_with_repeated_indices_use_the_summed_gradient():
    rng = np.random.default_rng(0)
    table0 = rng.normal(size=(5, 3)).astype("float32")
    values = rng.normal(size=(4, 3)).astype("float32")
    indices = [1, 3, 1, 1]
    dense = np.zeros((5, 3))
    np.add.at(dense, indices, values)

    table = keras.Variable(table0, name="embeddings")
    optimizer = keras_lars.LARS(2.0, momentum=0.0, weight_decay=0.01)
    optimizer.apply_gradients(
        [(tf.IndexedSlices(values, tf.constant(indices), dense_shape=[5, 3]), table)]
    )

    expected, _ = reference.lars_step(table0, dense, 0.0, 2.0, momentum=0.0, weight_decay=0.01)
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5)


def test_embedding_model_trains():
    net = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(10, 3),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    net.compile(optimizer=keras_lars.LARS(0.1, trust_coefficient=0.01), loss="mse")
    x = np.random.default_rng(0).integers(0, 10, size=(32, 4))
    y = (x.mean(1, keepdims=True) / 10.0).astype("float32")
    history = net.fit(x, y, epochs=10, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]


def mirrored_strategy():
    """The process's one MirroredStrategy on conftest.py's four logical CPUs
    (see test_a_second_mirrored_strategy_works)."""
    from recipes.imagenet import strategies

    strategy = strategies.create("mirrored")
    assert strategy.num_replicas_in_sync == 4, "conftest.py sets up four logical CPUs"
    return strategy


def fit(strategy, jit_compile=False):
    x, y = training.data()
    with strategy.scope():
        net = training.model()
        net.compile(optimizer=training.optimizer(), loss="mse", jit_compile=jit_compile)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(training.BATCH)
    net.fit(dataset, epochs=3, shuffle=False, verbose=0)  # same order on both
    return net.get_weights()


def test_mirrored_strategy_matches_one_device():
    distributed = fit(mirrored_strategy())
    single = fit(tf.distribute.get_strategy())
    for got, want in zip(distributed, single):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for got, want in zip(distributed, training.reference_training(epochs=3)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# What each pinned Keras bug says when it strikes.
KERAS_19005 = "Trying to access resource"
KERAS_20585 = "Attempt to convert a value (PerReplica"


def fit_outcome(optimizer, jit_compile):
    """ "" if `fit` works under the four-replica MirroredStrategy, else the
    exception's type and message."""
    strategy = mirrored_strategy()
    with strategy.scope():
        net = training.model()
        net.compile(optimizer=optimizer(), loss="mse", jit_compile=jit_compile)
    try:
        net.fit(*training.data(), batch_size=training.BATCH, verbose=0)
    except Exception as error:  # noqa: BLE001 - compared below
        return f"{type(error).__name__}: {error}"
    return ""


def test_lars_under_xla_and_mirrored_strategy_fares_as_sgd():
    """Either both work, or both fail with keras #19005's error."""
    lars = fit_outcome(training.optimizer, True)
    sgd = fit_outcome(lambda: keras.optimizers.SGD(0.1), True)
    assert (lars == "") == (sgd == ""), (lars[-1000:], sgd[-1000:])
    for outcome in (lars, sgd):
        assert outcome == "" or KERAS_19005 in outcome, outcome[-2000:]


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="keras #19005: jit_compile=True fails under MirroredStrategy with several "
    "replicas, for every optimizer. When this passes, drop the limit from the README.",
)
def test_xla_with_multi_device_mirrored_strategy():
    outcome = fit_outcome(training.optimizer, jit_compile=True)
    if outcome and KERAS_19005 not in outcome:  # not the xfail's bug
        raise RuntimeError(f"fit failed, but not as keras #19005 does: {outcome[-2000:]}")
    assert outcome == ""


def run_workers(tmp_path, ports):
    """The workers of `ports` (none: one process on one device); their arrays."""
    script = os.path.join(HERE, "mwms_worker.py")
    env = commands.environment(KERAS_BACKEND="tensorflow")
    if ports:
        outputs = [tmp_path / f"w{i}.npz" for i in range(len(ports))]
        argv = [
            [sys.executable, script, "--output", output, "--ports", ",".join(map(str, ports))]
            + ["--task_index", str(i)]
            for i, output in enumerate(outputs)
        ]
    else:
        outputs = [tmp_path / "single.npz"]
        argv = [[sys.executable, script, "--output", outputs[0]]]
    logs = [output.with_suffix(".log") for output in outputs]
    for code, output in commands.run_all(argv, logs, [env] * len(argv)):
        assert code == 0, output[-3000:]
    return [np.load(output) for output in outputs]


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Two MultiWorkerMirroredStrategy workers on localhost (custom loop, then
    model.fit), and the same custom loop on one device."""
    tmp_path = tmp_path_factory.mktemp("mwms")
    with reserved_ports(2) as ports:
        cluster = run_workers(tmp_path, ports)
    return cluster, run_workers(tmp_path, None)[0]


def test_multi_worker_mirrored_strategy_matches_one_device(workers):
    """Two worker processes on localhost, custom training loop."""
    (first, second), single = workers
    expected = training.reference_training(epochs=3)
    for i in range(len(expected)):
        key = f"arr_{i}"
        np.testing.assert_allclose(first[key], single[key], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(second[key], first[key], rtol=0, atol=0)
        np.testing.assert_allclose(single[key], expected[i], rtol=1e-5, atol=1e-6)


def test_fit_under_multi_worker_fares_as_with_sgd(workers):
    """Either both work, or both fail with keras #20585's error."""
    (first, second), _ = workers
    for worker in (first, second):
        lars, sgd = str(worker["fit_error_lars"]), str(worker["fit_error_sgd"])
        assert (lars == "") == (sgd == ""), (lars, sgd)
        for error in (lars, sgd):
            assert error == "" or KERAS_20585 in error, error[-2000:]


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="keras #20585: model.fit under MultiWorkerMirroredStrategy fails with any "
    "optimizer. When this passes, update the README.",
)
def test_fit_under_multi_worker_mirrored_strategy(workers):
    (first, _), _ = workers
    error = str(first["fit_error_lars"])
    if error and KERAS_20585 not in error:  # not the xfail's bug
        raise RuntimeError(f"fit failed, but not as keras #20585 does: {error[-2000:]}")
    assert error == ""


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Keras 3.15 creates BatchNormalization's moving statistics with aggregation "
    "'none' (Keras 2 used 'mean'; no upstream issue found): replicas drift apart. "
    "recipes/imagenet/train_loop.py averages them; when this passes, drop that.",
)
def test_batch_norm_statistics_agree_across_replicas():
    strategy = mirrored_strategy()
    with strategy.scope():
        norm = keras.layers.BatchNormalization(momentum=0.5)
        norm.build((None, 3))
    batches = tf.data.Dataset.range(4).map(lambda i: tf.fill([1, 3], tf.cast(i, tf.float32)))
    inputs = next(iter(strategy.experimental_distribute_dataset(batches.unbatch().batch(4))))
    strategy.run(tf.function(lambda x: norm(x, training=True)), args=(inputs,))
    copies = [v.numpy() for v in strategy.experimental_local_results(norm.moving_mean.value)]
    assert len({tuple(c) for c in copies}) == 1, copies


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="tf.train.Checkpoint(model=...) does not reach Keras 3.15's SeedGenerator "
    "state (Dropout's), so a resumed run draws other masks (keras #19796 is the same "
    "gap in .keras files). recipes/imagenet/tf_runner.py adds the states by hand; when "
    "this passes, drop that.",
)
def test_checkpoint_keeps_dropout_random_state(tmp_path):
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    (state,) = net.non_trainable_variables
    if not state.path.endswith("seed_generator_state"):  # the xfail would hide an assert
        raise RuntimeError(f"Dropout's state is no longer a seed generator: {state.path}")
    path = tf.train.Checkpoint(model=net).save(str(tmp_path / "ckpt"))
    saved = [name for name, _ in tf.train.list_variables(path)]
    assert any("seed" in name for name in saved), saved


SECOND_STRATEGY = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
devices = [d.name for d in tf.config.list_logical_devices("CPU")]

def all_reduce(strategy, n):
    @tf.function
    def run():
        return strategy.run(
            lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.ones([n]))
        )
    return run()

all_reduce(tf.distribute.MirroredStrategy(devices), 3)
try:
    all_reduce(tf.distribute.MirroredStrategy(devices), 5)
except tf.errors.InvalidArgumentError as error:
    print("FAILED:", "Shape mismatch in the collective instance" in error.message)
"""


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="tensorflow #62790: a second MirroredStrategy over the same devices in one "
    "process reuses the first one's collective keys and its all-reduces fail. "
    "recipes/imagenet/strategies.py keeps one per process; when this passes, drop that.",
)
def test_a_second_mirrored_strategy_works(tmp_path):
    code, output = commands.run([sys.executable, "-c", SECOND_STRATEGY], tmp_path / "out.log")
    if code != 0 or "FAILED: False" in output:  # not the xfail's bug
        raise RuntimeError(f"not tensorflow #62790's failure: {output}")
    assert "FAILED: True" not in output, output
