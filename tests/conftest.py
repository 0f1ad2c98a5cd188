"""Test set-up shared by every file: logical CPUs (TensorFlow) or host
devices (JAX) for distribution tests, and the recipes' shared fixtures."""

import gc
import os
import tempfile
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("KERAS_BACKEND") == "jax":
    # Four host devices stand in for four accelerators (DataParallel tests).
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    # Test files build the same small models, each with functions of its
    # own that JAX compiles anew: XLA's persistent cache makes a compile that
    # another test process (Bazel's targets too: /tmp when TMPDIR is unset)
    # or a run it started already made a file read. Its key is the whole
    # program, the compile options and the versions, so a hit is the same
    # executable; the size bound also makes JAX lock the folder between
    # processes. Every compile is kept: a run's are mostly a quarter-second
    # each (initialisers, slices, the steps), and the recipe's subprocesses
    # repeat them. On a 2-core AVX2 EPYC host, tests/test_imagenet_recipe.py
    # took 143 s from a cold cache (191 s keeping compiles of a second or more
    # only); tests/test_imagenet_train_jax.py 162 s cold (161 s), 70 s warm.
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "keras_lars_jax_cache")
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2**30))

import keras  # noqa: E402
import pytest  # noqa: E402

# Four logical CPUs stand in for four accelerators (MirroredStrategy tests).
# This must happen before TensorFlow initialises its devices.
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 4,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A generated ImageNet in TFRecords (tests/imagenet_runs.py), once a file."""
    from imagenet_runs import make_tfrecords

    return make_tfrecords(tmp_path_factory.mktemp("imagenet"))


class _Collector:
    """One thread that collects the garbage when asked. A `gc.collect()` while
    another thread's is still running returns at once and collects nothing,
    so a request that comes during a pass makes one more pass after it."""

    def __init__(self):
        self._asked = threading.Event()
        self._stopping = False
        self._thread = None

    def ask(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="collect-garbage", daemon=True)
            self._thread.start()
        self._asked.set()

    def stop(self):
        """Waits for the pass under way: a process that ends normally must
        not tear TensorFlow down while this thread runs its destructors."""
        if self._thread is not None:
            self._stopping = True
            self._asked.set()
            self._thread.join()

    def _run(self):
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._stopping:
                return
            gc.collect()


_COLLECTOR = _Collector()


def pytest_unconfigure(config):
    _COLLECTOR.stop()


@pytest.fixture(autouse=True)
def destroy_input_pipelines_while_young(request):
    """After a test that runs a recipe (it uses `data_dir`) or trains in
    another way (its module sets `COLLECT_AFTER_EACH_TEST`), has what the
    test left collected, by a thread of its own. On busy cores, destroying a
    tf.data iterator can wait out the sleep of its autotuning thread, which
    grows with the iterator's age to a minute (docs/recipes.md, "Limits"):
    one collected 40 s after its last use took 99 s, ones collected at once
    0.3-33 s, and in clean-clone runs of `make test` such a teardown took up
    to 20 s. TensorFlow lets go of the GIL while it waits (measured: the main
    thread ran on throughout a 7.3 s destruction), so the next test runs
    meanwhile. A collection takes about 0.2 s, so not after every test."""
    yield
    trains = "data_dir" in request.fixturenames
    if trains or getattr(request.module, "COLLECT_AFTER_EACH_TEST", False):
        _COLLECTOR.ask()


@pytest.fixture
def no_rescan(monkeypatch):
    """Fails the test if the input pipeline starts looking for a bad file."""
    from recipes.imagenet import bad_data

    def rescan(*args, **kwargs):
        raise AssertionError("this error must not start a rescan of the files")

    monkeypatch.setattr(bad_data, "find_first_bad_file", rescan)
