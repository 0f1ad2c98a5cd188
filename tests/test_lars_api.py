"""LARS's interface: argument checks, exclusions, config and registration."""

import contextlib
import copy
import inspect

import keras
import numpy as np
import pytest

import keras_lars
from keras_lars import _keras_internals


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
        (dict(weight_decay_exclude_max_rank=-1), "weight_decay_exclude_max_rank"),
        (dict(adaptation_exclude_max_rank=1.5), "adaptation_exclude_max_rank"),
        (dict(adaptation_exclude_indices=[-1]), "adaptation_exclude_indices"),
        (dict(nesterov=True, momentum=0.0), "nesterov"),
        (dict(learning_rate=float("inf")), "learning_rate"),
        (dict(weight_decay=float("inf")), "weight_decay"),
        (dict(epsilon=float("inf")), "epsilon"),
        (dict(trust_coefficient=float("inf")), "trust_coefficient"),
        (dict(nesterov="False"), "nesterov"),
        (dict(larc_clip=1), "larc_clip"),
        (dict(track_trust_ratios=None), "track_trust_ratios"),
        (dict(learning_rate_outside_momentum="True"), "learning_rate_outside_momentum"),
        (
            dict(weight_decay_exclude_indices=[1, 2], weight_decay_exclude_index_paths=["a"]),
            "weight_decay_exclude_index_paths",
        ),
        (dict(adaptation_exclude_index_paths="dense/kernel"), "adaptation_exclude_index_paths"),
        (dict(weight_decay_exclude_indices=[1]), "weight_decay_exclude_index_paths"),
        (
            dict(adaptation_exclude_indices=[0], adaptation_exclude_index_paths=[0]),
            "adaptation_exclude_index_paths",
        ),
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
    table = optimizer.exclusions()
    adapted = {path for path, t in table.items() if t["adaptation"]}
    decayed = {path for path, t in table.items() if t["weight_decay"]}
    kernels = {v.path for v in model.trainable_variables if v.path.endswith("kernel")}
    assert len(kernels) == 2
    assert adapted == decayed == kernels


def test_exclusion_methods_take_regular_expressions_and_keep_them_in_config():
    """`var_names` are regular expressions searched in `path`, as Keras's base
    optimizer searches them in `name`."""
    optimizer = keras_lars.LARS(weight_decay_exclude_patterns=(), adaptation_exclude_patterns=())
    optimizer.exclude_from_weight_decay(var_names=["norm/gam+a", r"n.t/dense/b"])
    optimizer.exclude_from_layer_adaptation(var_names=["head"])
    config = optimizer.get_config()
    assert config["weight_decay_exclude_patterns"] == ["norm/gam+a", r"n.t/dense/b"]
    assert config["adaptation_exclude_patterns"] == ["head"]
    restored = keras_lars.LARS.from_config(config)
    model = dense_model()
    restored.build(model.trainable_variables)
    assert restored.exclusions() == {
        "net/dense/kernel": {"weight_decay": True, "adaptation": True},
        "net/dense/bias": {"weight_decay": False, "adaptation": True},
        "net/norm/gamma": {"weight_decay": False, "adaptation": True},
        "net/norm/beta": {"weight_decay": True, "adaptation": True},
        "net/head/kernel": {"weight_decay": True, "adaptation": False},
        "net/head/bias": {"weight_decay": True, "adaptation": False},
    }


def test_exclusions_need_a_built_optimizer():
    with pytest.raises(ValueError, match="built"):
        keras_lars.LARS().exclusions()


def test_weight_decay_none_means_no_decay():
    """Keras's optimizers take `weight_decay=None` for "off"."""
    optimizer = keras_lars.LARS(weight_decay=None)
    assert optimizer.get_config()["weight_decay"] == 0.0
    model = dense_model()
    optimizer.build(model.trainable_variables)
    assert not any(t["weight_decay"] for t in optimizer.exclusions().values())


NORMALIZATION_LAYERS = {
    "BatchNormalization": lambda: keras.layers.BatchNormalization(),
    "GroupNormalization": lambda: keras.layers.GroupNormalization(groups=2),
    "LayerNormalization": lambda: keras.layers.LayerNormalization(),
    "Normalization": lambda: keras.layers.Normalization(),
    "RMSNormalization": lambda: keras.layers.RMSNormalization(),
    "SpectralNormalization": lambda: keras.layers.SpectralNormalization(keras.layers.Dense(3)),
    "UnitNormalization": lambda: keras.layers.UnitNormalization(),
}


def test_every_keras_normalization_layer_is_known_here():
    shipped = {name for name in dir(keras.layers) if name.endswith("Normalization")}
    assert shipped == set(NORMALIZATION_LAYERS), "a new Keras normalisation layer: add it above"


@pytest.mark.parametrize("name", sorted(NORMALIZATION_LAYERS))
def test_default_exclusions_cover_every_keras_normalization_layer(name):
    """A normalisation layer's own trainable variables are neither decayed nor
    adapted; the layer SpectralNormalization wraps keeps its kernel adapted."""
    layer = NORMALIZATION_LAYERS[name]()
    layer.build((2, 4))
    optimizer = keras_lars.LARS()
    optimizer.build(layer.trainable_variables)
    for variable, treatment in zip(layer.trainable_variables, optimizer.exclusions().values()):
        wrapped_kernel = name == "SpectralNormalization" and variable.path.endswith("kernel")
        expected = {"weight_decay": wrapped_kernel, "adaptation": wrapped_kernel}
        assert treatment == expected, variable.path


class ScaledDense(keras.layers.Layer):
    """A custom layer whose rank-1 variable no name pattern knows."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 2), name="w")
        self.multiplier = self.add_weight(shape=(2,), initializer="ones", name="multiplier")

    def call(self, x):
        return keras.ops.matmul(x, self.w) * self.multiplier


def test_rank_rule_covers_custom_layers_and_round_trips():
    layer = ScaledDense(name="scaled")
    layer.build((None, 3))
    default = keras_lars.LARS()
    default.build(layer.trainable_variables)
    assert default.exclusions()["scaled/multiplier"]["adaptation"]  # the names miss it

    optimizer = keras_lars.LARS(weight_decay_exclude_max_rank=1, adaptation_exclude_max_rank=1)
    restored = keras_lars.LARS.from_config(optimizer.get_config())
    restored.build(layer.trainable_variables)
    assert restored.exclusions() == {
        "scaled/w": {"weight_decay": True, "adaptation": True},
        "scaled/multiplier": {"weight_decay": False, "adaptation": False},
    }


def test_exclusion_by_variable_object():
    model = dense_model()
    optimizer = keras_lars.LARS(weight_decay_exclude_patterns=(), adaptation_exclude_patterns=())
    head_kernel = model.get_layer("head").kernel
    optimizer.exclude_from_layer_adaptation(var_list=[head_kernel])
    optimizer.build(model.trainable_variables)
    table = optimizer.exclusions()
    assert [path for path, t in table.items() if not t["adaptation"]] == ["net/head/kernel"]
    assert all(t["weight_decay"] for t in table.values())
    assert optimizer.get_config()["adaptation_exclude_indices"] == [4]
    assert optimizer.get_config()["adaptation_exclude_index_paths"] == ["net/head/kernel"]


def model_with_a_layer_in_front():
    """dense_model() with one more Dense first: every position moves by two."""
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3, name="stem")] + dense_model().layers,
        name="net",
    )


def config_excluding_the_head_kernel_by_object():
    model = dense_model()
    optimizer = keras_lars.LARS()
    optimizer.exclude_from_layer_adaptation(var_list=[model.get_layer("head").kernel])
    optimizer.build(model.trainable_variables)
    return optimizer.get_config()


def test_a_shifted_exclusion_position_is_refused_naming_both_paths():
    """Position 4 was net/head/kernel; with a layer in front it is
    net/norm/gamma, which would silently lose adaptation instead."""
    restored = keras_lars.LARS.from_config(config_excluding_the_head_kernel_by_object())
    model = model_with_a_layer_in_front()
    assert model.trainable_variables[4].path == "net/norm/gamma"
    with pytest.raises(ValueError, match="adaptation_exclude_indices") as error:
        restored.build(model.trainable_variables)
    assert "position 4: saved for 'net/head/kernel', now 'net/norm/gamma'" in str(error.value)
    assert not restored.built


def test_exclusion_positions_without_their_paths_are_refused():
    with pytest.raises(ValueError, match="`adaptation_exclude_index_paths`"):
        keras_lars.LARS(adaptation_exclude_indices=[4])
    config = config_excluding_the_head_kernel_by_object()
    config["adaptation_exclude_index_paths"] = None
    with pytest.raises(ValueError, match="`adaptation_exclude_index_paths`"):
        keras_lars.LARS.from_config(config)


def variable_at(path):
    """A variable whose `path` is `path`, made inside its name scopes."""
    *scopes, name = path.split("/")
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(keras.name_scope(scope))
        variable = keras.Variable(np.ones((2, 2)), name=name)
    assert variable.path == path
    return variable


@pytest.mark.parametrize(
    "saved,current",
    [
        ("net/head/kernel", "head/kernel"),  # a Sequential's name, dropped by load_model
        ("head/kernel", "net/head/kernel"),  # a config from a loaded model, used in code
        ("outer/inner/head/kernel", "head/kernel"),  # nested models
    ],
)
def test_index_paths_agree_up_to_the_names_of_enclosing_models(saved, current):
    variable = variable_at(current)
    optimizer = keras_lars.LARS(
        adaptation_exclude_indices=[0], adaptation_exclude_index_paths=[saved]
    )
    optimizer.build([variable])
    assert optimizer.exclusions() == {current: {"weight_decay": True, "adaptation": False}}


@pytest.mark.parametrize(
    "saved,current",
    [
        ("net/head/kernel", "net/stem/kernel"),
        ("net/head/kernel", "other/head/kernel"),
        ("head/kernel", "net/head_1/kernel"),
        ("outer/inner/head/kernel", "inner/stem/kernel"),
    ],
)
def test_index_paths_that_differ_otherwise_are_refused(saved, current):
    variable = variable_at(current)
    optimizer = keras_lars.LARS(
        weight_decay_exclude_indices=[0], weight_decay_exclude_index_paths=[saved]
    )
    with pytest.raises(ValueError, match=f"saved for '{saved}', now '{current}'"):
        optimizer.build([variable])


def test_config_of_an_unbuilt_optimizer_warns_about_object_exclusions():
    model = dense_model()
    optimizer = keras_lars.LARS()
    optimizer.exclude_from_weight_decay(var_list=[model.get_layer("head").kernel])
    with pytest.warns(UserWarning, match="not in this config"):
        config = optimizer.get_config()
    assert config["weight_decay_exclude_indices"] == []


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
        learning_rate_outside_momentum=True,
        track_trust_ratios=True,
        weight_decay_exclude_patterns=["bias$"],
        adaptation_exclude_patterns=["gamma"],
        weight_decay_exclude_max_rank=0,
        adaptation_exclude_max_rank=1,
        weight_decay_exclude_indices=[2],
        adaptation_exclude_indices=[0, 3],
        weight_decay_exclude_index_paths=["net/dense/kernel"],
        adaptation_exclude_index_paths=["net/stem/kernel", "net/norm/gamma"],
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


# --- The Keras internals keras_lars relies on ---------------------------------


def test_every_internal_is_checked_here():
    assert set(_keras_internals.SIGNATURES) == set(INTERNAL_CHECKS)


def _two_variables():
    return (
        keras.Variable(np.ones(2, "float32"), name="a"),
        keras.Variable(np.ones(3, "float32"), name="b"),
    )


def _check_var_key(optimizer_class):
    a, b = _two_variables()
    optimizer = optimizer_class()
    assert _keras_internals.var_key(optimizer, a) == _keras_internals.var_key(optimizer, a)
    assert _keras_internals.var_key(optimizer, a) != _keras_internals.var_key(optimizer, b)


def _check_get_variable_index(optimizer_class):
    a, b = _two_variables()
    optimizer = optimizer_class()
    optimizer.build([a, b])
    assert [_keras_internals.variable_index(optimizer, v) for v in (a, b)] == [0, 1]


def _check_iterations(optimizer_class):
    """The micro-step counter, where `iterations` counts updates."""
    a, _ = _two_variables()
    optimizer = optimizer_class(gradient_accumulation_steps=2)
    for _ in range(3):
        optimizer.apply_gradients([(keras.ops.ones(2), a)])
    assert int(keras.ops.convert_to_numpy(_keras_internals.micro_steps(optimizer))) == 3
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 1


def _check_learning_rate(optimizer_class):
    schedule = keras_lars.PolynomialWarmup(2.0, 10)
    assert _keras_internals.given_learning_rate(optimizer_class(schedule)) is schedule


class _Recording(_keras_internals.Optimizer):
    """Records which of the routed hooks Keras called."""

    def __init__(self, **kwargs):
        super().__init__(learning_rate=0.5, **kwargs)
        self.called = []

    def update_step(self, gradient, variable, learning_rate):
        self.assign_sub(variable, learning_rate * gradient)

    def _update_all(self, grads, variables, learning_rate):
        self.called.append("_backend_update_step")
        return super()._update_all(grads, variables, learning_rate)

    def _current_learning_rate(self):
        self.called.append("_get_current_learning_rate")
        return super()._current_learning_rate()


def _step_of_recording_optimizer(decoupled=True):
    a, _ = _two_variables()
    optimizer = _Recording(weight_decay=0.1)
    optimizer.decoupled_weight_decay = decoupled
    optimizer.apply_gradients([(keras.ops.ones(2), a)])
    return optimizer, keras.ops.convert_to_numpy(a)


def _check_backend_update_step(optimizer_class):
    optimizer, value = _step_of_recording_optimizer()
    assert "_backend_update_step" in optimizer.called
    assert value == pytest.approx([1 - 0.5 * 0.1 - 0.5] * 2)  # decay, then the step


def _check_get_current_learning_rate(optimizer_class):
    optimizer, _ = _step_of_recording_optimizer()
    assert "_get_current_learning_rate" in optimizer.called


def _check_apply_weight_decay(optimizer_class):
    _, decayed = _step_of_recording_optimizer(decoupled=True)
    _, not_decayed = _step_of_recording_optimizer(decoupled=False)
    assert decayed == pytest.approx([1 - 0.5 * 0.1 - 0.5] * 2)
    assert not_decayed == pytest.approx([0.5, 0.5])


INTERNAL_CHECKS = {
    "_var_key": _check_var_key,
    "_get_variable_index": _check_get_variable_index,
    "_iterations": _check_iterations,
    "_learning_rate": _check_learning_rate,
    "_backend_update_step": _check_backend_update_step,
    "_get_current_learning_rate": _check_get_current_learning_rate,
    "_apply_weight_decay": _check_apply_weight_decay,
}


@pytest.mark.parametrize("name", sorted(_keras_internals.SIGNATURES))
def test_keras_internal_exists_with_its_signature_and_behaviour(name):
    """Each private name of Keras that keras_lars uses, as the installed Keras
    has it; a Keras release that moves one fails here, by name."""
    parameters = _keras_internals.SIGNATURES[name]
    if parameters is None:  # an attribute: set by the base class's __init__
        optimizer = keras.optimizers.Optimizer(learning_rate=0.1)
        assert hasattr(optimizer, name), f"Keras's Optimizer has no {name}"
    else:
        method = getattr(keras.optimizers.Optimizer, name, None)
        assert callable(method), f"Keras's Optimizer has no method {name}"
        signature = tuple(inspect.signature(method).parameters)
        assert signature == ("self", *parameters), f"{name}{signature}"
    INTERNAL_CHECKS[name](keras_lars.LARS)
