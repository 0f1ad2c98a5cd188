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

    # The slowest tests go into each target's log, for bazel/test_times.py.
    sys.exit(pytest.main(["--durations=5", "--durations-min=1", *files]))
