"""The loop controller of an ImageNet run, the same on every backend (the
shape of MLPerf's `resnet_runnable` under an orbit `Controller`).

    result = Controller(config, plan, runner, lars, log).run(start, training, evaluation)

It decides what happens after each loop; the runner only does its backend's
part (`runner.py`). The cadences are explicit objects:

- `loop_ends(plan, start)`: loops end at every multiple of `steps_per_loop`,
  at every evaluation and at the last step. Their lengths are known when a
  run (or a resumed one) starts, so a backend that runs whole executions of
  `steps_per_execution` steps can pick one that divides every loop.
- `Cadence.evaluations(plan)`: the first evaluation at the offset, then every
  `eval_every_steps`; always at the end.
- `CheckpointPolicy`: after the first loop that ends `checkpoint_every_minutes`
  after the last checkpoint (0: after every loop), and always at the end or at
  the target. Only the chief's clock decides, and every process follows its
  decision (`runner.agree`): Orbax's save is a collective, and a worker that
  saved alone would resume elsewhere.
- `Target`: the first evaluation whose top-1 reaches `target_accuracy` ends
  the run.

After every loop, before anything is saved, the controller checks what the
devices say: every step's loss finite and the state the loop left finite
(`TrainingDiverged`), and the optimizer's update count equal to the job's
step (`LoopMiscounted`): a loop that ran more or fewer updates than it was
asked for stops the run instead of quietly shifting the schedule,
checkpoints and evaluations.

Time to train is counted as MLPerf counts a run: from the start of training
(after the model, checkpoint and input are set up) to its end, summed over
every start of a resumed run (the checkpoints carry the sum). The first loop
of each start includes compiling the step. `summary.json` gives it and this
process's own wall time.
"""

import dataclasses
import math
import os
import time

from tqdm import tqdm

from .. import faults as faults_lib
from . import mlperf_log
from . import preemption
from .runner import Progress


class TrainingDiverged(RuntimeError):
    """The loss, or the state a loop left, stopped being finite."""


class LoopMiscounted(RuntimeError):
    """A loop ran another number of optimizer updates than it was asked for."""


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Steps at which something happens: `first`, then every `every` steps
    (`every` 0: only at `first`; `first` 0: never)."""

    first: int
    every: int

    @classmethod
    def evaluations(cls, plan):
        return cls(plan.eval_offset_steps or plan.eval_every_steps, plan.eval_every_steps)

    def due(self, step):
        if not self.first or step < self.first:
            return False
        return step == self.first or (self.every > 0 and (step - self.first) % self.every == 0)

    def next_after(self, step):
        """The first step after `step` at which it is due, or None."""
        if not self.first:
            return None
        if step < self.first:
            return self.first
        if not self.every:
            return None
        return self.first + ((step - self.first) // self.every + 1) * self.every


def loop_ends(plan, start, also=()):
    """The steps after `start` at which loops end, in order: every multiple of
    `steps_per_loop`, every evaluation, the last step, and the steps `also`
    (where a profile starts and ends)."""
    evaluations = Cadence.evaluations(plan)
    step = start
    while step < plan.train_steps:
        candidates = [(step // plan.steps_per_loop + 1) * plan.steps_per_loop, plan.train_steps]
        candidates += [s for s in also if step < s < plan.train_steps]
        evaluation = evaluations.next_after(step)
        if evaluation is not None:
            candidates.append(evaluation)
        step = min(candidates)
        yield step


def loop_lengths(plan, start, also=()):
    """The distinct lengths of the loops from `start` on."""
    ends = list(loop_ends(plan, start, also))
    return {b - a for a, b in zip([start, *ends], ends)}


def profile_steps(text):
    """ "A,B" -> (A, B): the steps after the A-th up to the B-th are traced."""
    return tuple(int(part) for part in text.split(",")) if text else ()


class CheckpointPolicy:
    """Whether to checkpoint after a loop, as this process's clock sees it.
    Only the chief's answer counts: `runner.agree` shares it."""

    def __init__(self, minutes, clock):
        self.seconds, self.clock = 60 * minutes, clock
        self.last = clock()

    def wants(self, final):
        return final or self.clock() - self.last >= self.seconds

    def saved(self):
        self.last = self.clock()


@dataclasses.dataclass(frozen=True)
class Target:
    """The top-1 that ends a run at the first evaluation reaching it (None: no target)."""

    accuracy: float | None

    def reached(self, evaluation):
        return bool(self.accuracy and evaluation and evaluation.top1 >= self.accuracy)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a run's training ended: what summary.json reports of it."""

    step: int
    evaluation: object  # runner.Evaluation, or None without validation data
    target_reached: dict | None
    train_seconds: float  # since training first started, over every start
    images_per_second: float | None  # training alone, after this start's first loop


class Controller:
    """Runs the loops of one start of a run (see the module docstring)."""

    def __init__(self, config, plan, runner, lars, log, faults=None, mlperf=None):
        self.config, self.plan, self.runner, self.lars, self.log = config, plan, runner, lars, log
        self.faults = faults or faults_lib.Faults()
        self.mlperf = mlperf or mlperf_log.NoLog()
        self.evaluations = Cadence.evaluations(plan)
        self.target = Target(config.target_accuracy)

    def run(self, start, training, evaluation_input):
        """Trains from `start` (a `Progress`) to the end or the target; an `Outcome`."""
        try:
            return self._run(start, training, evaluation_input)
        except (TrainingDiverged, LoopMiscounted):
            self.mlperf.run_stops(success=False)
            raise

    def _run(self, start, training, evaluation_input):
        config, plan, runner = self.config, self.plan, self.runner
        profile = profile_steps(config.profile_steps)
        runner.start(start.step, training, loop_lengths(plan, start.step, profile))
        self.mlperf.training_starts(start.step > 0)
        self._block_starts(start.step)
        policy = CheckpointPolicy(config.checkpoint_every_minutes, self.faults.clock)
        step, evaluation, reached = start.step, None, None
        measured_images, measured_seconds = 0, 0.0
        started = time.monotonic()

        def train_seconds():
            return start.train_seconds + time.monotonic() - started

        bar = tqdm(total=plan.train_steps, initial=step, unit="step", desc="training")
        with bar, preemption.StopRequests(on_request=runner.request_stop) as requests:
            for end in loop_ends(plan, step, profile):
                loop_started = time.monotonic()
                self.faults.loop_starting(step)
                if profile and step == profile[0]:
                    runner.profile_start(os.path.join(config.model_dir, "profile"))
                result = runner.train(end - step)
                if profile and end == profile[1]:
                    runner.profile_stop()
                    bar.write(f"Traced steps {profile[0] + 1} to {end}: model_dir/profile")
                end = step + result.steps  # earlier if asked to stop
                self._check(result, step, end)
                steps = result.steps
                loop_seconds = time.monotonic() - loop_started
                if step > start.step:  # the first loop also compiles
                    measured_images += steps * config.global_batch_size
                    measured_seconds += loop_seconds
                step = end
                throughput = steps * config.global_batch_size / loop_seconds
                self.log.training(step, result, self.lars, throughput)
                bar.set_postfix(loss=f"{result.loss:.3f}", img_s=f"{throughput:.0f}")
                bar.update(steps)
                if evaluation_input and (self.evaluations.due(step) or step == plan.train_steps):
                    evaluation = runner.evaluate(evaluation_input)
                    self.log.evaluation(step, evaluation)
                    self.mlperf.evaluated(self._epoch(step), evaluation.top1)
                    bar.write(
                        f"step {step}: top-1 {100 * evaluation.top1:.2f}%, top-5 "
                        f"{100 * evaluation.top5:.2f}% on {evaluation.examples} images"
                    )
                    if self.target.reached(evaluation):
                        reached = dict(
                            step=step,
                            epoch=round(step / plan.steps_per_epoch, 3),
                            train_seconds=round(train_seconds(), 1),
                        )
                        bar.write(f"Reached the target top-1 {config.target_accuracy:.2%}.")
                # Every process stops, at the same step, if any was asked to.
                stopping = runner.any_process(requests.requested is not None)
                final = step == plan.train_steps or reached is not None or stopping
                if runner.agree(policy.wants(final)):
                    runner.save(Progress(step=step, train_seconds=train_seconds()))
                    policy.saved()
                    self.faults.saving(step, runner.wait)
                if stopping:
                    runner.wait()
                    signal_name = requests.requested or "a signal to another process"
                    raise preemption.Preempted(
                        f"Stopped at step {step} on request ({signal_name}), its state saved "
                        f"in {runner.latest_checkpoint()}: run the same command again to resume"
                    )
                if reached:
                    break
                if self.evaluations.due(step):
                    self._block_starts(step)
        if evaluation is None and evaluation_input:  # a finished run started again: no loop ran
            evaluation = runner.evaluate(evaluation_input)
        if step == plan.train_steps or reached:
            self.mlperf.run_stops(success=reached is not None)
        return Outcome(
            step=step,
            evaluation=evaluation,
            target_reached=reached,
            train_seconds=train_seconds(),
            images_per_second=measured_images / measured_seconds if measured_seconds else None,
        )

    def _epoch(self, step):
        return round(step / self.plan.steps_per_epoch, 3)

    def _block_starts(self, step):
        """MLPerf's block: the training from `step` to the next evaluation."""
        last = self.plan.train_steps
        if step < last:
            end = min(self.evaluations.next_after(step) or last, last)
            self.mlperf.block_starts(self._epoch(step), self._epoch(end - step))

    def _check(self, result, step, end):
        """Stops the run, saving nothing, unless the loop from `step` to `end`
        left a state fit to keep after exactly the updates it was asked for."""
        last_good = self.runner.latest_checkpoint() or "none (the run has saved none)"
        if result.first_non_finite_step is not None:
            raise TrainingDiverged(
                f"The loss is not finite at step {step + result.first_non_finite_step}; "
                f"stopped without saving. The last good checkpoint: {last_good}"
            )
        if not result.state_finite:
            raise TrainingDiverged(
                f"The state after step {end} is not finite (a variable, or the loss it gives "
                f"on the last batch); stopped without saving. The last good checkpoint: "
                f"{last_good}"
            )
        expected = end * self.runner.micro_steps_per_update
        # A loss-scaled (float16) step with an overflow is skipped, uncounted.
        counted = (
            result.micro_steps <= expected
            if self.runner.skips_overflowing_steps
            else result.micro_steps == expected
        )
        if not counted:
            raise LoopMiscounted(
                f"After step {end} the optimizer has run {result.micro_steps} micro-steps, "
                f"not {expected} ({self.runner.micro_steps_per_update} an update): the loop "
                f"ran other updates than the job counts; stopped without saving. The last "
                f"good checkpoint: {last_good}"
            )


def steps_per_execution(lengths):
    """The most steps one execution can run while dividing every loop length."""
    return math.gcd(*lengths) if lengths else 1
