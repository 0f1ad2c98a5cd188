"""TensorFlow-only behaviour: sparse gradients and tf.distribute strategies."""

import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_lars
import reference
import training

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.IndexedSlices and tf.distribute are TensorFlow features",
)
tf = pytest.importorskip("tensorflow")

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
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 4, "conftest.py sets up four logical CPUs"
    return tf.distribute.MirroredStrategy(devices)


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


def test_xla_with_multi_device_mirrored_strategy_is_a_keras_limit():
    """keras #19005: jit_compile=True fails under MirroredStrategy with more
    than one device, for every Keras optimizer. When this starts passing,
    drop the limit from the README."""
    with pytest.raises(tf.errors.InvalidArgumentError):
        fit(mirrored_strategy(), jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError):
        strategy = mirrored_strategy()
        with strategy.scope():
            net = training.model()
            net.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
        net.fit(*training.data(), batch_size=training.BATCH, verbose=0)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path, ports):
    root = os.path.dirname(HERE)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": path,
    }
    script = os.path.join(HERE, "mwms_worker.py")
    if ports:
        commands = [
            [
                sys.executable,
                script,
                "--output",
                str(tmp_path / f"w{i}.npz"),
                "--ports",
                ",".join(map(str, ports)),
                "--task_index",
                str(i),
            ]
            for i in range(len(ports))
        ]
    else:
        commands = [[sys.executable, script, "--output", str(tmp_path / "single.npz")]]
    processes = [
        subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
    return [np.load(c[3]) for c in commands]


def test_multi_worker_mirrored_strategy_matches_one_device(tmp_path):
    """Two worker processes on localhost, custom training loop."""
    workers = run_workers(tmp_path, free_ports(2))
    (single,) = run_workers(tmp_path, None)
    expected = training.reference_training(epochs=3)
    for i in range(len(expected)):
        key = f"arr_{i}"
        np.testing.assert_allclose(workers[0][key], single[key], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(workers[1][key], workers[0][key], rtol=0, atol=0)
        np.testing.assert_allclose(single[key], expected[i], rtol=1e-5, atol=1e-6)
    # keras #20585: model.fit under MultiWorkerMirroredStrategy fails with any
    # optimizer. When this starts passing, update the README.
    for worker in workers:
        assert str(worker["fit_error"]).startswith("ValueError"), worker["fit_error"]
