"""tf.distribute strategies by name, for the ImageNet recipes.

    default       tf.distribute's default strategy: one device, no replication
    one_device    OneDeviceStrategy on the first GPU, or the CPU
    mirrored      MirroredStrategy on every local GPU (or every logical CPU)
    multi_worker  MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG
    tpu           TPUStrategy on the TPU named by --tpu ("local" on a TPU VM)

`split_cpu(n)` turns the CPU into n logical devices first, so that
`mirrored` can be tried on a laptop (and is tested that way).
"""

import os

import tensorflow as tf

from .config import TF_STRATEGIES

# One MirroredStrategy per device set and process: a second one over the same
# devices reuses collective keys and fails with "Shape mismatch in the
# collective instance" (tensorflow #62790; tests/test_tensorflow.py pins it).
_MIRRORED = {}


class StrategyError(RuntimeError):
    """The strategy asked for cannot be created here."""


def split_cpu(logical_cpus):
    """Splits the CPU into `logical_cpus` devices; call before TensorFlow
    initialises its devices (before any op runs)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    except RuntimeError as error:  # already initialised
        raise StrategyError(f"--logical_cpus={logical_cpus}: {error}") from None


def create(name, tpu=None):
    """The strategy called `name`; `StrategyError` naming the flag if it
    cannot be had (an unknown name, no TPU reachable). "mirrored" returns the
    same strategy each time in a process."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        names = tuple(d.name for d in devices)
        if names not in _MIRRORED:
            _MIRRORED[names] = tf.distribute.MirroredStrategy(list(names))
        return _MIRRORED[names]
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise StrategyError(f"--strategy must be one of {TF_STRATEGIES}. Received: --strategy={name!r}")


def _tpu_strategy(tpu):
    tpu = tpu or os.environ.get("TPU_NAME")
    if not tpu:
        raise StrategyError(
            "--strategy=tpu needs --tpu: the TPU's name or grpc:// address, or "
            "'local' on a TPU VM (or set TPU_NAME)"
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver.connect(tpu=tpu)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StrategyError(f"--strategy=tpu: no TPU reachable at --tpu={tpu}: {reason}") from None
    return tf.distribute.TPUStrategy(resolver)


def describe(strategy):
    """ "MirroredStrategy, 4 replicas" and the like, for the start-up log."""
    name = type(strategy).__name__.lstrip("_")  # the default one is private
    return f"{name}, {strategy.num_replicas_in_sync} replica(s)"
