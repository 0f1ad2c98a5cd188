"""TFRecord files of ImageNet examples: listing them, reading one input
pipeline's share, parsing one example, counting records.

Two schemas (`SCHEMAS`): the tensorflow/tpu one that
`tools/imagenet_to_tfrecords.py` writes (`image/encoded`,
`image/class/label` in 1..1000), and TFDS's files read directly (`image`,
`label` in 0..999). `parse` subtracts the label offset, so both give 0..999
by default.
"""

import importlib
import os

import tensorflow as tf

from ..scripts import TOOLS

# The converter's tools/conversion_dir.py, under the name tools/ has here
# (installed, keras_lars_tools).
conversion_dir = importlib.import_module(f"{TOOLS}.conversion_dir")

INTERLEAVE_CYCLE = 16
READ_BUFFER_BYTES = 8 * 1024 * 1024
SCHEMAS = {
    # name: (image key, label key, default label offset)
    "imagenet": ("image/encoded", "image/class/label", 1),
    "tfds": ("image", "label", 0),
}
# ImageNet's annotated objects in tensorflow/tpu's schema (the converter's
# --bounding_boxes), normalised to [0, 1]; in the order the box samplers take.
BOX_KEYS = tuple(f"image/object/bbox/{c}" for c in ("ymin", "xmin", "ymax", "xmax"))


def list_files(file_pattern):
    """Sorted files matching the pattern; a clear error naming it if none do."""
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        directory = os.path.dirname(file_pattern) or "."
        reason = (
            "does not exist" if not tf.io.gfile.exists(directory) else "has no file matching it"
        )
        raise FileNotFoundError(f"No TFRecord files match {file_pattern}: {directory} {reason}")
    return files


def read_records(files, *, training, input_context=None, deterministic=False, seed=0):
    """Serialized records: this pipeline's share of `files`, one pass, the file
    order reshuffled on every pass if training.

    With N input pipelines, pipeline i reads files i, i+N, ... (or, with fewer
    files than pipelines, records i, i+N, ...), so together they read every
    record exactly once per pass.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    index = input_context.input_pipeline_id if input_context else 0
    shard_files = len(files) >= pipelines
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shard_files:
        dataset = dataset.shard(pipelines, index)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=READ_BUFFER_BYTES),
        cycle_length=min(INTERLEAVE_CYCLE, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        # Sharding records needs the same order in every pipeline.
        deterministic=deterministic or not shard_files,
    )
    if not shard_files:
        dataset = dataset.shard(pipelines, index)
    return dataset


def parse(serialized, schema="imagenet", label_offset=None, boxes=False):
    """(JPEG bytes, int32 label − offset) from one serialized example, and
    with `boxes` its annotated objects, [N, 4] (ymin, xmin, ymax, xmax),
    none where the record holds none."""
    image_key, label_key, default_offset = SCHEMAS[schema]
    spec = {
        image_key: tf.io.FixedLenFeature([], tf.string),
        label_key: tf.io.FixedLenFeature([], tf.int64),
    }
    if boxes and schema == "imagenet":
        spec.update({key: tf.io.VarLenFeature(tf.float32) for key in BOX_KEYS})
    features = tf.io.parse_single_example(serialized, spec)
    offset = default_offset if label_offset is None else label_offset
    parsed = features[image_key], tf.cast(features[label_key] - offset, tf.int32)
    if not boxes:
        return parsed
    if schema != "imagenet":
        return (*parsed, tf.zeros([0, 4]))
    corners = [tf.sparse.to_dense(features[key]) for key in BOX_KEYS]
    return (*parsed, tf.stack(corners, axis=-1))


def count_records(files):
    """Records in `files`: from the converter's per-shard statistics where it
    wrote them (`conversion_dir.recorded_count`), else by reading the file."""
    total = 0
    for path in files:
        count = conversion_dir.recorded_count(path, tf.io.gfile)
        if count is None:
            count = int(tf.data.TFRecordDataset(path).reduce(0, lambda n, _: n + 1))
        total += count
    return total
