"""Bazel's py_test entry point: runs pytest on the files given as arguments."""

import faulthandler
import signal
import sys

import pytest

if __name__ == "__main__":
    # Bazel ends a test that runs out of time with SIGTERM: say where every thread was.
    faulthandler.register(signal.SIGTERM, all_threads=True)
    sys.exit(pytest.main(sys.argv[1:]))
