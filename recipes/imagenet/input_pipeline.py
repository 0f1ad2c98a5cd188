"""The ImageNet input pipeline: read -> decode -> preprocess -> batch.

Two sources of (JPEG bytes, label) examples:

- `TFRecordSource`: TFRecords written by `tools/imagenet_to_tfrecords.py` (or
  any file with the tensorflow/tpu schema: `image/encoded`, `image/class/label`
  in 1..1000), or TFDS-format files read directly (`schema="tfds"`);
- `TFDSSource`: TFDS `imagenet2012` through tensorflow-datasets' builder,
  keeping the JPEG bytes (`SkipDecoding`) for the fused decode-and-crop.

The label offset is explicit: `label_offset` is subtracted, so both give
0..999 by default.

    dataset = input_pipeline.build_dataset(
        "/data/imagenet/train-*", training=True, global_batch_size=4096,
        input_context=context, preprocessing="tensorflow_tpu")
    with input_pipeline.naming_bad_files(dataset.files):
        model.fit(dataset, ...)

Images leave the host as uint8 RGB in [0, 255]: a quarter of float32's
transfer, and no per-pixel arithmetic on the host. The model normalises them
on the device (`models.ImageNormalization`, with the `Preprocessing`'s mean
and standard deviation), as tensorflow/tpu and Google's MLPerf code do.

Each `Preprocessing` follows one source (`PREPROCESSING`): the random crop's
area and attempts, the resize method, the evaluation crop and the
normalisation; the presets name theirs.

Under a `tf.distribute` strategy use `strategy.distribute_datasets_from_function`
with a function that passes its `InputContext`: every pipeline then reads a
disjoint part of the data, and together they read all of it.
`evaluation_batches` reads only its pipeline's files and pads them with
masked examples so that every validation image is seen exactly once, on any
number of hosts and replicas.
"""

import concurrent.futures
import contextlib
import hashlib
import importlib
import math
import os
import re

import tensorflow as tf
from tqdm import tqdm

from ..scripts import TOOLS
from .preprocessing import DEFAULT_PREPROCESSING
from .preprocessing import EVAL_SHORT_SIDE
from .preprocessing import PREPROCESSING

# The converter's tools/conversion_dir.py, under the name tools/ has here
# (installed, keras_lars_tools).
conversion_dir = importlib.import_module(f"{TOOLS}.conversion_dir")

IMAGE_SIZE = 224
SHUFFLE_BUFFER = 10_000
INTERLEAVE_CYCLE = 16
READ_BUFFER_BYTES = 8 * 1024 * 1024
MAX_INPUT_PIPELINES = 4096  # augmentation streams stay distinct up to this many hosts
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_CLASSES = 1000
RESCAN_THREADS = 8  # files checked at once when looking for a bad one
MIN_PRIVATE_THREADS = 8  # the input's own thread pool, at least
FINGERPRINT_BYTES = 64 * 1024  # of each file, hashed to tell one data set from another
RESEED_STRIDE = 1_000_003  # a resumed, non-deterministic stream's seed offset per step
# Words in TensorFlow's messages for records that do not read or images that
# do not decode.
UNREADABLE_SIGNS = (
    "JPEG",
    "Could not parse example",
    "corrupted record",
    "could not be found",  # a feature the schema needs is missing
    "Data types don't match",  # a feature of another type (a float label)
)
# The smallest side an image may have: the centre crop takes 0.875 of it,
# which leaves no pixel of a 1-pixel image (measured on every preprocessing).
MIN_IMAGE_SIDE = 2

SCHEMAS = {
    # name: (image key, label key, default label offset)
    "imagenet": ("image/encoded", "image/class/label", 1),
    "tfds": ("image", "label", 0),
}
# ImageNet's annotated objects in tensorflow/tpu's schema (the converter's
# --bounding_boxes), normalised to [0, 1]; in the order the box samplers take.
BOX_KEYS = tuple(f"image/object/bbox/{c}" for c in ("ymin", "xmin", "ymax", "xmax"))
BOX_PROBE_RECORDS = 1000  # read to tell whether the records hold boxes at all


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


class TFRecordSource:
    """ImageNet examples from TFRecord files matching `file_pattern`.

    `num_classes` comes from the converter's `labels.txt` beside the files
    (one line a class), else ImageNet's 1000.
    """

    def __init__(self, file_pattern, schema="imagenet", label_offset=None):
        if schema not in SCHEMAS:
            raise ValueError(f"`schema` must be one of {tuple(SCHEMAS)}. Received: {schema!r}")
        self.files = list_files(file_pattern)
        self.schema, self.label_offset = schema, label_offset
        self._counts = None  # records per file, once counted
        labels = os.path.join(os.path.dirname(file_pattern), "labels.txt")
        self.num_classes = IMAGENET_CLASSES
        if tf.io.gfile.exists(labels):
            with tf.io.gfile.GFile(labels) as f:
                self.num_classes = sum(1 for line in f if line.strip())
        elif os.path.basename(file_pattern).startswith("train"):  # said once, not per split
            print(
                f"No labels.txt beside {file_pattern}: assuming ImageNet's {IMAGENET_CLASSES} "
                "classes (the converter writes labels.txt)"
            )

    def examples(self, *, training, input_context=None, deterministic=False, seed=0, boxes=False):
        """(JPEG bytes, label) of this pipeline's share, one pass; with
        `boxes`, (JPEG bytes, label, [N, 4] boxes)."""
        records = read_records(
            self.files,
            training=training,
            input_context=input_context,
            deterministic=deterministic,
            seed=seed,
        )
        return records.map(
            lambda r: parse(r, self.schema, self.label_offset, boxes),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )

    def has_bounding_boxes(self, records=BOX_PROBE_RECORDS):
        """Whether any of the first `records` records holds an annotated
        object (`BOX_KEYS`; the converter writes empty lists without boxes,
        and ImageNet annotates about 40% of its training images)."""
        if self.schema != "imagenet":
            return False
        for serialized in tf.data.TFRecordDataset(self.files).take(records):
            features = tf.train.Example.FromString(serialized.numpy()).features.feature
            if BOX_KEYS[0] in features and features[BOX_KEYS[0]].float_list.value:
                return True
        return False

    def count(self):
        return sum(self._file_counts())

    def evaluation_examples(self, input_context=None):
        """(JPEG bytes, label) of this pipeline's share, in file order: its
        own files (files i, i+N, ...) where there are at least as many files
        as pipelines, else every Nth record of all of them."""
        pipelines, index = _pipeline(input_context)
        files = self.files[index::pipelines] if len(self.files) >= pipelines else self.files
        records = tf.data.TFRecordDataset(files, buffer_size=READ_BUFFER_BYTES)
        if len(self.files) < pipelines:
            records = records.shard(pipelines, index)
        return records.map(lambda r: parse(r, self.schema, self.label_offset))

    def pipeline_counts(self, num_pipelines):
        """How many examples each of `num_pipelines` pipelines holds in
        `evaluation_examples`."""
        counts = self._file_counts()
        if len(counts) >= num_pipelines:
            return [sum(counts[i::num_pipelines]) for i in range(num_pipelines)]
        return _dealt(sum(counts), num_pipelines)

    def _file_counts(self):
        if self._counts is None:
            self._counts = [count_records([path]) for path in self.files]
        return self._counts

    def naming_bad_files(self):
        return naming_bad_files(self.files, self.schema)

    def fingerprint(self):
        """What identifies these files' contents, wherever they are moved:
        each file's name, size and a hash of its first bytes."""
        with concurrent.futures.ThreadPoolExecutor(RESCAN_THREADS) as pool:
            parts = list(pool.map(_file_fingerprint, self.files))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class TFDSSource:
    """A split of a TFDS image-classification data set (`imagenet2012` by
    default), read through tensorflow-datasets' builder from `data_dir`.

    Each input pipeline reads its own files (`tfds.ReadConfig` with the input
    context; TFDS refuses when there are fewer files than pipelines) and the
    images stay encoded (`SkipDecoding`) for the fused decode-and-crop.
    """

    def __init__(self, data_dir, split, name="imagenet2012"):
        try:
            import tensorflow_datasets as tfds  # an optional extra
        except ImportError:
            raise ValueError(
                f"--tfds_data_dir={data_dir} reads through tensorflow-datasets, which is not "
                "installed: pip install 'keras_lars[tfds]'"
            ) from None

        self._tfds = tfds
        self.split = split
        self.builder = tfds.builder(name, data_dir=data_dir)
        self.num_classes = self.builder.info.features["label"].num_classes
        self.files = []  # TFDS checks its own files when it prepares them

    def _as_dataset(self, *, training, input_context, deterministic, seed):
        tfds = self._tfds
        options = tf.data.Options()
        options.deterministic = deterministic
        read_config = tfds.ReadConfig(
            input_context=input_context,
            shuffle_seed=seed,
            shuffle_reshuffle_each_iteration=True,
            interleave_cycle_length=INTERLEAVE_CYCLE,
            options=options,
        )
        return self.builder.as_dataset(
            split=self.split,
            shuffle_files=training,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def examples(self, *, training, input_context=None, deterministic=False, seed=0, boxes=False):
        dataset = self._as_dataset(
            training=training,
            input_context=input_context,
            deterministic=deterministic,
            seed=seed,
        )
        if boxes:  # TFDS's imagenet2012 has none
            return dataset.map(
                lambda e: (e["image"], tf.cast(e["label"], tf.int32), tf.zeros([0, 4]))
            )
        return dataset.map(lambda e: (e["image"], tf.cast(e["label"], tf.int32)))

    def has_bounding_boxes(self):
        return False

    def count(self):
        dataset = self._as_dataset(training=False, input_context=None, deterministic=True, seed=0)
        return int(dataset.cardinality())

    def evaluation_examples(self, input_context=None):
        """Every Nth example of the split: TFDS assigns its files to pipelines
        itself, so each pipeline reads the split and keeps its share."""
        pipelines, index = _pipeline(input_context)
        return self.examples(training=False, deterministic=True).shard(pipelines, index)

    def pipeline_counts(self, num_pipelines):
        return _dealt(self.count(), num_pipelines)

    def naming_bad_files(self):
        return contextlib.nullcontext()

    def fingerprint(self):
        info = self.builder.info
        text = f"{info.name} {info.version} {self.split} {self.count()}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_fingerprint(path, head_bytes=FINGERPRINT_BYTES):
    with tf.io.gfile.GFile(path, "rb") as f:
        head = f.read(head_bytes)
    size = tf.io.gfile.stat(path).length
    return f"{os.path.basename(path)} {size} {hashlib.sha256(head).hexdigest()}"


def _pipeline(input_context):
    """(number of input pipelines, this one's index)."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def _dealt(total, num_pipelines):
    """Each pipeline's count when `total` examples are dealt round-robin."""
    return [len(range(i, total, num_pipelines)) for i in range(num_pipelines)]


def decode_and_random_crop(image_bytes, image_size, seed, preprocessing, boxes=None):
    """An Inception-style random crop covering part of one of `boxes` ([N,
    4], normalised; none: the whole image), decoded directly from the JPEG
    and resized; if `max_attempts` find none, the evaluation crop or the
    whole image, as `preprocessing.centre_fallback` says."""
    shape = tf.io.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        tf.zeros([1, 0, 4]) if boxes is None else tf.reshape(boxes, [1, -1, 4]),
        seed=seed,
        min_object_covered=preprocessing.min_object_covered,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=preprocessing.area_range,
        max_attempts=preprocessing.max_attempts,
        use_image_if_no_bounding_boxes=True,
    )

    def crop():
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.image.resize(
            tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3),
            [image_size, image_size],
            method=preprocessing.resize_method,
        )

    if not preprocessing.centre_fallback:
        return crop()
    # The sampler returns the whole image when it fails: use the centre crop.
    whole = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    return tf.cond(
        whole, lambda: decode_and_centre_crop(image_bytes, image_size, preprocessing), crop
    )


def decode_and_centre_crop(image_bytes, image_size, preprocessing):
    """The evaluation crop: the centre `eval_crop_fraction` of the short
    side, resized; or, with `eval_crop="short_side"`, the image resized to a
    short side of 256/224 of the input size, aspect kept, then its centre."""
    if preprocessing.eval_crop == "short_side":
        return resize_short_side_and_centre_crop(image_bytes, image_size, preprocessing)
    shape = tf.io.extract_jpeg_shape(image_bytes)
    height, width = shape[0], shape[1]
    side = tf.cast(
        preprocessing.eval_crop_fraction * tf.cast(tf.minimum(height, width), tf.float32),
        tf.int32,
    )
    window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    return tf.image.resize(image, [image_size, image_size], method=preprocessing.resize_method)


def resize_short_side_and_centre_crop(image_bytes, image_size, preprocessing):
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short_side = round(image_size * EVAL_SHORT_SIDE)
    scale = short_side / tf.reduce_min(shape)
    # At least the short side: rounding must leave room for the crop.
    resized = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), short_side)
    image = tf.image.resize(image, resized, method=preprocessing.resize_method)
    top = (resized[0] - image_size) // 2
    left = (resized[1] - image_size) // 2
    return image[top : top + image_size, left : left + image_size]


def caffe_crop(image_bytes, training, image_size, seed, preprocessing):
    """Caffe's AlexNet input: the image squashed to a square (256² for a
    227² input), then a random crop of the input size, or the centre one."""
    resized = round(image_size * preprocessing.caffe_resize / 227)
    image = tf.image.resize(
        tf.io.decode_jpeg(image_bytes, channels=3), [resized, resized], method="bilinear"
    )
    if training:
        return tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=seed)
    offset = (resized - image_size) // 2
    return image[offset : offset + image_size, offset : offset + image_size]


def preprocess(
    image_bytes, training, image_size=IMAGE_SIZE, preprocessing=None, seed=None, boxes=None
):
    """An `image_size`² uint8 RGB image (normalised later, on the device),
    cropped and flipped as `preprocessing` (a `Preprocessing` or its name)
    says; a training crop around one of `boxes` ([N, 4]) if given."""
    preprocessing = _preprocessing(preprocessing)
    crop_seed, flip_seed = (
        tf.unstack(tf.random.experimental.stateless_split(seed, 2)) if training else (None, None)
    )
    if preprocessing.crop == "caffe":
        image = caffe_crop(image_bytes, training, image_size, crop_seed, preprocessing)
    elif training:
        image = decode_and_random_crop(image_bytes, image_size, crop_seed, preprocessing, boxes)
    else:
        image = decode_and_centre_crop(image_bytes, image_size, preprocessing)
    if training:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    # Rounded, not truncated: resizing leaves values between the integers.
    return tf.cast(tf.clip_by_value(image + 0.5, 0.0, 255.0), tf.uint8)


def _preprocessing(preprocessing):
    if preprocessing is None:
        return PREPROCESSING[DEFAULT_PREPROCESSING]
    if isinstance(preprocessing, str):
        if preprocessing not in PREPROCESSING:
            raise ValueError(
                f"`preprocessing` must be one of {tuple(PREPROCESSING)}. "
                f"Received: preprocessing={preprocessing!r}"
            )
        return PREPROCESSING[preprocessing]
    return preprocessing


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
    preprocessing = _preprocessing(preprocessing)
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
        # One random stream per (seed, pipeline), one seed per element in it.
        stream = seed * MAX_INPUT_PIPELINES + pipeline
        element_seed = tf.stack([tf.cast(stream, tf.int64), index])
        image = preprocess(image_bytes, training, image_size, preprocessing, element_seed, *boxes)
        return image, label

    dataset = examples.map(
        preprocess_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return tune_for_accelerators(dataset.prefetch(tf.data.AUTOTUNE), threads)


def checked_label(label, num_classes):
    """`label`, with an assertion that it lies in [0, num_classes) (none if
    `num_classes` is None)."""
    if num_classes is None:
        return label
    message = (
        f"Label outside [0, {num_classes}): is the label offset right? The converter's "
        "labels are 1..N (offset 1), TFDS's 0..N-1 (offset 0)."
    )
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(label, message=message),
            tf.debugging.assert_less(label, num_classes, message=message),
        ]
    ):
        return tf.identity(label)


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
    preprocessing = _preprocessing(preprocessing)
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


def _first_problem(path, schema):
    """ "path: record N: what is wrong", or None if the file reads and decodes."""
    count = 0
    try:
        for serialized in tf.data.TFRecordDataset(path):
            image_bytes, _ = parse(serialized, schema, 0)
            height, width = tf.io.decode_jpeg(image_bytes, channels=3).shape[:2]
            if min(height, width) < MIN_IMAGE_SIDE:
                return (
                    f"{path}: record {count}: a {height}x{width} image, below the "
                    f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} the crops need"
                )
            count += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        return f"{path}: record {count}: {_cause(error.message)}"
    return None


def _cause(message):
    """What a TensorFlow error says, without its op framing ("{{function_node
    ...}}" before, "[Op:...]" after)."""
    line = message.strip().splitlines()[0]
    line = re.sub(r"^(\{\{function_node [^}]*\}\}\s*)+", "", line)
    return re.sub(r"\s*\[Op:\w+\]\s*$", "", line)


def find_first_bad_file(files, schema="imagenet", threads=RESCAN_THREADS):
    """The first problem found in `files` ("path: record N: what"), checking
    `threads` files at once with a progress bar; None if all are good."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(_first_problem, path, schema) for path in files]
        try:
            with tqdm(total=len(files), unit="file", desc="looking for the bad file") as bar:
                for future in concurrent.futures.as_completed(futures):
                    bar.update(1)
                    if future.result():
                        return future.result()
        finally:
            for future in futures:
                future.cancel()
    return None


def is_unreadable_data(error):
    """Whether a TensorFlow error says a record does not read or an image does
    not decode (the cases a file can be blamed for), as opposed to an error in
    the model or a bad setting. tf.data's errors surface through an
    iterator's GetNext op."""
    if isinstance(error, tf.errors.DataLossError):
        return True
    return "IteratorGetNext" in error.message and any(
        sign in error.message for sign in UNREADABLE_SIGNS
    )


@contextlib.contextmanager
def naming_bad_files(files, schema="imagenet"):
    """Re-raises tf.data's read and decode errors, which name no file, as a
    `BadDataError` that names one. Only those start the rescan; any other
    error is re-raised at once."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        if not is_unreadable_data(error):
            raise
        problem = find_first_bad_file(files, schema)
        if not problem:
            raise
        raise BadDataError(f"Bad input data: {problem}") from error
