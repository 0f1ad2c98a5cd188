"""The loop controller's cadences and checks, on a runner that only counts
(recipes/imagenet/controller.py): when loops end, evaluate and checkpoint,
that only the chief's clock decides a save, and that a loop which ran other
updates than asked stops the run. Real runs of the same shapes on both
backends: tests/test_loop_shapes.py."""

import dataclasses
import math

import keras
import pytest

from recipes.faults import Faults
from recipes.imagenet import controller
from recipes.imagenet.plan import Plan
from recipes.imagenet.runner import Evaluation
from recipes.imagenet.runner import LoopResult
from recipes.imagenet.runner import Progress

# Pure Python: one backend is enough.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="backend-independent"
)


def plan(train_steps=12, steps_per_loop=4, every=0, offset=0, steps_per_epoch=3):
    return Plan(
        replicas=1,
        num_classes=4,
        train_images=24,
        eval_images=8,
        steps_per_epoch=steps_per_epoch,
        train_steps=train_steps,
        warmup_steps=0,
        steps_per_loop=steps_per_loop,
        eval_every_steps=every,
        eval_offset_steps=offset,
    )


@pytest.mark.parametrize(
    "first,every,due,after",
    [
        # (first, every): steps 1..12 at which it is due; next_after(0, 2, 5, 12)
        (2, 3, [2, 5, 8, 11], [2, 5, 8, 14]),
        (4, 4, [4, 8, 12], [4, 4, 8, 16]),
        (3, 0, [3], [3, 3, None, None]),
        (0, 0, [], [None, None, None, None]),
    ],
)
def test_cadence(first, every, due, after):
    cadence = controller.Cadence(first, every)
    assert [s for s in range(1, 13) if cadence.due(s)] == due
    assert [cadence.next_after(s) for s in (0, 2, 5, 12)] == after


@pytest.mark.parametrize(
    "shape,start,ends",
    [
        # 24 images, batch 8: 3 steps an epoch; evaluations every epoch from
        # half an epoch (round(1.5) = 2): at 2, 5, 8, 11; loops of 4.
        (dict(every=3, offset=2), 0, [2, 4, 5, 8, 11, 12]),
        (dict(every=3, offset=2), 5, [8, 11, 12]),  # resumed at 5
        (dict(every=4, offset=2), 0, [2, 4, 6, 8, 10, 12]),
        (dict(every=0, offset=0), 0, [4, 8, 12]),
        (dict(every=0, offset=0, train_steps=10), 6, [8, 10]),
        (dict(every=0, offset=0, steps_per_loop=5, train_steps=12), 0, [5, 10, 12]),
        (dict(every=3, offset=0, steps_per_loop=12), 0, [3, 6, 9, 12]),
    ],
)
def test_loops_end_at_multiples_of_the_loop_evaluations_and_the_end(shape, start, ends):
    p = plan(**shape)
    assert list(controller.loop_ends(p, start)) == ends
    lengths = {b - a for a, b in zip([start, *ends], ends)}
    assert controller.loop_lengths(p, start) == lengths
    execution = controller.steps_per_execution(lengths)
    assert all(length % execution == 0 for length in lengths)
    assert execution == math.gcd(*lengths)


def test_a_profiles_steps_end_loops_too():
    p = plan(every=3, offset=2)
    assert list(controller.loop_ends(p, 0, also=(6, 7))) == [2, 4, 5, 6, 7, 8, 11, 12]
    assert controller.profile_steps("6,7") == (6, 7) and controller.profile_steps(None) == ()


class CountingRunner:
    """A runner that trains nothing: it counts micro-steps as an optimizer
    would (plus `extra` each loop), answers `agree` with the chief's
    decision, and records what it was asked to do."""

    backend = "fake"
    chief = True
    skips_overflowing_steps = False

    def __init__(self, micro_steps_per_update=1, extra=0, chief_decisions=None):
        self.micro_steps_per_update = micro_steps_per_update
        self.extra = extra
        self.micro_steps = 0
        self.chief_decisions = chief_decisions  # None: this process is the chief
        self.saved, self.evaluated, self.loops = [], [], []

    def start(self, start_step, training, loop_lengths):
        self.micro_steps = start_step * self.micro_steps_per_update
        self.lengths = loop_lengths

    def train(self, steps):
        self.loops.append(steps)
        self.micro_steps += steps * self.micro_steps_per_update + self.extra
        return LoopResult(
            loss=1.0,
            top1=0.5,
            top5=1.0,
            first_non_finite_step=None,
            state_finite=True,
            micro_steps=self.micro_steps,
            steps=steps,
        )

    def evaluate(self, evaluation):
        self.evaluated.append(sum(self.loops))
        return Evaluation(top1=evaluation(sum(self.loops)), top5=1.0, examples=8)

    def agree(self, decision):
        if self.chief_decisions is None:
            return decision
        return self.chief_decisions.pop(0)

    def any_process(self, flag):
        return flag

    def request_stop(self):
        pass

    def save(self, progress):
        self.saved.append(progress.step)

    def profile_start(self, logdir):
        self.profiled = [sum(self.loops)]

    def profile_stop(self):
        self.profiled.append(sum(self.loops))

    def wait(self):
        pass

    def latest_checkpoint(self):
        return None


class NoLog:
    def training(self, *args):
        pass

    def evaluation(self, *args):
        pass


@dataclasses.dataclass(frozen=True)
class Settings:
    global_batch_size: int = 8
    checkpoint_every_minutes: float = 0.0
    target_accuracy: float | None = None
    profile_steps: str | None = None
    model_dir: str = "/unused"


def run(runner, p, settings=Settings(), start=0, accuracy=lambda step: 0.5, faults=None):
    control = controller.Controller(settings, p, runner, lars=None, log=NoLog(), faults=faults)
    return control.run(Progress(step=start), None, accuracy)


def test_a_run_evaluates_checkpoints_and_ends_where_its_cadences_say():
    runner = CountingRunner()
    outcome = run(runner, plan(every=3, offset=2))
    assert runner.loops == [2, 2, 1, 3, 3, 1]
    assert runner.evaluated == [2, 5, 8, 11, 12]
    assert runner.saved == [2, 4, 5, 8, 11, 12]  # every loop at 0 minutes
    assert outcome.step == 12 and outcome.target_reached is None
    assert runner.lengths == {1, 2, 3}


def test_the_target_ends_the_run_at_the_first_evaluation_reaching_it_and_saves_there():
    runner = CountingRunner()
    settings = Settings(checkpoint_every_minutes=60, target_accuracy=0.7)
    outcome = run(runner, plan(every=3, offset=2), settings, accuracy=lambda s: s / 10)
    assert outcome.step == 8 and outcome.target_reached["step"] == 8
    assert runner.saved == [8]  # a checkpoint where it stopped, none before (60 minutes)


class StepClock:
    """A clock that moves `rate` minutes each time it is read."""

    def __init__(self, rate):
        self.rate, self.now = rate, 0.0

    def __call__(self):
        self.now += 60 * self.rate
        return self.now


class ClockFaults(Faults):
    def __init__(self, clock):
        super().__init__()
        object.__setattr__(self, "_clock", clock)

    def clock(self):
        return self._clock()


def test_a_process_whose_clock_runs_fast_saves_when_the_chief_says():
    """Every loop seems an hour long to this process (its clock is skewed),
    but the chief decided to save only after loops 3 and the last: those are
    the saves it makes."""
    chief = [False, False, True, False, False, True]
    runner = CountingRunner(chief_decisions=list(chief))
    run(runner, plan(every=3, offset=2), Settings(checkpoint_every_minutes=5), faults=None)
    assert runner.saved == [5, 12]
    skewed = CountingRunner(chief_decisions=list(chief))
    run(
        skewed,
        plan(every=3, offset=2),
        Settings(checkpoint_every_minutes=5),
        faults=ClockFaults(StepClock(60)),
    )
    assert skewed.saved == [5, 12]


def test_the_chief_saves_when_its_own_clock_says():
    runner = CountingRunner()  # the chief: its own decisions
    faults = ClockFaults(StepClock(2))  # 2 minutes pass at each reading
    run(runner, plan(every=0), Settings(checkpoint_every_minutes=1), faults=faults)
    assert runner.saved == [4, 8, 12]
    sparse = CountingRunner()
    faults = ClockFaults(StepClock(2))
    run(sparse, plan(every=0), Settings(checkpoint_every_minutes=3), faults=faults)
    assert sparse.saved == [8, 12]  # 2 minutes after loop 1, 4 after loop 2, then the end


@pytest.mark.parametrize("k,extra", [(1, 1), (2, 1), (4, -1)])
def test_a_loop_that_ran_other_updates_than_asked_stops_the_run(k, extra):
    runner = CountingRunner(micro_steps_per_update=k, extra=extra)
    with pytest.raises(controller.LoopMiscounted, match="After step 2 the optimizer has run"):
        run(runner, plan(every=3, offset=2))
    assert runner.saved == []


def test_a_profile_covers_the_steps_it_names():
    runner = CountingRunner()
    run(runner, plan(every=0), Settings(profile_steps="5,7"))
    assert runner.loops == [4, 1, 2, 1, 4] and runner.profiled == [5, 7]


def test_a_resumed_run_counts_from_its_step_and_adds_its_training_time():
    runner = CountingRunner(micro_steps_per_update=2)
    control = controller.Controller(Settings(), plan(), runner, lars=None, log=NoLog())
    outcome = control.run(Progress(step=8, train_seconds=100.0), None, None)
    assert runner.loops == [4] and runner.saved == [12]
    assert outcome.train_seconds >= 100.0 and outcome.evaluation is None
