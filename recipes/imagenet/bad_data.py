"""Bad input data, found and named: the check that a label lies among the
classes, and the rescan that names the file behind tf.data's read and decode
errors (which name none). `naming_bad_files` turns both into errors of this
module's types, so that what catches them matches a type, not text.

    with bad_data.naming_bad_files(files):
        model.fit(dataset, ...)
"""

import concurrent.futures
import contextlib
import re

import tensorflow as tf
from tqdm import tqdm

from .records import parse

RESCAN_THREADS = 8  # files checked at once when looking for a bad one
# Words in TensorFlow's messages for records that do not read or images that
# do not decode.
UNREADABLE_SIGNS = (
    "JPEG",
    "Could not parse example",
    "corrupted record",
    "could not be found",  # a feature the schema needs is missing
    "Data types don't match",  # a feature of another type (a float label)
)
# In `checked_label`'s assertion, and how `naming_bad_files` finds its line in
# TensorFlow's error.
LABEL_QUESTION = "is the label offset right?"
# The smallest side an image may have: the centre crop takes 0.875 of it,
# which leaves no pixel of a 1-pixel image (measured on every preprocessing).
MIN_IMAGE_SIDE = 2


class BadDataError(RuntimeError):
    """A TFRecord file that cannot be read, or an image that cannot be decoded."""


class LabelOutOfRange(BadDataError):
    """A label outside [0, num_classes) (`checked_label`): a wrong label
    offset, or records of another data set. Its text is the assertion's line."""


def checked_label(label, num_classes):
    """`label`, with an assertion that it lies in [0, num_classes) (none if
    `num_classes` is None)."""
    if num_classes is None:
        return label
    message = (
        f"Label outside [0, {num_classes}): {LABEL_QUESTION} The converter's "
        "labels are 1..N (offset 1), TFDS's 0..N-1 (offset 0)."
    )
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(label, message=message),
            tf.debugging.assert_less(label, num_classes, message=message),
        ]
    ):
        return tf.identity(label)


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
    return (
        isinstance(error, tf.errors.InvalidArgumentError)
        and "IteratorGetNext" in error.message
        and any(sign in error.message for sign in UNREADABLE_SIGNS)
    )


def label_out_of_range(error):
    """The `LabelOutOfRange` a TensorFlow error stands for, or None: the line
    of `checked_label`'s assertion, which comes a few lines into the error
    (after "Graph execution error:" and TensorFlow's framing), or on its first
    line after a "{{function_node ...}}" (JAX's input iterator)."""
    lines = [line.strip() for line in error.message.strip().splitlines()]
    ours = [line for line in lines if LABEL_QUESTION in line]
    return LabelOutOfRange(_cause(ours[0])) if ours else None


@contextlib.contextmanager
def naming_bad_files(files, schema="imagenet"):
    """Re-raises tf.data's errors about the data as this module's: a label
    outside the classes as a `LabelOutOfRange`, at once; a read or decode
    error, which names no file, as a `BadDataError` that names the first of
    `files` holding one (with no `files`, none is looked for). Only those
    start the rescan; any other error is re-raised at once."""
    try:
        yield
    except tf.errors.OpError as error:
        out_of_range = label_out_of_range(error)
        if out_of_range:
            raise out_of_range from error
        if not files or not is_unreadable_data(error):
            raise
        problem = find_first_bad_file(files, schema)
        if not problem:
            raise
        raise BadDataError(f"Bad input data: {problem}") from error
