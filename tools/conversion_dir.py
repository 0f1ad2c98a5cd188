"""The converter's work folder beside the shards it writes, and what readers
of the shards may take from it.

`OUT/.conversion/` (`WORK_DIR`) holds each shard while it is written
(`<shard>.partial`) and its statistics once it is (`<shard>.json`: its
records, per class, and the files skipped or re-encoded). The input pipeline
takes a shard's record count from there (`recorded_count`) instead of
reading the shard. Standard library only: training processes import it.
"""

import json
import os

WORK_DIR = ".conversion"  # unfinished shards and per-shard statistics


def stats_path(output_dir, name):
    """Where the statistics of shard `name` in `output_dir` are."""
    return os.path.join(output_dir, WORK_DIR, name + ".json")


def recorded_count(shard_path, gfile=None):
    """The records the converter wrote to the shard at `shard_path`, as its
    statistics say; None where there are none (a shard written otherwise).
    `gfile`: `tf.io.gfile`, for paths only TensorFlow opens (gs://); by
    default the local file system."""
    stats = stats_path(os.path.dirname(shard_path), os.path.basename(shard_path))
    exists, open_file = (gfile.exists, gfile.GFile) if gfile else (os.path.exists, open)
    if not exists(stats):
        return None
    with open_file(stats) as f:
        return json.load(f)["count"]
