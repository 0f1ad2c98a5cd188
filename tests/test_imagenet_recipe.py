"""The ImageNet recipe's behaviours that hold on every backend, each body
switching on the backend only where the backend's route differs (the tables
below say where): gradient accumulation equals the whole batch and counts
updates, a run killed with SIGKILL and resumed ends as an uninterrupted one,
a diverging run saves no state it has not checked. The expected step counts
and learning rates are stated here, worked out from the settings: the run's
own plan is checked against them, never taken as the expectation. (Each
backend's own routes: tests/test_imagenet_train.py,
tests/test_imagenet_train_jax.py.)"""

import json
import re
import signal

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="the recipe runs on TensorFlow or JAX",
)
tf = pytest.importorskip("tensorflow")  # the input pipeline's library

import commands  # noqa: E402
from imagenet_runs import ALEXNET  # noqa: E402
from imagenet_runs import CLASSES  # noqa: E402
from imagenet_runs import DIVERGES  # noqa: E402
from imagenet_runs import FC_UNITS  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import SMALL_FLAGS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import assert_finite  # noqa: E402
from imagenet_runs import checkpoint_arrays  # noqa: E402
from imagenet_runs import checkpoint_steps  # noqa: E402
from imagenet_runs import jax_environment  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from recipes.imagenet import controller  # noqa: E402
from recipes.imagenet import models  # noqa: E402

BACKEND = keras.backend.backend()

# --- Where the backends' routes differ ----------------------------------------

# The strategy each backend's accumulation and resume runs use: TensorFlow's
# default (one device), keras.distribution's DataParallel over the four host
# devices (tests/conftest.py) on JAX.
STRATEGY = {"tensorflow": "default", "jax": "data_parallel"}
# Micro-batches an update in the accumulation test: over JAX's 4 devices the
# batch of 8 takes at most 2 (of 4 images, one a device); on TensorFlow's one
# device, 4 of 2 images.
ACCUMULATION_STEPS = {"tensorflow": 4, "jax": 2}
# Whether the accumulated run's checkpoint holds gradient accumulators the
# whole-batch run's has not: on JAX Keras's optimizer accumulates (model.fit)
# and saves one accumulator a trainable variable; TensorFlow's loop splits
# the batch itself, into buffers it does not save.
SAVES_ACCUMULATORS = {"tensorflow": False, "jax": True}
# Each backend's name of checkpoint `step` in model_dir/checkpoints.
CHECKPOINT_NAME = {"tensorflow": "ckpt-{step}", "jax": "{step}"}
# The environment of a recipe subprocess: JAX's with four forced host devices.
ENVIRONMENT = {"tensorflow": commands.environment, "jax": jax_environment}
# The kill points (recipes/faults.py) each backend's resume is tested with.
# TensorFlow writes a checkpoint before its save returns, so a kill as the
# save starts is a kill after it; JAX's Orbax save is asynchronous.
KILL_POINTS = {
    "tensorflow": (commands.KILL_AFTER,),
    "jax": (commands.KILL_AFTER, commands.KILL_DURING),
}

# --- The plan, stated ------------------------------------------------------------

# The plan's numbers for SMALL (batch 8, warmup_epochs 0.25) on the generated
# data (recipes/imagenet/plan.py): a test fails if the plan changes them.
TRAIN_IMAGES = 64  # CLASSES x TRAIN_PER_CLASS: 4 x 16
STEPS_PER_EPOCH = 8  # ceil(64 images / batch 8), in updates at any accumulation
WARMUP_STEPS = 2  # round(warmup_epochs 0.25 x 8 steps an epoch)
# The rates logged after an update (the schedule at that step, from the
# formula in tests/reference.py): peak 2 (ALEXNET's rate, and the alexnet_bn
# preset's) reached at step 2, then 2 x (1 - (step - 2) / (train_steps - 1))²
# down to the presets' end rate 0 (decay over train_steps - 2 + 1 steps).
# Accumulation, 4 steps (decay over 3): step 2: 2; step 4: 2 x (1/3)² = 2/9.
ACCUMULATION_TRAIN_STEPS = 4
ACCUMULATION_RATES = [(2, 2.0), (4, 2 / 9)]
# Resume, 12 steps (decay over 11), the updates after the kill at 6:
# step 8: 2 x (5/11)² = 50/121; 10: 2 x (3/11)² = 18/121; 12: 2 x (1/11)² = 2/121.
RESUME_TRAIN_STEPS = 12
RESUMED_RATES = [(8, 50 / 121), (10, 18 / 121), (12, 2 / 121)]


# --- Accumulation ---------------------------------------------------------------


def test_accumulation_equals_the_whole_batch_and_counts_updates(data_dir, tmp_path):
    settings = dict(
        ALEXNET,
        **SMALL,
        strategy=STRATEGY[BACKEND],
        data_dir=str(data_dir),
        train_steps=ACCUMULATION_TRAIN_STEPS,
        deterministic=True,
    )
    k = ACCUMULATION_STEPS[BACKEND]
    run(**settings, model_dir=str(tmp_path / "whole"))
    summary = run(**settings, model_dir=str(tmp_path / "accumulated"), accumulation_steps=k)
    assert summary["steps"] == ACCUMULATION_TRAIN_STEPS  # updates, not micro-batches
    with open(tmp_path / "accumulated" / "config.json") as f:
        plan = json.load(f)["plan"]
    stated = dict(
        train_images=TRAIN_IMAGES,
        steps_per_epoch=STEPS_PER_EPOCH,
        warmup_steps=WARMUP_STEPS,
        train_steps=ACCUMULATION_TRAIN_STEPS,
    )
    assert {name: plan[name] for name in stated} == stated
    whole, _ = checkpoint_arrays(tmp_path / "whole")
    accumulated, _ = checkpoint_arrays(tmp_path / "accumulated")
    if SAVES_ACCUMULATORS[BACKEND]:
        # Orbax's arrays are numbered in order, the model's variables first;
        # the accumulators come before the optimizer's momentums, so only the
        # model's variables are compared.
        model = models.build(
            "alexnet", CLASSES, ALEXNET["image_size"], dropout=0.0, alexnet_fc_units=FC_UNITS
        )
        assert len(accumulated) == len(whole) + len(model.trainable_variables)
        kept = [f"v{i}" for i in range(len(model.variables))]
        whole, accumulated = ({key: a[key] for key in kept} for a in (whole, accumulated))
    assert_arrays_close(accumulated, whole, rtol=1e-5, atol=1e-5)
    logged = scalars(tmp_path / "accumulated")["learning_rate"]
    assert [step for step, _ in logged] == [step for step, _ in ACCUMULATION_RATES]
    for (step, rate), (_, expected) in zip(logged, ACCUMULATION_RATES):
        assert rate == pytest.approx(expected, rel=1e-6), step


# --- Resume after SIGKILL ---------------------------------------------------------

# Each kill at checkpoint 6: the newest checkpoint it leaves (None: not known
# before the rerun looks), and the steps the rerun may resume from.
KILLED_AT_6 = {
    commands.KILL_AFTER: (6, (6,)),  # right after checkpoint 6 is written whole
    # as soon as its asynchronous save has started: Orbax may not have committed it
    commands.KILL_DURING: (None, (4, 6)),
}


def resume_flags():
    return [
        f"--strategy={STRATEGY[BACKEND]}",
        "--model=alexnet_bn",  # batch norm and dropout: both must resume exactly
        f"--alexnet_fc_units={FC_UNITS}",
        "--image_size=67",
        *SMALL_FLAGS,
        f"--train_steps={RESUME_TRAIN_STEPS}",
        "--deterministic",
    ]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    code, output = commands.run(
        train_command(model_dir, data_dir, *resume_flags()),
        model_dir.parent / "run.log",
        env=ENVIRONMENT[BACKEND](),
    )
    assert code == 0, output[-3000:]
    return model_dir


@pytest.mark.parametrize("kill", KILL_POINTS.get(BACKEND, ()))
def test_resume_after_sigkill_equals_an_uninterrupted_run(data_dir, tmp_path, uninterrupted, kill):
    """The run SIGKILLs itself at checkpoint 6 (recipes/faults.py), then the
    same command resumes it: the weights and the schedule's rates end as the
    uninterrupted run's."""
    environment = ENVIRONMENT[BACKEND]
    left, resumable = KILLED_AT_6[kill]
    killed = train_command(tmp_path / "killed", data_dir, *resume_flags())
    code, output = commands.run(killed, tmp_path / "killed.log", env=environment(**{kill: "6"}))
    assert code == -signal.SIGKILL, output[-3000:]
    assert left is None or checkpoint_arrays(tmp_path / "killed")[1] == left

    code, output = commands.run(killed, tmp_path / "resumed.log", env=environment())
    assert code == 0, output[-3000:]
    resumed = re.search(r"Resumed from step (\d+)", output)
    assert resumed and int(resumed[1]) in resumable, output
    assert_arrays_close(
        checkpoint_arrays(tmp_path / "killed")[0],
        checkpoint_arrays(uninterrupted)[0],
        rtol=1e-6,
        atol=1e-7,
    )
    after = [(s, r) for s, r in scalars(tmp_path / "killed")["learning_rate"] if s > 6]
    assert [s for s, _ in after] == [step for step, _ in RESUMED_RATES]
    for (step, rate), (_, expected) in zip(after, RESUMED_RATES):
        assert rate == pytest.approx(expected, rel=1e-6), step


# --- Divergence ---------------------------------------------------------------------


def test_a_diverging_run_saves_no_state_it_has_not_checked(data_dir, tmp_path):
    """A peak rate of 1e30 after one warm-up step at rate 0, a checkpoint after
    every step: the state after step 1 is the last whose loss and variables
    are finite; the next update makes it blow up, its loss still finite (1e28
    weights), so only the check of the state's own loss stops it before
    that state is saved."""
    settings = {**ALEXNET, **SMALL, **DIVERGES}
    with pytest.raises(controller.TrainingDiverged, match="stopped without saving") as info:
        run(**settings, data_dir=str(data_dir), model_dir=str(tmp_path))
    assert checkpoint_steps(tmp_path) == [1]
    saved = tmp_path / "checkpoints" / CHECKPOINT_NAME[BACKEND].format(step=1)
    assert str(saved) in str(info.value)
    assert "after step 2" in str(info.value) or "at step 2" in str(info.value), info.value
    assert_finite(checkpoint_arrays(tmp_path)[0])
