"""Test set-up shared by every file: logical CPUs (TensorFlow) or host
devices (JAX) for distribution tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Four host devices stand in for four accelerators on JAX (DataParallel tests).
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import keras  # noqa: E402

# Four logical CPUs stand in for four accelerators (MirroredStrategy tests).
# This must happen before TensorFlow initialises its devices.
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 4,
    )
