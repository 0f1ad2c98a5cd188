"""Saving: .keras files, resumed training and tf.train.Checkpoint."""

import keras
import numpy as np
import pytest

import keras_lars
import training


def compiled_model():
    net = training.model()
    net.compile(optimizer=training.optimizer(), loss="mse")
    return net


def fit(net, epochs):
    x, y = training.data()
    net.fit(x, y, batch_size=training.BATCH, epochs=epochs, shuffle=False, verbose=0)


def optimizer_state(net):
    return [keras.ops.convert_to_numpy(v) for v in net.optimizer.variables]


def test_keras_file_restores_optimizer_state_and_schedule(tmp_path):
    net = compiled_model()
    fit(net, epochs=2)
    net.save(tmp_path / "model.keras")

    restored = keras.models.load_model(tmp_path / "model.keras")

    assert isinstance(restored.optimizer, keras_lars.LARS)
    assert isinstance(restored.optimizer._learning_rate, keras_lars.PolynomialWarmup)
    assert restored.optimizer.get_config() == net.optimizer.get_config()
    assert int(keras.ops.convert_to_numpy(restored.optimizer.iterations)) == 8
    assert any(np.any(s != 0) for s in optimizer_state(restored)[2:])
    for got, want in zip(optimizer_state(restored), optimizer_state(net)):
        np.testing.assert_array_equal(got, want)


def test_resumed_training_continues_exactly(tmp_path):
    uninterrupted = compiled_model()
    fit(uninterrupted, epochs=4)

    first_half = compiled_model()
    fit(first_half, epochs=2)
    first_half.save(tmp_path / "half.keras")
    resumed = keras.models.load_model(tmp_path / "half.keras")
    fit(resumed, epochs=2)

    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(optimizer_state(resumed), optimizer_state(uninterrupted)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    for got, want in zip(resumed.get_weights(), training.reference_training(4)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.train.Checkpoint is TensorFlow's"
)
def test_tf_train_checkpoint_round_trips_slots(tmp_path):
    import tensorflow as tf

    net = compiled_model()
    fit(net, epochs=1)
    path = tf.train.Checkpoint(model=net, optimizer=net.optimizer).save(str(tmp_path / "ckpt"))

    fresh = compiled_model()
    fresh.optimizer.build(fresh.trainable_variables)
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(path).assert_consumed()

    assert len(fresh.optimizer.momentums) == len(net.trainable_variables)
    for got, want in zip(optimizer_state(fresh), optimizer_state(net)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(fresh.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(got, want)


def model_with_norm(layers_in_front=()):
    return keras.Sequential(
        [keras.Input((training.IN,)), *layers_in_front]
        + [
            keras.layers.Dense(training.HIDDEN, name="hidden"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(training.OUT, name="out"),
        ],
        name="with_norm",
    )


def save_with_exclusions_by_object(path):
    """The README's rank rule by object, and a kernel left undecayed."""
    net = model_with_norm()
    optimizer = keras_lars.LARS(
        0.1, weight_decay_exclude_patterns=(), adaptation_exclude_patterns=()
    )
    optimizer.exclude_from_layer_adaptation(
        var_list=[v for v in net.trainable_variables if len(v.shape) <= 1]
    )
    optimizer.exclude_from_weight_decay(var_list=[net.get_layer("out").kernel])
    net.compile(optimizer=optimizer, loss="mse")
    x, y = training.data()
    net.fit(x, y, batch_size=training.BATCH, epochs=1, verbose=0)
    net.save(path)
    return net


def test_exclusions_by_object_survive_a_keras_file(tmp_path):
    """The same treatment per variable after `load_model`, whose paths lose
    the Sequential's name: the positions carry the exclusions, and their
    saved paths pass the check through that rename."""
    net = save_with_exclusions_by_object(tmp_path / "net.keras")
    before = net.optimizer.exclusions()
    assert net.optimizer.get_config()["weight_decay_exclude_index_paths"] == [
        "with_norm/out/kernel"
    ]

    restored = keras.models.load_model(tmp_path / "net.keras")
    after = restored.optimizer.exclusions()

    assert list(after.values()) == list(before.values())
    assert [t["adaptation"] for t in before.values()] == [True, False, False, False, True, False]
    assert [t["weight_decay"] for t in before.values()] == [True] * 4 + [False, True]
    config = restored.optimizer.get_config()
    assert config["weight_decay_exclude_index_paths"] == ["out/kernel"]
    assert config["adaptation_exclude_index_paths"] == [
        "hidden/bias",
        "norm/gamma",
        "norm/beta",
        "out/bias",
    ]
    x, y = training.data()
    restored.fit(x, y, batch_size=training.BATCH, epochs=1, verbose=0)  # and it trains on


def test_a_keras_files_optimizer_with_a_layer_in_front_is_refused(tmp_path):
    """Reused with one more layer in front, the saved position 4 (the output
    kernel, left undecayed) would be the normalisation's scale instead."""
    save_with_exclusions_by_object(tmp_path / "net.keras")
    config = keras.models.load_model(tmp_path / "net.keras").optimizer.get_config()
    net = model_with_norm([keras.layers.Dense(training.IN, name="stem")])
    net.compile(optimizer=keras_lars.LARS.from_config(config), loss="mse")
    with pytest.raises(
        ValueError, match="position 4: saved for 'out/kernel', now 'with_norm/norm/gamma'"
    ):
        net.optimizer.build(net.trainable_variables)
