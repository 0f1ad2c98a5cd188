"""Batches for training and evaluation from a source: each input pipeline's
share, shuffled, preprocessed (`crops.py`) and batched per replica; for
evaluation, padded with masked examples to whole batches.

    dataset = batching.build_dataset(
        "/data/imagenet/train-*", training=True, global_batch_size=4096,
        input_context=context, preprocessing="tensorflow_tpu")
    with bad_data.naming_bad_files(dataset.files):
        model.fit(dataset, ...)

Under a `tf.distribute` strategy use `strategy.distribute_datasets_from_function`
with a function that passes its `InputContext`: every pipeline then reads a
disjoint part of the data, and together they read all of it.
`evaluation_batches` reads only its pipeline's files and pads them with
masked examples so that every validation image is seen exactly once, on any
number of hosts and replicas.
"""

import math
import os

import tensorflow as tf

from .bad_data import checked_label
from .crops import IMAGE_SIZE
from .crops import preprocess
from .preprocessing import as_preprocessing
from .sources import TFRecordSource

SHUFFLE_BUFFER = 10_000
MAX_INPUT_PIPELINES = 4096  # augmentation streams stay distinct up to this many hosts
MIN_PRIVATE_THREADS = 8  # the input's own thread pool, at least
IMAGE_HASH_BUCKETS = 2**62  # an image's bytes to a stream number (`augmentation_seed`)
RESEED_STRIDE = 1_000_003  # a resumed, non-deterministic stream's seed offset per step


def tune_for_accelerators(dataset, threads=None):
    """The tf.data options the references set when accelerators wait on the
    host: a private thread pool (so that TensorFlow's own ops do not compete
    with the input's; default: the cores, at least 8, about what Google's
    TPU hosts use, 100 on 96 cores; on 2 cores fewer than 4 threads starve
    the JPEG decoder), and slack for the final prefetch (tf.data starts each
    batch a little early, smoothing the step-to-step jitter that stalls a
    TPU)."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads or max(
        MIN_PRIVATE_THREADS, os.cpu_count() or 1
    )
    options.experimental_slack = True
    return dataset.with_options(options)


def batches(
    source,
    *,
    training,
    global_batch_size,
    input_context=None,
    image_size=IMAGE_SIZE,
    preprocessing=None,
    cache=False,
    deterministic=False,
    seed=0,
    repeat=None,
    drop_remainder=True,
    shuffle_buffer=SHUFFLE_BUFFER,
    skip=0,
    num_classes=None,
    threads=None,
):
    """Batches of (uint8 image, label) from `source` for one input pipeline,
    preprocessed as `preprocessing` (a `Preprocessing`, or a name in
    `PREPROCESSING`; default "model_garden") says.

    `global_batch_size` is split across replicas with the input context.
    `drop_remainder=True` keeps shapes static (TPU, XLA). Training data repeats
    unless `repeat=False`. `deterministic=True` makes order and augmentation
    repeat exactly for a given `seed`; otherwise tf.data may reorder for speed
    (the augmentation is still seeded per element). `skip` drops the first
    `skip` examples of this pipeline's stream, keeping the augmentation of the
    rest: with `deterministic=True`, a resumed run continues exactly where the
    first one stopped. Given `num_classes`, a label outside [0, num_classes)
    stops the pipeline with an error that says so (a wrong label offset would
    otherwise train on nothing). `threads` sizes the pipeline's private
    thread pool (`tune_for_accelerators`; default: the cores).
    """
    preprocessing = as_preprocessing(preprocessing)
    pipelines = input_context.num_input_pipelines if input_context else 1
    if pipelines > MAX_INPUT_PIPELINES:
        raise ValueError(
            f"At most {MAX_INPUT_PIPELINES} input pipelines are supported. Received: {pipelines}"
        )
    pipeline = input_context.input_pipeline_id if input_context else 0
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )
    with_boxes = training and preprocessing.bounding_boxes
    examples = source.examples(
        training=training,
        input_context=input_context,
        deterministic=deterministic,
        seed=seed,
        boxes=with_boxes,
    )
    if cache:
        examples = examples.cache()
    if training:
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat is not False:
            examples = examples.repeat()
    examples = examples.enumerate()
    if skip:
        examples = examples.skip(skip)

    def preprocess_one(index, example):
        image_bytes, label, *boxes = example
        label = checked_label(label, num_classes)
        element_seed = augmentation_seed(seed, pipeline, index, image_bytes)
        image = preprocess(image_bytes, training, image_size, preprocessing, element_seed, *boxes)
        return image, label

    dataset = examples.map(
        preprocess_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return tune_for_accelerators(dataset.prefetch(tf.data.AUTOTUNE), threads)


def augmentation_seed(seed, pipeline, index, image_bytes):
    """The stateless seed of the `index`-th element of a pipeline's stream:
    one random stream per (seed, pipeline), one seed per element in it.

    A pipeline made by the tf.data service's workers does not know which
    worker it is (`pipeline` is `tf.data.experimental.SHARD_HINT`: tf.data
    fills in the worker only where the files are sharded), so every worker
    would crop its `index`-th image as every other worker crops theirs. There
    the image's own bytes stand in for the pipeline."""
    if pipeline == tf.data.experimental.SHARD_HINT:
        stream = tf.bitwise.bitwise_xor(
            tf.constant(seed * MAX_INPUT_PIPELINES, tf.int64),
            tf.strings.to_hash_bucket_fast(image_bytes, IMAGE_HASH_BUCKETS),
        )
    else:
        stream = tf.constant(seed * MAX_INPUT_PIPELINES + pipeline, tf.int64)
    return tf.stack([stream, tf.cast(index, tf.int64)])


def resume_position(seed, deterministic, start_step, examples_per_step):
    """(seed, examples to skip) for a training stream opened at `start_step`,
    when each step consumes `examples_per_step` of it. A deterministic stream
    is replayed and what was consumed is skipped (read, not decoded), so a
    resumed run sees exactly the examples an uninterrupted one would; any
    other is reshuffled from there on, as the MLPerf and Model Garden loops
    do (skipping would cost a read of everything consumed)."""
    if start_step and deterministic:
        return seed, start_step * examples_per_step
    if start_step:
        return seed + RESEED_STRIDE * start_step, 0
    return seed, 0


def build_dataset(file_pattern, *, schema="imagenet", label_offset=None, **kwargs):
    """`batches` of the TFRecord files matching `file_pattern`; the dataset
    has a `files` attribute for `naming_bad_files`."""
    source = TFRecordSource(file_pattern, schema, label_offset)
    dataset = batches(source, **kwargs)
    dataset.files = source.files
    return dataset


def evaluation_steps(source, global_batch_size, num_pipelines=1):
    """Steps that show every example of `source` exactly once when it is read
    by `num_pipelines` pipelines, each its own share (`evaluation_batches`)."""
    per_pipeline = global_batch_size // num_pipelines
    return max(1, math.ceil(max(source.pipeline_counts(num_pipelines)) / per_pipeline))


def evaluation_batches(
    source,
    *,
    global_batch_size,
    input_context=None,
    image_size=IMAGE_SIZE,
    preprocessing=None,
    num_classes=None,
    threads=None,
):
    """Batches of (uint8 image, label, mask) showing each example of `source`
    exactly once (mask 1) over `evaluation_steps(...)` steps, padded with
    blank examples (mask 0, label 0) to whole batches.

    Each pipeline reads only its share (its files, where there are enough)
    and pads it to the same number of steps, so every replica gets a full
    batch in every step: shapes stay static, no replica sees an empty batch,
    and no host reads another's files.
    """
    preprocessing = as_preprocessing(preprocessing)
    pipelines = input_context.num_input_pipelines if input_context else 1
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )
    steps = evaluation_steps(source, global_batch_size, pipelines)
    batches_per_step = global_batch_size // pipelines // batch_size  # replicas it feeds
    real = source.evaluation_examples(input_context).map(
        lambda image_bytes, label: (
            preprocess(image_bytes, False, image_size, preprocessing),
            checked_label(label, num_classes),
            tf.constant(1.0),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    blank = tf.data.Dataset.from_tensors(
        (tf.zeros([image_size, image_size, 3], tf.uint8), tf.constant(0), tf.constant(0.0))
    ).repeat()
    dataset = real.concatenate(blank).batch(batch_size, drop_remainder=True)
    dataset = dataset.take(steps * batches_per_step).prefetch(tf.data.AUTOTUNE)
    return tune_for_accelerators(dataset, threads)


def synthetic_batch(batch_size, image_size, num_classes):
    """Random uint8 images and labels, made where it is called (inside a
    replica's step, so on the device): input-free throughput runs."""
    images = tf.random.uniform([batch_size, image_size, image_size, 3], 0, 256, dtype=tf.int32)
    labels = tf.random.uniform([batch_size], 0, num_classes, dtype=tf.int32)
    return tf.cast(images, tf.uint8), labels
