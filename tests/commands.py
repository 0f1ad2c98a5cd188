"""Running the project's commands in subprocesses, as a user would.

Output goes to a file, not a pipe, so that a chatty process never blocks on a
full pipe while the test waits for another one.
"""

import os
import subprocess
import sys

# recipes/faults.py: the process SIGKILLs itself right after that checkpoint
# (the step) or that finished run (the count) is saved, or as soon as that
# checkpoint's save has started: a kill needs no timing.
from recipes.faults import KILL_AFTER  # noqa: F401 - for the tests
from recipes.faults import KILL_DURING  # noqa: F401 - for the tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(**extra):
    """This environment for a subprocess, the checkout first on its path."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def module(name, *arguments):
    """`python -m name arguments...`"""
    return [sys.executable, "-m", name, *map(str, arguments)]


class Process:
    """A command started with its output (stdout and stderr) in `log`."""

    def __init__(self, command, log, env=None):
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env or environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )

    def wait(self, timeout=600):
        """(exit status, output); kills the process if it runs past `timeout`."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        with open(self.log) as f:
            return code, f.read()


def run(command, log, env=None, timeout=600):
    """Runs `command` to the end; (exit status, output)."""
    return Process(command, log, env).wait(timeout)


def run_all(commands, logs, envs, timeout=600):
    """Runs the commands side by side (e.g. the workers of one cluster);
    [(exit status, output)] in order."""
    processes = [Process(c, log, env) for c, log, env in zip(commands, logs, envs)]
    try:
        return [p.wait(timeout) for p in processes]
    finally:
        for p in processes:  # after a timeout, the others would wait forever
            if p.process.poll() is None:
                p.process.kill()
                p.process.wait()
