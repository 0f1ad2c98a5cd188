"""PolynomialWarmup: tables of (step, expected rate), dtypes, errors, config."""

import keras
import pytest

import keras_lars
import reference

# MLPerf ResNet-50 LARS at batch 4096 (the `mlperf_4k` preset): 313 steps an
# epoch, 5 warm-up epochs, base rate 10, end rate 1e-4, 42 epochs; MLPerf
# decays over train_steps − warmup_steps + 1 = 11,582 steps.
MLPERF_WARMUP = 313 * 5
MLPERF_TRAIN = 313 * 42
MLPERF = keras_lars.PolynomialWarmup(
    10.0,
    decay_steps=MLPERF_TRAIN - MLPERF_WARMUP + 1,
    warmup_steps=MLPERF_WARMUP,
    end_learning_rate=1e-4,
)
MLPERF_TABLE = [
    (0, 0.0),
    (1, 10.0 / 1565),
    (313, 2.0),  # one epoch = a fifth of warm-up
    (1564, 10.0 * 1564 / 1565),
    (1565, 10.0),  # the MLPerf reference's logs: LR 10.0 at step 1565
    (1565 + 11582, 1e-4),  # decay ends one step after training does
    (MLPERF_TRAIN, 1e-4 + (10.0 - 1e-4) / 11582**2),
    (10**6, 1e-4),  # constant afterwards
]

# Round numbers: peak 4, 10 warm-up steps, 100 decay steps.
SIMPLE_TABLE = [
    (dict(), [(0, 0.0), (5, 2.0), (10, 4.0), (60, 1.0), (110, 0.0), (500, 0.0)]),
    (dict(end_learning_rate=0.5), [(60, 0.5 + 3.5 * 0.25), (110, 0.5), (111, 0.5)]),
    (dict(warmup_start_learning_rate=1.0), [(0, 1.0), (5, 2.5), (10, 4.0)]),
    (dict(power=1.0), [(60, 2.0), (85, 1.0)]),
    (dict(warmup_steps=0), [(0, 4.0), (50, 1.0), (100, 0.0)]),
]


@pytest.mark.parametrize("step,expected", MLPERF_TABLE)
def test_mlperf_table(step, expected):
    got = float(keras.ops.convert_to_numpy(MLPERF(step)))
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kwargs,table", SIMPLE_TABLE)
def test_simple_table(kwargs, table):
    schedule = keras_lars.PolynomialWarmup(4.0, decay_steps=100, **{"warmup_steps": 10, **kwargs})
    for step, expected in table:
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-7), step


def test_matches_reference_everywhere():
    schedule = keras_lars.PolynomialWarmup(
        3.0,
        decay_steps=37,
        warmup_steps=11,
        end_learning_rate=0.2,
        warmup_start_learning_rate=0.1,
        power=2.0,
    )
    for step in range(60):
        want = reference.polynomial_warmup(step, 3.0, 37, 11, 0.2, 2.0, 0.1)
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), step


# JAX without x64 truncates int64 to int32, and says so: expected here.
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64")
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32"])
def test_step_dtypes(dtype):
    step = keras.ops.convert_to_tensor(1565, dtype)
    assert float(keras.ops.convert_to_numpy(MLPERF(step))) == pytest.approx(10.0)


def test_drives_the_optimizer_step_counter():
    variable = keras.Variable([1.0], name="kernel")
    schedule = keras_lars.PolynomialWarmup(4.0, decay_steps=100, warmup_steps=10)
    optimizer = keras_lars.LARS(schedule)
    for _ in range(5):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor([1.0]), variable)])
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(2.0)


def test_config_round_trip():
    schedule = keras_lars.PolynomialWarmup(
        3.0,
        37,
        warmup_steps=11,
        end_learning_rate=0.2,
        power=1.5,
        warmup_start_learning_rate=0.1,
        name="custom",
    )
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, keras_lars.PolynomialWarmup)
    assert restored.get_config() == schedule.get_config()
    assert restored.get_config()["name"] == "custom"


def test_a_zero_peak_is_refused_with_the_reason():
    """A Keras user porting `CosineDecay(0.0, ..., warmup_target=10)` would
    write `PolynomialWarmup(0.0, ...)` and train at rate 0."""
    with pytest.raises(ValueError, match="`initial_learning_rate` is the peak rate"):
        keras_lars.PolynomialWarmup(0.0, decay_steps=100, warmup_steps=10)
    first_line = keras_lars.PolynomialWarmup.__doc__.strip().splitlines()[0]
    assert "initial_learning_rate" in first_line and "peak" in first_line


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(initial_learning_rate=-1.0), "initial_learning_rate"),
        (dict(initial_learning_rate="1"), "initial_learning_rate"),
        (dict(decay_steps=0), "decay_steps"),
        (dict(decay_steps=10.5), "decay_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(end_learning_rate=-0.1), "end_learning_rate"),
        (dict(power=0.0), "power"),
        (dict(power=float("nan")), "power"),
        (dict(end_learning_rate=float("nan")), "end_learning_rate"),
        (dict(warmup_start_learning_rate=-1.0), "warmup_start_learning_rate"),
        (dict(initial_learning_rate=float("inf")), "initial_learning_rate"),
        (dict(end_learning_rate=float("inf")), "end_learning_rate"),
        (dict(power=float("inf")), "power"),
    ],
)
def test_bad_arguments_raise(kwargs, argument):
    arguments = {"initial_learning_rate": 1.0, "decay_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=f"`{argument}`"):
        keras_lars.PolynomialWarmup(**arguments)
