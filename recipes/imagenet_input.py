"""The ImageNet input pipeline: read -> decode -> preprocess -> batch.

Reads TFRecords written by `tools/imagenet_to_tfrecords.py` (or any file with
the tensorflow/tpu schema: `image/encoded`, `image/class/label` in 1..1000) and
TFDS `imagenet2012` files (`image`, `label` in 0..999). The label offset is
explicit: `label_offset` is subtracted, so both give 0..999 by default.

    dataset = imagenet_input.build_dataset(
        "/data/imagenet/train-*", training=True, global_batch_size=4096,
        input_context=context, dtype="bfloat16")
    with imagenet_input.naming_bad_files(dataset.files):
        model.fit(dataset, ...)

Under a `tf.distribute` strategy use `strategy.distribute_datasets_from_function`
with a function that passes its `InputContext`: every pipeline then reads a
disjoint part of the data, and together they read all of it.
"""

import contextlib
import os

import tensorflow as tf

IMAGE_SIZE = 224
# Inception-style crop (Szegedy et al. 2015), as in the ResNet references.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_MAX_ATTEMPTS = 10
EVAL_CROP_FRACTION = 0.875  # centre crop of the short side, then resize
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
SHUFFLE_BUFFER = 10_000
INTERLEAVE_CYCLE = 16
READ_BUFFER_BYTES = 8 * 1024 * 1024
MAX_INPUT_PIPELINES = 4096  # augmentation streams stay distinct up to this many hosts

SCHEMAS = {
    # name: (image key, label key, default label offset)
    "imagenet": ("image/encoded", "image/class/label", 1),
    "tfds": ("image", "label", 0),
}
DTYPES = ("float32", "bfloat16", "float16")


class BadDataError(RuntimeError):
    """A TFRecord file that cannot be read, or an image that cannot be decoded."""


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


def read_records(
    files,
    *,
    training,
    input_context=None,
    cache=False,
    deterministic=False,
    seed=0,
    shuffle_buffer=SHUFFLE_BUFFER,
):
    """Serialized records: this pipeline's share of `files`, shuffled if training.

    With N input pipelines, pipeline i reads files i, i+N, ... (or, with fewer
    files than pipelines, records i, i+N, ...), so together they read every
    record exactly once per epoch.
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
        deterministic=deterministic,
    )
    if not shard_files:
        dataset = dataset.shard(pipelines, index)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset


def parse(serialized, schema="imagenet", label_offset=None):
    """(JPEG bytes, int32 label − offset) from one serialized example."""
    image_key, label_key, default_offset = SCHEMAS[schema]
    features = tf.io.parse_single_example(
        serialized,
        {
            image_key: tf.io.FixedLenFeature([], tf.string),
            label_key: tf.io.FixedLenFeature([], tf.int64),
        },
    )
    offset = default_offset if label_offset is None else label_offset
    return features[image_key], tf.cast(features[label_key] - offset, tf.int32)


def decode_and_random_crop(image_bytes, image_size, seed):
    """A random crop of 8%..100% of the area and 3/4..4/3 aspect ratio, decoded
    directly from the JPEG; the centre crop if 10 attempts find none."""
    shape = tf.io.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        tf.zeros([1, 0, 4]),
        seed=seed,
        min_object_covered=CROP_AREA_RANGE[0],
        aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    # The sampler returns the whole image when it fails: use the centre crop.
    whole = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    return tf.cond(
        whole,
        lambda: decode_and_centre_crop(image_bytes, image_size),
        lambda: tf.image.resize(
            tf.io.decode_and_crop_jpeg(
                image_bytes, tf.stack([begin[0], begin[1], size[0], size[1]]), channels=3
            ),
            [image_size, image_size],
        ),
    )


def decode_and_centre_crop(image_bytes, image_size):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    height, width = shape[0], shape[1]
    side = tf.cast(EVAL_CROP_FRACTION * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    return tf.image.resize(image, [image_size, image_size])


def preprocess(image_bytes, training, image_size=IMAGE_SIZE, dtype="float32", seed=None):
    """A normalised `image_size`² RGB image of `dtype`."""
    if training:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = decode_and_random_crop(image_bytes, image_size, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    else:
        image = decode_and_centre_crop(image_bytes, image_size)
    image = (image - MEAN_RGB) / STDDEV_RGB
    return tf.cast(image, dtype)


def build_dataset(
    file_pattern,
    *,
    training,
    global_batch_size,
    input_context=None,
    image_size=IMAGE_SIZE,
    dtype="float32",
    schema="imagenet",
    label_offset=None,
    cache=False,
    deterministic=False,
    seed=0,
    repeat=None,
    drop_remainder=True,
    shuffle_buffer=SHUFFLE_BUFFER,
):
    """Batches of (image, label) for one input pipeline.

    `global_batch_size` is split across replicas with the input context.
    `drop_remainder=True` keeps shapes static (TPU, XLA). Training data repeats
    unless `repeat=False`. `deterministic=True` makes order and augmentation
    repeat exactly for a given `seed`; otherwise tf.data may reorder for speed
    (the augmentation is still seeded per element). The returned dataset has a
    `files` attribute for `naming_bad_files`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={dtype!r}")
    if schema not in SCHEMAS:
        raise ValueError(f"`schema` must be one of {tuple(SCHEMAS)}. Received: {schema!r}")
    files = list_files(file_pattern)
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )
    records = read_records(
        files,
        training=training,
        input_context=input_context,
        cache=cache,
        deterministic=deterministic,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
    )
    if training and repeat is not False:
        records = records.repeat()
    pipeline = input_context.input_pipeline_id if input_context else 0
    if input_context and input_context.num_input_pipelines > MAX_INPUT_PIPELINES:
        raise ValueError(
            f"At most {MAX_INPUT_PIPELINES} input pipelines are supported. "
            f"Received: {input_context.num_input_pipelines}"
        )

    def parse_and_preprocess(index, serialized):
        image_bytes, label = parse(serialized, schema, label_offset)
        # One random stream per (seed, pipeline), one seed per element in it.
        stream = seed * MAX_INPUT_PIPELINES + pipeline
        element_seed = tf.stack([tf.cast(stream, tf.int64), index])
        return preprocess(image_bytes, training, image_size, dtype, element_seed), label

    dataset = records.enumerate().map(
        parse_and_preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset.files = files
    return dataset


def find_bad_files(files, schema="imagenet"):
    """["path: what is wrong", ...] for files that do not read or decode."""
    problems = []
    for path in files:
        count = 0
        try:
            for serialized in tf.data.TFRecordDataset(path):
                image_bytes, _ = parse(serialized, schema, 0)
                tf.io.decode_jpeg(image_bytes, channels=3)
                count += 1
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            problems.append(f"{path}: record {count}: {error.message.splitlines()[0]}")
    return problems


@contextlib.contextmanager
def naming_bad_files(files, schema="imagenet"):
    """Re-raises tf.data's read and decode errors, which name no file, as a
    `BadDataError` that names them (the files are rescanned only on failure)."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        problems = find_bad_files(files, schema)
        if not problems:
            raise
        raise BadDataError("Bad input data:\n  " + "\n  ".join(problems)) from error
