"""Bazel's py_test entry point: `pytest_main.py --backend=NAME FILE...` runs
pytest on the files on the named Keras backend."""

import faulthandler
import os
import signal
import sys

if __name__ == "__main__":
    backend, *files = sys.argv[1:]
    if not backend.startswith("--backend="):
        sys.exit(f"pytest_main.py: the first argument must be --backend=NAME, not {backend!r}")
    # Before Keras is imported (by conftest.py), which reads it once.
    os.environ["KERAS_BACKEND"] = backend.removeprefix("--backend=")
    # Bazel ends a test that runs out of time with SIGTERM: say where every thread was.
    faulthandler.register(signal.SIGTERM, all_threads=True)

    import pytest

    # Every test of 2 s or more goes into the target's log (bazel/test_times.py
    # prints the slowest): where the next cut of the suite's time should go.
    # Without pytest's last garbage collection (its unraisableexception
    # plugin) and without Python's teardown: destroying an old tf.data
    # iterator can block for over a minute on busy cores (docs/recipes.md,
    # "Limits"), and Bazel counts the target until its process ends.
    from recipes.scripts import exit_without_teardown

    code = pytest.main(
        ["-p", "no:unraisableexception", "--durations=0", "--durations-min=2", *files]
    )
    exit_without_teardown(int(code))
