"""Where the examples come from: (JPEG bytes, label) streams of a split,
each input pipeline's share of it, its size, classes and fingerprint.

- `TFRecordSource`: TFRecords written by `tools/imagenet_to_tfrecords.py` (or
  any file with the tensorflow/tpu schema: `image/encoded`, `image/class/label`
  in 1..1000), or TFDS-format files read directly (`schema="tfds"`);
- `TFDSSource`: TFDS `imagenet2012` through tensorflow-datasets' builder,
  keeping the JPEG bytes (`SkipDecoding`) for the fused decode-and-crop.

The label offset is explicit: `label_offset` is subtracted, so both give
0..999 by default.
"""

import concurrent.futures
import hashlib
import os

import tensorflow as tf

from .bad_data import naming_bad_files
from .records import BOX_KEYS
from .records import INTERLEAVE_CYCLE
from .records import READ_BUFFER_BYTES
from .records import SCHEMAS
from .records import count_records
from .records import list_files
from .records import parse
from .records import read_records

IMAGENET_CLASSES = 1000
FINGERPRINT_BYTES = 64 * 1024  # of each file, hashed to tell one data set from another
FINGERPRINT_THREADS = 8  # files hashed at once
BOX_PROBE_RECORDS = 1000  # read to tell whether the records hold boxes at all


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
        with concurrent.futures.ThreadPoolExecutor(FINGERPRINT_THREADS) as pool:
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
        # No files to rescan (TFDS checks its own when it prepares them): only
        # a label outside the classes is named.
        return naming_bad_files(self.files)

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
