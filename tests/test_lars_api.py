"""LARS's interface: argument checks, exclusions, config and registration."""

import copy

import keras
import numpy as np
import pytest

import keras_lars


def dense_model():
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(2, name="dense"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(1, name="head"),
        ],
        name="net",
    )


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(weight_decay=float("nan")), "weight_decay"),
        (dict(epsilon=-1e-9), "epsilon"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(momentum="0.9"), "momentum"),
        (dict(trust_coefficient=0.0), "trust_coefficient"),
        (dict(trust_coefficient=-0.001), "trust_coefficient"),
        (dict(trust_ratio_denominator="paper"), "trust_ratio_denominator"),
        (dict(weight_decay_exclude_patterns=["bias("]), "weight_decay_exclude_patterns"),
        (dict(adaptation_exclude_patterns="bias"), "adaptation_exclude_patterns"),
        (dict(adaptation_exclude_patterns=[3]), "adaptation_exclude_patterns"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        keras_lars.LARS(**kwargs)


def test_trust_coefficient_message_states_the_open_interval():
    with pytest.raises(ValueError, match="must be > 0.0. Received: trust_coefficient=-0.001"):
        keras_lars.LARS(trust_coefficient=-0.001)


def test_integer_learning_rate_is_accepted():
    assert keras_lars.LARS(10).get_config()["learning_rate"] == 10.0


def test_default_exclusions_on_keras_layers():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.GroupNormalization(2),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
            keras.layers.LayerNormalization(),
        ]
    )
    optimizer = keras_lars.LARS()
    optimizer.build(model.trainable_variables)
    adapted = {model.trainable_variables[i].path for i in optimizer._adapted_indices}
    decayed = {model.trainable_variables[i].path for i in optimizer._decayed_indices}
    kernels = {v.path for v in model.trainable_variables if v.path.endswith("kernel")}
    assert len(kernels) == 2
    assert adapted == decayed == kernels


def test_exclusion_methods_are_kept_in_config():
    optimizer = keras_lars.LARS(weight_decay_exclude_patterns=(), adaptation_exclude_patterns=())
    optimizer.exclude_from_weight_decay(var_names=["norm/gamma", "a.b"])
    optimizer.exclude_from_layer_adaptation(var_names=["head"])
    config = optimizer.get_config()
    assert config["weight_decay_exclude_patterns"] == ["norm/gamma", r"a\.b"]
    assert config["adaptation_exclude_patterns"] == ["head"]
    restored = keras_lars.LARS.from_config(config)
    model = dense_model()
    restored.build(model.trainable_variables)
    paths = [v.path for v in model.trainable_variables]
    assert {paths[i] for i in restored._adapted_indices} == {
        "net/dense/kernel",
        "net/dense/bias",
        "net/norm/gamma",
        "net/norm/beta",
    }
    assert {paths[i] for i in restored._decayed_indices} == set(paths) - {"net/norm/gamma"}


def test_exclusion_by_variable_object():
    model = dense_model()
    optimizer = keras_lars.LARS(weight_decay_exclude_patterns=(), adaptation_exclude_patterns=())
    head_kernel = model.get_layer("head").kernel
    optimizer.exclude_from_layer_adaptation(var_list=[head_kernel])
    optimizer.build(model.trainable_variables)
    excluded = set(range(len(model.trainable_variables))) - optimizer._adapted_indices
    assert [model.trainable_variables[i].path for i in excluded] == ["net/head/kernel"]
    assert len(optimizer._decayed_indices) == len(model.trainable_variables)


def test_exclusions_cannot_change_after_build():
    model = dense_model()
    optimizer = keras_lars.LARS()
    optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="exclude_from_layer_adaptation"):
        optimizer.exclude_from_layer_adaptation(var_names=["head"])
    with pytest.raises(ValueError, match="exclude_from_weight_decay"):
        optimizer.exclude_from_weight_decay(var_names=["head"])


def test_excluded_variable_with_zero_gradient_does_not_move():
    # The base class's decoupled decay (w -= γ·β·w) must not run behind
    # the exclusion's back.
    bias = keras.Variable([1.0, -2.0], name="bias")
    kernel = keras.Variable([1.0, -2.0], name="kernel")
    optimizer = keras_lars.LARS(5.0, weight_decay=0.1)
    zero = keras.ops.zeros((2,))
    for _ in range(3):
        optimizer.apply_gradients([(zero, bias), (zero, kernel)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bias), [1.0, -2.0])
    assert np.all(np.abs(keras.ops.convert_to_numpy(kernel)) < [1.0, 2.0])


def test_config_round_trip_keeps_every_argument():
    arguments = dict(
        momentum=0.95,
        weight_decay=1e-4,
        trust_coefficient=0.02,
        epsilon=1e-9,
        nesterov=True,
        trust_ratio_denominator="norm_of_sum",
        larc_clip=True,
        track_trust_ratios=True,
        weight_decay_exclude_patterns=["bias$"],
        adaptation_exclude_patterns=["gamma"],
        global_clipnorm=1.0,
        gradient_accumulation_steps=4,
        name="my_lars",
    )
    schedule = keras_lars.PolynomialWarmup(7.0, 100, warmup_steps=5)
    config = keras_lars.LARS(learning_rate=schedule, **arguments).get_config()
    assert {k: config[k] for k in arguments} == arguments
    # Keras's from_config swaps the schedule's dict for the object in place.
    restored = keras_lars.LARS.from_config(copy.deepcopy(config))
    assert restored.get_config() == config
    assert isinstance(restored._learning_rate, keras_lars.PolynomialWarmup)


def test_found_by_registered_name():
    by_name = keras.optimizers.get("keras_lars>LARS")
    assert isinstance(by_name, keras_lars.LARS)
    from_dict = keras.optimizers.get(
        {"class_name": "keras_lars>LARS", "config": {"learning_rate": 3.0, "larc_clip": True}}
    )
    assert from_dict.larc_clip and from_dict.get_config()["learning_rate"] == 3.0
    optimizer = keras_lars.LARS(keras_lars.PolynomialWarmup(2.0, 10), momentum=0.8)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, keras_lars.LARS)
    assert restored.get_config() == optimizer.get_config()
