"""What the ImageNet recipe tests share, on either backend: a generated
ImageNet in TFRecords, small run settings, and ways to start and read runs."""

import glob
import os

import numpy as np
import tensorflow as tf

from commands import environment
from commands import module
from recipes.imagenet import config as config_lib
from recipes.imagenet import job
from tools import imagenet_to_tfrecords
from tools import make_fake_imagenet

CLASSES, TRAIN_PER_CLASS, VALIDATION_PER_CLASS = 4, 16, 5
# AlexNet's fc6 and fc7 in the tests: 4096 wide (the sources'), they would
# hold 17 of the 20 M parameters at 67 px, and each run would spend most of
# its time initialising, updating and saving them.
FC_UNITS = 256
# A model that visibly learns the generated classes in a few steps. 16 steps
# of 16 images take the loss from 1.39 to 0.33 (one device, TensorFlow) and
# to 0.87 (JAX's four devices, 4 images a batch norm) in the last two loops;
# at 256 units no rate found learned on both.
LEARNS = dict(
    model="alexnet_bn",
    alexnet_bn_variant="conv_bn_relu",
    alexnet_fc_units=1024,
    image_size=67,
    dropout=0.0,
    trust_coefficient=0.01,
    learning_rate=1.0,
    preprocessing="model_garden",
)
# AlexNet at its smallest input, without dropout or batch norm: the same
# numbers on one device and on several replicas.
ALEXNET = dict(
    model="alexnet", alexnet_fc_units=FC_UNITS, image_size=67, dropout=0.0, learning_rate=2.0
)
# With SMALL (two warm-up steps): a peak rate of 1e30 after one warm-up step
# at rate 0, one step a loop: the second update blows the model up. One set
# of numbers for every test of a diverging run, so that JAX compiles its step
# once.
DIVERGES = dict(learning_rate=1e30, steps_per_loop=1, train_steps=8)
# The command-line flags of SMALL.
SMALL_FLAGS = [
    "--global_batch_size=8",
    "--warmup_epochs=0.25",
    "--eval_every_epochs=0",
    "--steps_per_loop=2",
    "--bn_span=0",
    "--checkpoint_every_minutes=0",
]
# Batch norm over each replica's whole micro-batch, a checkpoint after every loop.
SMALL = dict(
    global_batch_size=8,
    warmup_epochs=0.25,
    eval_every_epochs=0,
    steps_per_loop=2,
    bn_span=0,
    checkpoint_every_minutes=0,
)


def make_tfrecords(root, classes=CLASSES, train_per_class=TRAIN_PER_CLASS, seed=0):
    """A generated ImageNet under `root`, converted; returns the TFRecords' directory."""
    os.makedirs(root, exist_ok=True)
    make_fake_imagenet.make(
        str(root), classes, train_per_class, VALIDATION_PER_CLASS, size=(40, 56), seed=seed
    )
    output = root / "tfrecords"
    imagenet_to_tfrecords.convert(
        str(root / "raw"),
        str(output),
        validation_labels=str(root / "raw" / "validation_labels.txt"),
        train_shards=4,
        validation_shards=2,
    )
    return output


def write_records(path, labels, rng, size=(40, 56)):
    """A TFRecord file of random JPEGs with the converter's schema."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in labels:
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(image).numpy()])
                ),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def run(**settings):
    return job.run(config_lib.resolve(**settings))


def scalars(model_dir, split="train"):
    """{tag: [(step, value), ...]} from the TensorBoard event files."""
    values = {}
    for path in sorted(glob.glob(os.path.join(model_dir, split, "events.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                values.setdefault(value.tag, []).append((event.step, number))
    return values


def losses(model_dir):
    return [value for _, value in scalars(model_dir)["loss"]]


def assert_loss_falls(model_dir):
    """The last two loops' mean loss is well below the first loop's."""
    values = losses(model_dir)
    assert np.all(np.isfinite(values)) and np.mean(values[-2:]) < 0.8 * values[0], values


def assert_arrays_close(a, b, rtol, atol):
    """Two {name: array} dicts with the same, non-empty, keys and close values."""
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def checkpoint_steps(model_dir):
    """The steps of the checkpoints in model_dir, either backend's, sorted."""
    directory = os.path.join(model_dir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    steps = set()
    for name in os.listdir(directory):
        if name.isdigit():  # Orbax: <step>/
            steps.add(int(name))
        elif name.startswith("ckpt-") and name.endswith(".index"):  # TensorFlow
            steps.add(int(name[len("ckpt-") : -len(".index")]))
    return sorted(steps)


def checkpoint_arrays(model_dir, step=None):
    """({name: array} of every saved variable, step) of the newest (or the
    given) checkpoint, read with the library that wrote it."""
    step = step if step is not None else checkpoint_steps(model_dir)[-1]
    directory = os.path.join(model_dir, "checkpoints")
    if os.path.isdir(os.path.join(directory, str(step))):
        import jax
        import orbax.checkpoint as ocp

        path = os.path.join(directory, str(step), "default")
        reader = ocp.PyTreeCheckpointer()
        tree = reader.metadata(path).item_metadata.tree
        numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        saved = reader.restore(path, restore_args=numpy)
        arrays = {f"v{i}": value for i, value in enumerate(saved["variables"])}
        return arrays, int(saved["step"])
    reader = tf.train.load_checkpoint(os.path.join(directory, f"ckpt-{step}"))
    arrays = {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.endswith("VARIABLE_VALUE") and not key.startswith(("step/", "train_seconds/"))
    }
    return arrays, int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def assert_finite(arrays):
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), key


def train_command(model_dir, data_dir, *flags):
    return module(
        "recipes.imagenet_train", f"--model_dir={model_dir}", f"--data_dir={data_dir}", *flags
    )


def jax_environment(**extra):
    """A recipe subprocess on JAX with four forced host devices."""
    return environment(
        KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4", **extra
    )
