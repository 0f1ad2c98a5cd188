"""Faults the recipes' tests inject into real processes, so that what a test
provokes happens at a known point rather than after a guessed delay.

    KERAS_LARS_TEST_KILL_AFTER=N   the process SIGKILLs itself right after
                                   saving checkpoint N (the ImageNet recipe: N
                                   is the step) or its N-th finished run (the
                                   study)

Nothing reads these variables but `kill_if_asked`; unset, it does nothing.
"""

import os
import signal

KILL_AFTER = "KERAS_LARS_TEST_KILL_AFTER"


def kill_if_asked(count):
    """SIGKILLs this process if KERAS_LARS_TEST_KILL_AFTER is `count`."""
    if os.environ.get(KILL_AFTER) == str(count):
        os.kill(os.getpid(), signal.SIGKILL)
