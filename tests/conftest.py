"""Test set-up shared by every file: logical CPUs (TensorFlow) or host
devices (JAX) for distribution tests, and the recipes' shared fixtures."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Four host devices stand in for four accelerators on JAX (DataParallel tests).
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

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


@pytest.fixture
def no_rescan(monkeypatch):
    """Fails the test if the input pipeline starts looking for a bad file."""
    from recipes.imagenet import bad_data

    def rescan(*args, **kwargs):
        raise AssertionError("this error must not start a rescan of the files")

    monkeypatch.setattr(bad_data, "find_first_bad_file", rescan)
