r"""Converts ILSVRC-2012 (ImageNet) to sharded TFRecords.

Reads either the extracted layout or the official archives, without extracting
them to disk:

    RAW/train/<wnid>/*.JPEG                 or RAW/ILSVRC2012_img_train.tar
    RAW/validation/*.JPEG + --validation_labels
      (or RAW/validation/<wnid>/*.JPEG)     or RAW/ILSVRC2012_img_val.tar

and writes `train-%05d-of-%05d` and `validation-%05d-of-%05d` shards with the
schema of tensorflow/tpu's imagenet_to_gcs.py (labels 1..1000 by sorted wnid),
plus `labels.txt` (label, wnid, name) and `summary.json` (counts, skipped files).

    python -m tools.imagenet_to_tfrecords --raw_data_dir=RAW --output_dir=OUT \
        --validation_labels=RAW/LOC_val_wnids.txt --num_workers=16

Every image is decoded; CMYK, greyscale and PNG files are re-encoded as RGB
JPEG. Undecodable files are listed with their paths and skipped, and the run
exits non-zero unless --allow_skips. Shards are written under OUT/.conversion/
and renamed when complete, so a killed run leaves no partial shard under a final
name and a rerun only writes the missing shards, byte-identical to an
uninterrupted run. --verify reads every shard back.
"""

import collections
import dataclasses
import io
import json
import multiprocessing
import os
import random
import re
import sys
import tarfile
import time

from absl import app
from absl import flags
from PIL import Image
from PIL import UnidentifiedImageError
from tqdm import tqdm

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VALIDATION_ARCHIVE = "ILSVRC2012_img_val.tar"
SPLITS = ("train", "validation")
JPEG_QUALITY = 95  # for re-encoded images only; RGB JPEGs are kept as is
SHUFFLE_SEED = 12345  # training files are shuffled before sharding
WORK_DIR = ".conversion"  # unfinished shards and per-shard statistics
SHARD_NAME = re.compile(r"^(train|validation)-(\d{5})-of-(\d{5})$")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image: a file on disk, or a byte range inside an uncompressed tar."""

    filename: str
    synset: str
    source: str
    offset: int = -1
    size: int = -1
    display: str = ""  # the path shown in reports

    def read(self):
        with open(self.source, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)

    @property
    def where(self):
        return self.display or self.source


class BadImage(Exception):
    pass


# --- Listing -----------------------------------------------------------------


def list_train(raw_dir):
    tree = os.path.join(raw_dir, "train")
    archive = os.path.join(raw_dir, TRAIN_ARCHIVE)
    if os.path.isdir(tree):
        return [
            _file_ref(os.path.join(tree, wnid, name), wnid)
            for wnid in sorted(os.listdir(tree))
            if os.path.isdir(os.path.join(tree, wnid))
            for name in sorted(os.listdir(os.path.join(tree, wnid)))
        ]
    if os.path.isfile(archive):
        return _list_train_archive(archive)
    raise FileNotFoundError(f"No training data: neither {tree} nor {archive} exists")


def list_validation(raw_dir, labels_file):
    tree = os.path.join(raw_dir, "validation")
    archive = os.path.join(raw_dir, VALIDATION_ARCHIVE)
    if os.path.isdir(tree):
        entries = sorted(os.listdir(tree))
        if entries and all(os.path.isdir(os.path.join(tree, e)) for e in entries):
            return [
                _file_ref(os.path.join(tree, wnid, name), wnid)
                for wnid in entries
                for name in sorted(os.listdir(os.path.join(tree, wnid)))
            ]
        files = [(name, os.path.join(tree, name)) for name in entries]
        make = lambda name, path, wnid: _file_ref(path, wnid)  # noqa: E731
    elif os.path.isfile(archive):
        with tarfile.open(archive) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile()), key=lambda m: os.path.basename(m.name)
            )
        files = [(os.path.basename(m.name), m) for m in members]
        make = lambda name, m, wnid: ImageRef(  # noqa: E731
            name, wnid, archive, m.offset_data, m.size, f"{archive}:{m.name}"
        )
    else:
        raise FileNotFoundError(f"No validation data: neither {tree} nor {archive} exists")
    wnids = _read_validation_labels(labels_file, len(files))
    return [make(name, where, wnid) for (name, where), wnid in zip(files, wnids)]


def _file_ref(path, wnid):
    return ImageRef(os.path.basename(path), wnid, path)


def _list_train_archive(archive):
    """Indexes a tar of per-class tars; each image is a byte range of it."""
    refs = []
    with tarfile.open(archive) as outer:
        for member in sorted(outer.getmembers(), key=lambda m: m.name):
            if not member.name.endswith(".tar"):
                continue
            wnid = os.path.basename(member.name)[: -len(".tar")]
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for image in sorted(inner.getmembers(), key=lambda m: m.name):
                    if image.isfile():
                        refs.append(
                            ImageRef(
                                os.path.basename(image.name),
                                wnid,
                                archive,
                                member.offset_data + image.offset_data,
                                image.size,
                                f"{archive}:{member.name}/{image.name}",
                            )
                        )
    return refs


def _read_validation_labels(labels_file, expected):
    if not labels_file:
        raise ValueError(
            "--validation_labels is needed for a flat validation set: "
            "one wnid per line, in sorted-filename order"
        )
    with open(labels_file) as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    if len(wnids) != expected:
        raise ValueError(f"{labels_file} has {len(wnids)} labels for {expected} validation images")
    return wnids


def read_synset_names(path):
    """`wnid name...` per line (LOC_synset_mapping.txt style) -> {wnid: name}."""
    if not path:
        return {}
    with open(path) as f:
        return dict(line.rstrip("\n").split(maxsplit=1) for line in f if line.strip())


# --- Encoding ----------------------------------------------------------------


def rgb_jpeg(data, where):
    """(JPEG bytes, height, width, what was re-encoded or None); BadImage if
    the file does not decode completely."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format == "JPEG" and image.mode == "RGB":
                return data, image.height, image.width, None
            reason = f"{image.format} {image.mode}"
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
            return out.getvalue(), image.height, image.width, reason
    except UnidentifiedImageError:
        raise BadImage(f"{where}: not an image format Pillow recognises") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImage(f"{where}: {type(error).__name__}: {error}") from None


def make_example(tf, ref, jpeg, height, width, label, name):
    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {
        "image/encoded": bytes_feature(jpeg),
        "image/format": bytes_feature(b"JPEG"),
        "image/class/label": int_feature(label),
        "image/class/synset": bytes_feature(ref.synset.encode()),
        "image/height": int_feature(height),
        "image/width": int_feature(width),
        "image/colorspace": bytes_feature(b"RGB"),
        "image/channels": int_feature(3),
        "image/filename": bytes_feature(ref.filename.encode()),
    }
    if name:
        features["image/class/text"] = bytes_feature(name.encode())
    return tf.train.Example(features=tf.train.Features(feature=features))


# --- Shards ------------------------------------------------------------------


@dataclasses.dataclass
class ShardJob:
    output_dir: str
    name: str
    refs: list
    labels: dict  # wnid -> label
    names: dict  # wnid -> human-readable name


def shard_jobs(split, refs, num_shards, output_dir, labels, names):
    if split == "train":
        refs = list(refs)
        random.Random(SHUFFLE_SEED).shuffle(refs)
    num_shards = max(1, min(num_shards, len(refs)))
    bounds = [len(refs) * i // num_shards for i in range(num_shards + 1)]
    return [
        ShardJob(
            output_dir,
            f"{split}-{i:05d}-of-{num_shards:05d}",
            refs[bounds[i] : bounds[i + 1]],
            labels,
            names,
        )
        for i in range(num_shards)
    ]


def stats_path(output_dir, name):
    return os.path.join(output_dir, WORK_DIR, name + ".json")


def shard_is_done(job):
    return os.path.exists(os.path.join(job.output_dir, job.name)) and os.path.exists(
        stats_path(job.output_dir, job.name)
    )


def write_shard(job):
    """Writes one shard: to a temporary name, then its statistics, then the
    rename, so a shard under its final name is always complete."""
    import tensorflow as tf

    work = os.path.join(job.output_dir, WORK_DIR)
    partial = os.path.join(work, job.name + ".partial")
    stats = dict(count=0, class_counts=collections.Counter(), skipped=[], reencoded=[])
    with tf.io.TFRecordWriter(partial) as writer:
        for ref in job.refs:
            try:
                jpeg, height, width, reencoded = rgb_jpeg(ref.read(), ref.where)
            except BadImage as error:
                stats["skipped"].append(str(error))
                continue
            if reencoded:
                stats["reencoded"].append(f"{ref.where}: {reencoded}")
            example = make_example(
                tf, ref, jpeg, height, width, job.labels[ref.synset], job.names.get(ref.synset)
            )
            writer.write(example.SerializeToString())
            stats["count"] += 1
            stats["class_counts"][ref.synset] += 1
    _write_json_atomically(stats_path(job.output_dir, job.name), stats)
    os.replace(partial, os.path.join(job.output_dir, job.name))
    return job.name, stats


def _write_json_atomically(path, data):
    with open(path + ".partial", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".partial", path)


def convert(
    raw_dir,
    output_dir,
    validation_labels=None,
    synset_names=None,
    train_shards=1024,
    validation_shards=128,
    num_workers=1,
    splits=SPLITS,
):
    """Converts the splits; returns a summary dict (also in summary.json)."""
    for name, value in (("train_shards", train_shards), ("validation_shards", validation_shards)):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
    unknown_splits = set(splits) - set(SPLITS)
    if unknown_splits:
        raise ValueError(f"`splits` must be among {SPLITS}. Received: {sorted(unknown_splits)}")
    os.makedirs(os.path.join(output_dir, WORK_DIR), exist_ok=True)
    refs = {"train": list_train(raw_dir)}
    if "validation" in splits:
        refs["validation"] = list_validation(raw_dir, validation_labels)
    synsets = sorted({r.synset for r in refs["train"]})
    unknown = {r.synset for r in refs.get("validation", [])} - set(synsets)
    if unknown:
        raise ValueError(f"Validation wnids not among the training classes: {sorted(unknown)[:5]}")
    labels = {wnid: i + 1 for i, wnid in enumerate(synsets)}  # 0 stays unused
    names = read_synset_names(synset_names)
    with open(os.path.join(output_dir, "labels.txt"), "w") as f:
        for wnid in synsets:
            f.write(f"{labels[wnid]}\t{wnid}\t{names.get(wnid, '')}\n")

    shards = {"train": train_shards, "validation": validation_shards}
    jobs = [
        job
        for split in splits
        for job in shard_jobs(split, refs[split], shards[split], output_dir, labels, names)
    ]
    todo = [job for job in jobs if not shard_is_done(job)]
    start = time.time()
    written = 0
    with tqdm(total=sum(len(j.refs) for j in todo), unit="img", desc="converting") as bar:
        for _, stats in _map(write_shard, todo, num_workers):
            bar.update(stats["count"] + len(stats["skipped"]))
            written += stats["count"]
    seconds = time.time() - start

    summary = {
        "seconds": round(seconds, 1),
        "images_per_second": round(written / seconds, 1) if seconds else 0.0,
        "shards_written_this_run": len(todo),
        "shards_already_done": len(jobs) - len(todo),
    }
    for split in splits:
        per_shard = []
        for job in jobs:
            if job.name.startswith(split + "-"):
                with open(stats_path(output_dir, job.name)) as f:
                    per_shard.append(json.load(f))
        class_counts = collections.Counter()
        for s in per_shard:
            class_counts.update(s["class_counts"])
        summary[split] = {
            "images": sum(s["count"] for s in per_shard),
            "shards": len(per_shard),
            "class_counts": dict(sorted(class_counts.items())),
            "skipped": sorted(x for s in per_shard for x in s["skipped"]),
            "reencoded": sorted(x for s in per_shard for x in s["reencoded"]),
        }
    _write_json_atomically(os.path.join(output_dir, "summary.json"), summary)
    return summary


def _map(function, jobs, num_workers):
    if num_workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    # spawn: forking a process that has imported TensorFlow is unsafe.
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        yield from pool.imap_unordered(function, jobs)


# --- Verification ------------------------------------------------------------


def verify(output_dir):
    """Reads every shard back; returns a list of problems (empty if none)."""
    labels_file = os.path.join(output_dir, "labels.txt")
    if not os.path.exists(labels_file):
        return [f"{labels_file}: missing; is {output_dir} the converter's output?"]
    with open(labels_file) as f:
        num_classes = sum(1 for line in f if line.strip())
    shards = collections.defaultdict(dict)
    for name in sorted(os.listdir(output_dir)):
        match = SHARD_NAME.match(name)
        if match:
            shards[match[1]][int(match[2])] = (name, int(match[3]))
    if not shards:
        return [f"{output_dir}: no shards"]
    problems = []
    seen = {}  # filename -> the shard it was first found in
    for split, found in shards.items():
        total = {of for _, of in found.values()}
        if len(total) != 1:
            problems.append(f"{split}: shards disagree on their count: {sorted(total)}")
        missing = sorted(set(range(max(total))) - set(found))
        if missing:
            problems.append(f"{split}: missing shards {missing[:10]}")
        for index in sorted(found):
            problems += _verify_shard(output_dir, found[index][0], num_classes, seen)
    return problems


def _verify_shard(output_dir, name, num_classes, seen):
    """Problems with one shard: labels, decoding, duplicates (updating `seen`),
    and its record count against the statistics written with it."""
    import tensorflow as tf

    feature_spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
    }
    path = os.path.join(output_dir, name)
    problems = []
    count = 0
    try:
        for record in tf.data.TFRecordDataset(path):
            example = tf.io.parse_single_example(record, feature_spec)
            filename = example["image/filename"].numpy().decode()
            label = int(example["image/class/label"])
            if not 1 <= label <= num_classes:
                problems.append(f"{path}: {filename} has label {label}, outside 1..{num_classes}")
            try:
                tf.io.decode_jpeg(example["image/encoded"], channels=3)
            except tf.errors.InvalidArgumentError:
                problems.append(f"{path}: {filename} does not decode")
            if filename in seen:
                problems.append(f"{path}: {filename} also in {seen[filename]}")
            seen[filename] = name
            count += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        return problems + [f"{path}: unreadable after {count} records: {error.message}"]
    stats = stats_path(output_dir, name)
    if os.path.exists(stats):
        with open(stats) as f:
            expected = json.load(f)["count"]
        if count != expected:
            problems.append(f"{path}: {count} records, expected {expected}")
    return problems


# --- Command line ------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so modules can share flag names."""
    flags.DEFINE_string(
        "raw_data_dir",
        None,
        f"Extracted ImageNet, or the directory holding {TRAIN_ARCHIVE} and {VALIDATION_ARCHIVE}.",
    )
    flags.DEFINE_string("output_dir", None, "Where the shards go.")
    flags.DEFINE_string(
        "validation_labels",
        None,
        "One wnid per line, in sorted-filename "
        "order; needed unless validation/ is sorted into wnid folders.",
    )
    flags.DEFINE_string(
        "synset_names",
        None,
        "Optional `wnid name` lines (e.g. "
        "LOC_synset_mapping.txt) for labels.txt and image/class/text.",
    )
    flags.DEFINE_integer("train_shards", 1024, "Training shards.")
    flags.DEFINE_integer("validation_shards", 128, "Validation shards.")
    flags.DEFINE_integer("num_workers", os.cpu_count(), "Worker processes.")
    flags.DEFINE_list("splits", list(SPLITS), "Which splits to convert.")
    flags.DEFINE_bool(
        "allow_skips", False, "Exit 0 even if some files did not decode (they are still listed)."
    )
    flags.DEFINE_bool("verify", False, "Only read back and check existing shards.")


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    if FLAGS.verify:
        problems = verify(FLAGS.output_dir)
        for problem in problems:
            print("PROBLEM", problem)
        print(f"verify: {len(problems)} problem(s) in {FLAGS.output_dir}")
        return 1 if problems else 0
    if not FLAGS.raw_data_dir:
        raise app.UsageError("--raw_data_dir is required")
    summary = convert(
        FLAGS.raw_data_dir,
        FLAGS.output_dir,
        FLAGS.validation_labels,
        FLAGS.synset_names,
        FLAGS.train_shards,
        FLAGS.validation_shards,
        FLAGS.num_workers,
        tuple(FLAGS.splits),
    )
    skipped = 0
    for split in FLAGS.splits:
        s = summary[split]
        counts = list(s["class_counts"].values()) or [0]
        print(
            f"{split}: {s['images']} images in {s['shards']} shards, "
            f"{len(counts)} classes ({min(counts)}..{max(counts)} per class), "
            f"{len(s['reencoded'])} re-encoded, {len(s['skipped'])} skipped"
        )
        for line in s["skipped"]:
            print(f"  SKIPPED {line}")
        skipped += len(s["skipped"])
    print(
        f"{summary['images_per_second']} images/s; {summary['shards_written_this_run']} "
        f"shards written, {summary['shards_already_done']} already done; "
        f"details in {os.path.join(FLAGS.output_dir, 'summary.json')}"
    )
    if skipped and not FLAGS.allow_skips:
        print(
            f"{skipped} file(s) could not be decoded (listed above). The shards "
            "are complete without them; rerun with --allow_skips to accept.",
            file=sys.stderr,
        )
        return 1
    return 0


def run():
    """The `keras-lars-imagenet-to-tfrecords` console script."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
