"""What the ImageNet recipe tests share, on either backend: a generated
ImageNet in TFRecords, small run settings, and ways to start and read runs."""

import glob
import os
import sys

import numpy as np
import tensorflow as tf

from recipes import imagenet_job
from recipes import train_config
from tools import imagenet_to_tfrecords
from tools import make_fake_imagenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES, TRAIN_PER_CLASS, VALIDATION_PER_CLASS = 4, 16, 5
# A model that visibly learns the generated classes in a few steps.
LEARNS = dict(
    model="alexnet_bn",
    alexnet_bn_variant="conv_bn_relu",
    image_size=67,
    dropout=0.0,
    trust_coefficient=0.01,
    learning_rate=0.5,
)
SMALL = dict(global_batch_size=8, warmup_epochs=0.25, eval_every_epochs=0, steps_per_loop=2)


def make_tfrecords(root):
    """A generated ImageNet under `root`, converted; returns the TFRecords' directory."""
    make_fake_imagenet.make(
        str(root), CLASSES, TRAIN_PER_CLASS, VALIDATION_PER_CLASS, size=(40, 56)
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


def run(**settings):
    return imagenet_job.run(train_config.resolve(**settings))


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


def assert_arrays_close(a, b, rtol, atol):
    """Two {name: array} dicts with the same, non-empty, keys and close values."""
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def command(model_dir, data_dir, *flags):
    return [
        sys.executable,
        "-m",
        "recipes.imagenet_train",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        *flags,
    ]


def environment(**extra):
    """This environment for a recipe subprocess, the checkout first on its path."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
