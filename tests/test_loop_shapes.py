"""Loops cut at odd steps, on the backend under test: evaluation offsets that
are not a multiple of the loop, a target that ends a run early, a resume from
there, gradient accumulation. Every loop must run exactly the updates the job
counts: the controller checks the optimizer's count after each loop (the run
stops otherwise), and the learning rates logged must be the schedule's at the
steps they are logged at.

24 images an epoch (`--train_images`) at batch 8 are 3 steps; evaluations
every epoch from half an epoch (round(1.5) = 2) fall at 2, 5, 8 and 11, and
loops of 4 end at 2, 4, 5, 8, 11 and 12. The warm-up spans the whole run, so
the rate after step s is 2.0 * s / 12: a loop with one update too many or
too few shows."""

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="the recipe runs on TensorFlow or JAX",
)
pytest.importorskip("tensorflow")

from imagenet_runs import ALEXNET  # noqa: E402
from imagenet_runs import checkpoint_steps  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402

PEAK, TRAIN_STEPS = 2.0, 12
SHAPE = dict(
    ALEXNET,
    learning_rate=PEAK,
    global_batch_size=8,
    train_images=24,  # 3 steps an epoch
    train_steps=TRAIN_STEPS,
    warmup_epochs=4,  # 12 steps: the whole run
    steps_per_loop=4,
    eval_every_epochs=1,
    eval_offset_epochs=0.5,
    bn_span=0,
    checkpoint_every_minutes=0,
    deterministic=True,
)
LOOP_ENDS = [2, 4, 5, 8, 11, 12]


def rate(step):
    return PEAK * step / TRAIN_STEPS


def assert_logged_at(model_dir, steps):
    logged = scalars(model_dir)["learning_rate"]
    assert [step for step, _ in logged] == steps
    for step, value in logged:
        assert value == pytest.approx(rate(step), rel=1e-6), (step, value)


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_loops_cut_by_a_fractional_evaluation_offset_count_every_update(
    data_dir, tmp_path, accumulation_steps
):
    summary = run(
        **SHAPE,
        accumulation_steps=accumulation_steps,
        data_dir=str(data_dir),
        model_dir=str(tmp_path),
    )
    assert summary["steps"] == TRAIN_STEPS
    assert_logged_at(tmp_path, LOOP_ENDS)
    assert [step for step, _ in scalars(tmp_path, "eval")["top1"]] == [2, 5, 8, 11, 12]
    assert checkpoint_steps(tmp_path) == [8, 11, 12]  # after every loop, the newest 3 kept


def test_a_run_stopped_at_its_target_resumes_from_there_without_it(data_dir, tmp_path):
    """A 1% target is reached at the first evaluation (step 2); started
    again without a target (a setting that may change on resume), the run
    goes on from step 2 through loops of other lengths."""
    first = run(**SHAPE, target_accuracy=0.01, data_dir=str(data_dir), model_dir=str(tmp_path))
    assert first["steps"] == 2 and first["target_reached"]["step"] == 2
    assert checkpoint_steps(tmp_path) == [2]
    resumed = run(**SHAPE, data_dir=str(data_dir), model_dir=str(tmp_path))
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == TRAIN_STEPS
    assert resumed["train_seconds"] > first["train_seconds"]  # summed over both starts
    assert_logged_at(tmp_path, LOOP_ENDS)


def test_a_profile_traces_the_steps_it_names_without_changing_a_step(data_dir, tmp_path):
    summary = run(**SHAPE, profile_steps="5,8", data_dir=str(data_dir), model_dir=str(tmp_path))
    assert summary["steps"] == TRAIN_STEPS
    assert_logged_at(tmp_path, LOOP_ENDS)  # 5 and 8 end loops already
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert traces and all(trace.stat().st_size > 0 for trace in traces), traces
