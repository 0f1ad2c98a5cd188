"""The console scripts (setup.py's entry points) and the `python -m recipes.*`
commands, which share what they do before their command line runs:

1. check that what the command needs is installed, and say in one line what
   to install if not, before anything is imported or built;
2. run the command-line module with absl, its --help describing that module
   (absl describes `__main__`, which under a console script is pip's
   three-line wrapper and under `python -m recipes.imagenet_train` a shim);
3. end the process as soon as the command has returned and the exit handlers
   have run, without the interpreter's teardown (`exit_without_teardown`,
   which Bazel's test runner, tests/pytest_main.py, uses too).

Nothing here is imported at module level but the standard library (and
`backend.py`, which imports nothing else), so that step 1 runs whatever is
missing.
"""

import atexit
import contextlib
import importlib
import importlib.util
import os
import sys

from .backend import keras_backend

# What the `recipes` extra installs (setup.py): import name -> distribution.
RECIPES_EXTRA = {
    "absl": "absl-py",
    "matplotlib": "matplotlib",
    "mlperf_logging": "mlperf-logging",
    "PIL": "pillow",
    "scipy": "scipy",
    "tensorboard": "tensorboard",
    "tqdm": "tqdm",
}
# Installed, `recipes/` ships as `keras_lars_recipes` and `tools/` as
# `keras_lars_tools` (setup.py); in a checkout they are `recipes` and `tools`.
TOOLS = __package__.replace("recipes", "tools")


def train():
    """keras-lars-train: the ImageNet recipe (recipes/imagenet/cli.py)."""
    backend = keras_backend()
    _run(
        "keras-lars-train",
        f"{__package__}.imagenet.cli",
        needs_tensorflow=True,
        backend=backend,
        # The JAX route checkpoints with Orbax (the jax extra installs it).
        also_needs={"orbax.checkpoint": "orbax-checkpoint"} if backend == "jax" else {},
    )


def data_service():
    """keras-lars-data-service: a tf.data service dispatcher or worker for
    the recipe's --data_service (recipes/imagenet/data_service_cli.py)."""
    _run(
        "keras-lars-data-service", f"{__package__}.imagenet.data_service_cli", needs_tensorflow=True
    )


def study():
    """keras-lars-study: the large-batch study (recipes/study/cli.py)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow turns its oneDNN kernels on by itself only on CPUs with
    # AVX-512 VNNI, BF16 or AMX; on an AVX2 host they train the study's CNN
    # about twice as fast as the default kernels (docs/study.md).
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    backend = os.environ["KERAS_BACKEND"]
    _run(
        "keras-lars-study",
        f"{__package__}.study.cli",
        needs_tensorflow=backend == "tensorflow",
        backend=backend,
    )


def imagenet_to_tfrecords():
    """keras-lars-imagenet-to-tfrecords (tools/imagenet_to_tfrecords.py)."""
    _run(
        "keras-lars-imagenet-to-tfrecords",
        f"{TOOLS}.imagenet_to_tfrecords",
        needs_tensorflow=True,
    )


def make_fake_imagenet():
    """keras-lars-make-fake-imagenet (tools/make_fake_imagenet.py)."""
    _run("keras-lars-make-fake-imagenet", f"{TOOLS}.make_fake_imagenet", needs_tensorflow=False)


def missing(needs_tensorflow, backend=None, also_needs=None):
    """One line saying what to install, or None if nothing is missing.
    `also_needs`: {import name: distribution} beyond the recipes extra."""
    absent = sorted(dist for name, dist in RECIPES_EXTRA.items() if not _installed(name))
    if absent:
        return (
            f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not installed: "
            "pip install 'keras_lars[recipes]'"
        )
    if needs_tensorflow and not _installed("tensorflow"):
        return (
            "TensorFlow is not installed (the input pipelines are tf.data, on every Keras "
            "backend): pip install 'keras_lars[tensorflow]' (or [tensorflow-cpu])"
        )
    if backend in ("jax", "torch") and not _installed(backend):
        return (
            f"KERAS_BACKEND={backend}, but {backend} is not installed: pip install '.[{backend}]'"
        )
    absent = sorted(dist for name, dist in (also_needs or {}).items() if not _installed(name))
    if absent:
        return f"{', '.join(absent)} not installed: pip install 'keras_lars[{backend}]'"
    return None


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def _run(program, module_name, needs_tensorflow, backend=None, also_needs=None):
    problem = missing(needs_tensorflow, backend, also_needs)
    if problem:
        sys.exit(f"{program}: error: {problem}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up noise

    from absl import app
    from absl import flags

    module = importlib.import_module(module_name)
    module.define_flags()
    script = sys.modules["__main__"]
    if script is not module:
        script.__doc__ = module.__doc__
        for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    try:
        app.run(module.main)
    except SystemExit as stop:
        exit_without_teardown(stop.code)


def exit_without_teardown(code):
    """Ends the process as `sys.exit(code)` would, less the interpreter's
    teardown. By then the command has closed or flushed what it wrote
    (checkpoints, TensorBoard scalars, logs); the teardown would only destroy
    TensorFlow's and JAX's objects, and destroying a tf.data iterator can wait
    out its autotuning thread's sleep, seconds to a minute on busy cores
    (docs/recipes.md, "Limits"). The exit handlers still run (logging's
    shutdown, which flushes absl's log too; `jax.distributed`'s shutdown);
    threads still running are not waited for, so a command waits for its own
    writers (Orbax's checkpoints) before it returns."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # `--help | head`: a closed pipe
            stream.flush()
    os._exit(code)
