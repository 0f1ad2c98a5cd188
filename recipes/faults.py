"""Faults the recipes' tests inject into real processes, so that what a test
provokes happens at a known point rather than after a guessed delay.

    KERAS_LARS_TEST_KILL_AFTER=N   the process SIGKILLs itself right after
                                   checkpoint N is written whole (the ImageNet
                                   recipe: N is the step) or after its N-th
                                   finished run (the study)
    KERAS_LARS_TEST_KILL_DURING=N  (ImageNet recipe) SIGKILLs itself as soon as
                                   the save of checkpoint N has started: an
                                   asynchronous write is still in flight
    KERAS_LARS_TEST_CLOCK_RATE=R   (ImageNet recipe) this process's wall clock
                                   runs R times as fast: a host whose clock
                                   disagrees with the others'
    KERAS_LARS_TEST_SIGNAL_AT=N:SIG[,SIG]
                                   (ImageNet recipe) the process sends itself
                                   these signals (SIGTERM, SIGINT) as the loop
                                   that starts at step N begins: a scheduler's
                                   preemption arriving while a loop runs

`Faults.from_environment()` reads them once; the ImageNet recipe's loop calls
its hooks (`saving`, `clock`) and never looks at the environment itself.
Unset, every hook does nothing (and the clock is `time.time`).
"""

import dataclasses
import os
import signal
import time

KILL_AFTER = "KERAS_LARS_TEST_KILL_AFTER"
KILL_DURING = "KERAS_LARS_TEST_KILL_DURING"
CLOCK_RATE = "KERAS_LARS_TEST_CLOCK_RATE"
SIGNAL_AT = "KERAS_LARS_TEST_SIGNAL_AT"


def kill_if_asked(count):
    """SIGKILLs this process if KERAS_LARS_TEST_KILL_AFTER is `count`."""
    if os.environ.get(KILL_AFTER) == str(count):
        _kill()


@dataclasses.dataclass(frozen=True)
class Faults:
    """The faults one process injects; the default injects none."""

    kill_after_save: int | None = None
    kill_during_save: int | None = None
    clock_rate: float = 1.0
    signal_at: int | None = None
    signals: tuple = ()

    @classmethod
    def from_environment(cls, environ=os.environ):
        def integer(name):
            return int(environ[name]) if environ.get(name) else None

        step, _, names = (environ.get(SIGNAL_AT) or "").partition(":")
        return cls(
            kill_after_save=integer(KILL_AFTER),
            kill_during_save=integer(KILL_DURING),
            clock_rate=float(environ.get(CLOCK_RATE) or 1.0),
            signal_at=int(step) if step else None,
            signals=tuple(signal.Signals[name] for name in names.split(",") if name),
        )

    def clock(self):
        """Seconds, as this process's (perhaps skewed) wall clock says."""
        return time.time() * self.clock_rate

    def loop_starting(self, step):
        """Called as the loop that starts at `step` begins."""
        if self.signal_at == step:
            for number in self.signals:
                os.kill(os.getpid(), number)

    def saving(self, step, wait):
        """Called right after the save of checkpoint `step` has started;
        `wait()` returns once it is written whole."""
        if self.kill_during_save == step:
            _kill()
        if self.kill_after_save == step:
            wait()
            _kill()


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)
