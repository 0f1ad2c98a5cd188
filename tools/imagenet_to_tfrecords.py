r"""Converts ILSVRC-2012 (ImageNet) to sharded TFRecords.

Reads ImageNet as people download it, and says which layout it found
(`tools/imagenet_layouts.py`): the extracted tree, the three official files
(`ILSVRC2012_img_train.tar`, `ILSVRC2012_img_val.tar`,
`ILSVRC2012_devkit_t12.tar.gz`, read in place, never extracted), or the
extracted Kaggle archive (`ILSVRC/Data/CLS-LOC/`, `LOC_val_solution.csv`,
`LOC_synset_mapping.txt`). Validation labels and class names come from the
devkit or the Kaggle files unless --validation_labels / --synset_names say
otherwise.

and writes `train-%05d-of-%05d` and `validation-%05d-of-%05d` shards with the
schema of tensorflow/tpu's imagenet_to_gcs.py (labels 1..1000 by sorted wnid),
plus `labels.txt` (label, wnid, name) and `summary.json` (counts, skipped files).

    python -m tools.imagenet_to_tfrecords --raw_data_dir=RAW --output_dir=OUT

Every image is decoded, by Pillow and by tf.io.decode_jpeg as training
decodes it; CMYK, greyscale and PNG files, and JPEGs that TensorFlow cannot
decode (lossless ones), are re-encoded as RGB JPEG. Files that cannot be read
or decoded (a broken symbolic link, a folder inside a class folder, a
truncated JPEG) or are smaller than training's crops need (MIN_IMAGE_SIDE)
are listed with their paths and skipped, and the run exits non-zero unless
--allow_skips; a class left without images is refused even then. Shards are
written under OUT/.conversion/ and renamed when complete, so a killed run
leaves no partial shard under a final name and a rerun only writes the
missing shards, byte-identical to an uninterrupted run, and the shards whose
statistics (OUT/.conversion/*.json) do not describe their inputs or whose
skipped files now read. OUT/inputs.json records what the shards were written
from (the layout, the file lists, label map, names and boxes): a rerun pointed
at other inputs is refused, naming what differs. --verify reads every shard
back.

--bounding_boxes=DIR (the extracted ILSVRC2012_bbox_train_v2.tar.gz, read by
`tools/imagenet_boxes.py`) adds each training image's annotated boxes, as
tensorflow/tpu's build_imagenet_data.py stores them: image/object/bbox/xmin,
ymin, xmax and ymax (fractions of the image) and image/object/bbox/label (the
image's label, once per box). Every example has these keys, so every record
parses with one spec: their lists are empty for an image without an
annotation file, for every validation image, and for every image when
--bounding_boxes is not given.

Everything a user can fix (a flag, an input, an output directory that is a
file, a full disk) stops the run with one line naming the path or flag and
what is wrong, and exit status 1; the shards already written are kept for the
rerun.
"""

import collections
import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import multiprocessing
import os
import random
import re
import sys
import time

from absl import app
from absl import flags
from PIL import Image
from PIL import UnidentifiedImageError
from tqdm import tqdm

from . import imagenet_boxes
from . import imagenet_layouts
from .conversion_dir import WORK_DIR
from .conversion_dir import stats_path
from .imagenet_layouts import ConversionError

SPLITS = ("train", "validation")
JPEG_QUALITY = 95  # for re-encoded images only; RGB JPEGs are kept as is
SHUFFLE_SEED = 12345  # training files are shuffled before sharding
SHARD_NAME = re.compile(r"^(train|validation)-(\d{5})-of-(\d{5})$")
INPUTS_RECORD = "inputs.json"  # what the shards were written from
# Parts of that record added since its first version, and what a record
# without one stands for: shards written without boxes.
RECORDED_LATER = {"bounding boxes": imagenet_boxes.NO_BOXES}
BOX_KEYS = tuple(f"image/object/bbox/{c}" for c in imagenet_boxes.COORDINATES)
BOX_LABEL_KEY = "image/object/bbox/label"
# The shortest side training can crop: the evaluation crop, which the random
# crop falls back to, is int(eval_crop_fraction x the short side) pixels
# (0.875 in recipes/imagenet/preprocessing.py), none below 2 pixels.
MIN_IMAGE_SIDE = 2
# Each worker process imports TensorFlow (about 0.5 to 1 GB resident), so the
# default does not follow a 96-core host's core count into tens of GB.
MAX_DEFAULT_WORKERS = 8
# Write failures that the disk, not the converter, caused: errno -> in words.
FULL = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file size limit (ulimit -f) was reached",
}


class BadImage(Exception):
    pass


# --- Encoding ----------------------------------------------------------------


def read_image(ref):
    """The bytes of one image; BadImage naming it if it cannot be read."""
    try:
        return ref.read()
    except OSError as error:
        if error.errno == errno.ENOENT and os.path.islink(ref.source):
            why = f"a broken symbolic link to {os.readlink(ref.source)}"
        elif error.errno == errno.EISDIR:
            why = "a folder, not an image"
        else:
            why = imagenet_layouts.reason(error)
        raise BadImage(f"{ref.where}: cannot be read: {why}") from None


def training_jpeg(ref):
    """(JPEG bytes that training decodes, height, width, what was re-encoded
    or None); BadImage naming `ref` if it cannot be."""
    return rgb_jpeg(read_image(ref), ref.where)


def rgb_jpeg(data, where):
    """(JPEG bytes, height, width, what was re-encoded or None); BadImage if
    the file does not decode completely, is smaller than training's crops
    need, or does not decode with tf.io.decode_jpeg even re-encoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            height, width = image.height, image.width
            if min(height, width) < MIN_IMAGE_SIDE:
                raise BadImage(
                    f"{where}: {width}x{height} pixels; training's crops need at least "
                    f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
                )
            if image.format == "JPEG" and image.mode == "RGB":
                if decodes(data):
                    return data, height, width, None
                # Pillow's libjpeg reads processes that TensorFlow's does not.
                reason = "JPEG RGB that tf.io.decode_jpeg cannot decode"
            else:
                reason = f"{image.format} {image.mode}"
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    except UnidentifiedImageError:
        raise BadImage(f"{where}: not an image format Pillow recognises") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImage(f"{where}: {type(error).__name__}: {error}") from None
    if not decodes(out.getvalue()):
        raise BadImage(f"{where}: tf.io.decode_jpeg cannot decode it, even re-encoded")
    return out.getvalue(), height, width, reason


def decodes(jpeg):
    """Whether tf.io.decode_jpeg, as training calls it, decodes `jpeg`."""
    import tensorflow as tf  # only once Pillow has decoded an image

    try:
        tf.io.decode_jpeg(jpeg, channels=3)
        return True
    except tf.errors.InvalidArgumentError:
        return False


def make_example(tf, ref, jpeg, height, width, label, name, boxes=()):
    """tensorflow/tpu's Example for one image; `boxes` are its (xmin, ymin,
    xmax, ymax) fractions of the image, written as one list per coordinate."""

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    def floats_feature(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

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
        BOX_LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label] * len(boxes))),
    }
    for i, key in enumerate(BOX_KEYS):
        features[key] = floats_feature([box[i] for box in boxes])
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
    boxes: dict  # file name -> its boxes, for this shard's images that have some


def shard_jobs(split, refs, num_shards, output_dir, labels, names, boxes):
    if split == "train":
        refs = list(refs)
        random.Random(SHUFFLE_SEED).shuffle(refs)
    num_shards = max(1, min(num_shards, len(refs)))
    bounds = [len(refs) * i // num_shards for i in range(num_shards + 1)]
    jobs = []
    for i in range(num_shards):
        shard_refs = refs[bounds[i] : bounds[i + 1]]
        # Each job carries only its own images' boxes: a job is pickled to a
        # worker, and all of ImageNet's boxes are half a million entries.
        shard_boxes = {r.filename: boxes[r.filename] for r in shard_refs if r.filename in boxes}
        jobs.append(
            ShardJob(
                output_dir,
                f"{split}-{i:05d}-of-{num_shards:05d}",
                shard_refs,
                labels,
                names,
                shard_boxes,
            )
        )
    return jobs


class StatsProblem(ConversionError):
    """A shard's statistics that are damaged or disagree with the shard."""


def read_stats(output_dir, name, refs=None, records=None):
    """The statistics written with shard `name`; StatsProblem naming their
    file if they cannot be read, are not what `write_shard` writes, or
    disagree with the shard: with its count of `records`, as read back, or
    with its inputs, `refs`, each of which they must count once."""
    path = stats_path(output_dir, name)
    try:
        with open(path) as f:
            stats = json.load(f)
    except (OSError, ValueError) as error:
        raise StatsProblem(f"{path}: cannot be read ({imagenet_layouts.reason(error)})") from None
    if not _stats_shaped(stats):
        raise StatsProblem(f"{path}: damaged (not the statistics the converter writes)")
    if records is not None and stats["count"] != records:
        raise StatsProblem(
            f"{path}: {stats['count']} records, but {os.path.join(output_dir, name)} holds "
            f"{records}"
        )
    if refs is not None and (
        stats["count"] + len(stats["skipped"]) != len(refs)
        or skipped_refs(refs, stats["skipped"]) is None
    ):
        raise StatsProblem(
            f"{path}: {stats['count']} records and {len(stats['skipped'])} skipped, but "
            f"{name} is written from {len(refs)} files"
        )
    if stats["count"] != sum(stats["class_counts"].values()):
        raise StatsProblem(
            f"{path}: damaged (count {stats['count']}, but its class counts add up to "
            f"{sum(stats['class_counts'].values())})"
        )
    return stats


def _stats_shaped(stats):
    def natural(value):
        return type(value) is int and value >= 0

    def lines(value):
        return isinstance(value, list) and all(isinstance(x, str) for x in value)

    return (
        isinstance(stats, dict)
        and natural(stats.get("count"))
        and isinstance(stats.get("class_counts"), dict)
        and all(natural(n) for n in stats["class_counts"].values())
        and lines(stats.get("skipped"))
        and lines(stats.get("reencoded"))
    )


def skipped_refs(refs, skipped):
    """The inputs that the lines of `skipped` ("where: why") name, or None if
    a line names none of `refs`."""
    if not skipped:
        return []
    by_where = {ref.where: ref for ref in refs}
    found = []
    for line in skipped:
        ends = [match.start() for match in re.finditer(": ", line)]
        ref = next((by_where[line[:i]] for i in ends if line[:i] in by_where), None)
        if ref is None:
            return None
        found.append(ref)
    return found


def shard_is_done(job):
    return os.path.exists(os.path.join(job.output_dir, job.name)) and os.path.exists(
        stats_path(job.output_dir, job.name)
    )


def stale(job):
    """Why a shard that is done must be written again, in one line, or None:
    its statistics do not describe its inputs, or files it skipped now read
    (they were fixed since). Its recorded skips say which files to try."""
    try:
        stats = read_stats(job.output_dir, job.name, job.refs)
    except StatsProblem as problem:
        return f"{problem}; writing {job.name} again"
    skipped = skipped_refs(job.refs, stats["skipped"])
    now_read = [ref.where for ref in skipped if _reads(ref)]
    if now_read:
        return (
            f"{job.name}: {len(now_read)} of the {len(skipped)} file(s) it skipped now read "
            f"({now_read[0]}); writing it again"
        )
    return None


def _reads(ref):
    try:
        training_jpeg(ref)
        return True
    except BadImage:
        return False


def write_shard(job):
    """Writes one shard: to a temporary name, then its statistics, then the
    renames, so a shard under its final name is always complete. A shard
    written again loses its old statistics first: a run stopped between the
    renames leaves a shard without statistics, which the next run rewrites."""
    import tensorflow as tf

    partial = os.path.join(job.output_dir, WORK_DIR, job.name + ".partial")
    stats_file = stats_path(job.output_dir, job.name)
    stats = dict(count=0, class_counts=collections.Counter(), skipped=[], reencoded=[])
    with writing(partial, shard=True):
        try:
            _write_records(tf, job, partial, stats)
        except tf.errors.OpError as error:
            raise _as_os_error(error) from None
        _write_json(stats_file + ".partial", stats)
        if os.path.exists(stats_file):
            os.remove(stats_file)
        os.replace(partial, os.path.join(job.output_dir, job.name))
        os.replace(stats_file + ".partial", stats_file)
    return job.name, stats


def _write_records(tf, job, path, stats):
    with tf.io.TFRecordWriter(path) as writer:
        for ref in job.refs:
            try:
                jpeg, height, width, reencoded = training_jpeg(ref)
            except BadImage as error:
                stats["skipped"].append(str(error))
                continue
            if reencoded:
                stats["reencoded"].append(f"{ref.where}: {reencoded}")
            example = make_example(
                tf,
                ref,
                jpeg,
                height,
                width,
                job.labels[ref.synset],
                job.names.get(ref.synset),
                job.boxes.get(ref.filename, ()),
            )
            # Protobuf orders a map's entries differently in each process
            # unless asked not to: the feature map would differ across runs.
            writer.write(example.SerializeToString(deterministic=True))
            stats["count"] += 1
            stats["class_counts"][ref.synset] += 1


def _as_os_error(error):
    """A TensorFlow file error as the OSError it was: its message is
    `path; the system's words`."""
    words = error.message.rsplit("; ", 1)[-1]
    code = next((c for c in errno.errorcode if os.strerror(c) == words), None)
    return OSError(code, words)


@contextlib.contextmanager
def writing(path, shard=False):
    """Turns a failed write of `path` into a ConversionError naming it and
    what stopped it; for a shard, says that the finished ones are kept."""
    try:
        yield
    except OSError as error:
        why = imagenet_layouts.reason(error)
        if error.errno in FULL:
            why = f"{FULL[error.errno]} ({why})"
        kept = "; the shards already finished are complete, and a rerun keeps them" if shard else ""
        raise ConversionError(f"cannot write {path}: {why}{kept}") from None


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


def _write_json_atomically(path, data):
    with writing(path):
        _write_json(path + ".partial", data)
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
    allow_skips=False,
    bounding_boxes=None,
):
    """Converts the splits; returns a summary dict (also in summary.json).
    `allow_skips`: folders that are not classes, file names that are not
    UTF-8 and annotation files that cannot be used are skipped (and listed),
    not refused. `bounding_boxes`: the folder of training images' annotation
    files (tools/imagenet_boxes.py), or None for none."""
    for name, value in (("train_shards", train_shards), ("validation_shards", validation_shards)):
        if value < 1:
            raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
    unknown_splits = set(splits) - set(SPLITS)
    if unknown_splits:
        raise ValueError(f"`splits` must be among {SPLITS}. Received: {sorted(unknown_splits)}")
    check_output_dir(output_dir)
    inputs = imagenet_layouts.find_inputs(
        raw_dir, splits, validation_labels, synset_names, allow_skips
    )
    print(f"Found the {inputs.description}.")
    for note in inputs.notes:
        print(note)
    refs = {"train": inputs.train}
    if "validation" in splits:
        refs["validation"] = inputs.validation
    refuse_duplicate_names(refs)
    synsets = sorted({r.synset for r in refs["train"]})
    unknown = {r.synset for r in refs.get("validation", [])} - set(synsets)
    if unknown:
        raise ConversionError(
            f"Validation wnids not among the training classes: {sorted(unknown)[:5]}"
        )
    labels = {wnid: i + 1 for i, wnid in enumerate(synsets)}  # 0 stays unused
    names = inputs.names
    warn_of_unnamed_classes(synsets, names, inputs.names_source)
    boxes = imagenet_boxes.Boxes({}, [])
    if bounding_boxes:
        print(f"Reading the bounding boxes under {bounding_boxes}...")
        boxes = imagenet_boxes.read_boxes(bounding_boxes, refs["train"], allow_skips)
    make_output_dir(output_dir)
    shards = {"train": train_shards, "validation": validation_shards}
    check_inputs(
        output_dir,
        fingerprint(inputs.layout, refs, labels, names, shards, boxes.by_filename),
    )
    labels_file = os.path.join(output_dir, "labels.txt")
    with writing(labels_file), open(labels_file, "w") as f:
        for wnid in synsets:
            f.write(f"{labels[wnid]}\t{wnid}\t{names.get(wnid, '')}\n")

    jobs = [
        job
        for split in splits
        for job in shard_jobs(
            split,
            refs[split],
            shards[split],
            output_dir,
            labels,
            names,
            boxes.by_filename if split == "train" else {},
        )
    ]
    todo = []
    for job in jobs:
        if not shard_is_done(job):
            todo.append(job)
        elif why := stale(job):
            print(why)
            todo.append(job)
    start = time.time()
    written = 0
    with tqdm(total=sum(len(j.refs) for j in todo), unit="img", desc="converting") as bar:
        for _, stats in _map(write_shard, todo, num_workers):
            bar.update(stats["count"] + len(stats["skipped"]))
            written += stats["count"]
    seconds = time.time() - start

    summary = {
        "layout": inputs.layout,
        "seconds": round(seconds, 1),
        "images_per_second": round(written / seconds, 1) if seconds else 0.0,
        "shards_written_this_run": len(todo),
        "shards_already_done": len(jobs) - len(todo),
        "bounding_boxes": bounding_boxes,
    }
    skipped_box_files = {"train": boxes.skipped}
    for split in splits:
        split_jobs = [job for job in jobs if job.name.startswith(split + "-")]
        per_shard = [read_stats(output_dir, job.name, job.refs) for job in split_jobs]
        class_counts = collections.Counter()
        for s in per_shard:
            class_counts.update(s["class_counts"])
        summary[split] = {
            "images": sum(s["count"] for s in per_shard),
            "images_with_boxes": sum(
                images_with_boxes(job, s) for job, s in zip(split_jobs, per_shard)
            ),
            "shards": len(per_shard),
            "class_counts": dict(sorted(class_counts.items())),
            "skipped": sorted(
                inputs.skipped.get(split, [])
                + skipped_box_files.get(split, [])
                + [x for s in per_shard for x in s["skipped"]]
            ),
            "reencoded": sorted(x for s in per_shard for x in s["reencoded"]),
        }
    summary_file = os.path.join(output_dir, "summary.json")
    _write_json_atomically(summary_file, summary)
    for split in splits:
        refuse_emptied_classes(split, refs[split], summary[split]["class_counts"], summary_file)
    return summary


def images_with_boxes(job, stats):
    """How many of a shard's records have boxes: its images with boxes but
    those it skipped."""
    skipped = {ref.filename for ref in skipped_refs(job.refs, stats["skipped"])}
    return len(set(job.boxes) - skipped)


def warn_of_unnamed_classes(synsets, names, source):
    """One line if some classes have no name: labels.txt and image/class/text
    would leave them empty."""
    unnamed = [wnid for wnid in synsets if not names.get(wnid)]
    empty = "labels.txt and image/class/text leave them empty"
    if unnamed and not source:
        print(f"warning: no class names (no --synset_names, none in --raw_data_dir): {empty}")
    elif unnamed:
        few = ", ".join(unnamed[:3]) + (", ..." if len(unnamed) > 3 else "")
        print(
            f"warning: {len(unnamed)} of the {len(synsets)} classes have no name in {source} "
            f"({few}): {empty}"
        )


def refuse_emptied_classes(split, refs, class_counts, summary_file):
    """Refuses, even with --allow_skips, a class all of whose files were
    skipped: it would have no images (the shards written stay, for the rerun
    once they are fixed)."""
    emptied = sorted({r.synset for r in refs} - {w for w, n in class_counts.items() if n})
    if emptied:
        few = ", ".join(emptied[:5]) + (", ..." if len(emptied) > 5 else "")
        raise ConversionError(
            f"{split}: every file of class(es) {few} was skipped (listed in {summary_file}); "
            "fix or replace them and rerun, which rewrites only the shards that skipped them"
        )


def refuse_duplicate_names(refs):
    """Each image's file name identifies it in the shards (image/filename):
    two files with one name are refused before anything is written."""
    first = {}
    for split_refs in refs.values():
        for ref in split_refs:
            other = first.setdefault(ref.filename, ref)
            if other is not ref:
                raise ConversionError(
                    f"{other.where} and {ref.where} have the same file name; "
                    "image/filename must identify one image: rename or remove one"
                )


def check_output_dir(output_dir):
    """Refuses, before the inputs are listed, an --output_dir that is a file
    or lies under one, or whose nearest existing folder is not writable."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConversionError(f"--output_dir={output_dir} is a file, not a directory")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConversionError(f"--output_dir={output_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConversionError(f"--output_dir={output_dir}: {existing} is not writable")


def make_output_dir(output_dir):
    work = os.path.join(output_dir, WORK_DIR)
    with writing(work):
        os.makedirs(work, exist_ok=True)


def fingerprint(layout, refs, labels, names, shards, boxes=None):
    """What the shards depend on, one digest per part, so that a rerun can
    say which part changed: the layout, each split's (wnid, file) list and
    shard count, the label map, the class names and the training images'
    bounding boxes (file name -> boxes; none if empty)."""

    def digest(lines):
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    record = {
        "layout": layout,
        "label map": digest(f"{wnid}\t{label}" for wnid, label in sorted(labels.items())),
        "class names": digest(f"{wnid}\t{name}" for wnid, name in sorted(names.items())),
        "bounding boxes": imagenet_boxes.digest(boxes or {}),
    }
    for split, split_refs in refs.items():
        record[f"{split} images"] = digest(f"{r.synset}/{r.filename}" for r in split_refs)
        record[f"{split} shards"] = shards[split]
    return record


def check_inputs(output_dir, record):
    """Refuses to add to shards written from other inputs, naming what
    differs; records the inputs of a new (or partly converted) output. A
    record with no shard beside it (a run stopped before its first shard)
    holds nothing to protect: it is replaced."""
    path = os.path.join(output_dir, INPUTS_RECORD)
    has_shards = any(SHARD_NAME.match(n) for n in os.listdir(output_dir))
    if has_shards and os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as error:
            raise ConversionError(
                f"{path}: cannot be read ({imagenet_layouts.reason(error)}); it records "
                "what the shards beside it were written from: use a new --output_dir"
            ) from None
        saved = {**RECORDED_LATER, **saved}
        differ = sorted(k for k in record if k in saved and saved[k] != record[k])
        if differ:
            raise ConversionError(
                f"--output_dir={output_dir} holds shards written from other inputs "
                f"({', '.join(differ)} differ): use a new --output_dir, or the same "
                "--raw_data_dir, --validation_labels, --synset_names and --bounding_boxes "
                "as before"
            )
        record = {**saved, **record}
    elif has_shards:
        raise ConversionError(
            f"--output_dir={output_dir} holds shards but no record of their inputs "
            f"({INPUTS_RECORD}): use a new --output_dir"
        )
    _write_json_atomically(path, record)


def _map(function, jobs, num_workers):
    if num_workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    # spawn: forking a process that has imported TensorFlow is unsafe.
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
        yield from pool.imap_unordered(function, jobs)


# --- Verification ------------------------------------------------------------


def verify(output_dir):
    """Reads every shard back; returns a list of problems (empty if none),
    among them a split without records, a training class without one, an
    image training cannot crop, bounding boxes that are not boxes, and
    statistics that do not describe their shard."""
    labels_file = os.path.join(output_dir, "labels.txt")
    if not os.path.exists(labels_file):
        return [f"{labels_file}: missing; is {output_dir} the converter's output?"]
    try:
        with open(labels_file) as f:
            num_classes = sum(1 for line in f if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        return [f"{labels_file}: cannot be read ({imagenet_layouts.reason(error)})"]
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
        labels = collections.Counter()
        for index in sorted(found):
            problems += _verify_shard(output_dir, found[index][0], num_classes, seen, labels)
        if not labels:
            problems.append(f"{split}: no records in its {len(found)} shard(s)")
        elif split == "train":
            empty = sorted(set(range(1, num_classes + 1)) - set(labels))
            if empty:
                problems.append(
                    f"train: no images of label(s) {empty[:10]} of the {num_classes} in labels.txt"
                )
    return problems


def _verify_shard(output_dir, name, num_classes, seen, labels):
    """Problems with one shard: labels (counted in `labels`), decoding and
    size, bounding boxes, duplicates (updating `seen`), and its record count
    against the statistics written with it."""
    import tensorflow as tf

    feature_spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string),
        # Variable-length: a shard written before boxes existed has no keys.
        BOX_LABEL_KEY: tf.io.VarLenFeature(tf.int64),
        **{key: tf.io.VarLenFeature(tf.float32) for key in BOX_KEYS},
    }
    path = os.path.join(output_dir, name)
    problems = []
    count = 0
    try:
        for record in tf.data.TFRecordDataset(path):
            example = tf.io.parse_single_example(record, feature_spec)
            filename = example["image/filename"].numpy().decode()
            label = int(example["image/class/label"])
            labels[label] += 1
            if not 1 <= label <= num_classes:
                problems.append(f"{path}: {filename} has label {label}, outside 1..{num_classes}")
            if why := _box_problem(example, label):
                problems.append(f"{path}: {filename} has bounding boxes {why}")
            try:
                height, width, _ = tf.io.decode_jpeg(example["image/encoded"], channels=3).shape
                if min(height, width) < MIN_IMAGE_SIDE:
                    problems.append(
                        f"{path}: {filename} is {width}x{height} pixels; training's crops need "
                        f"at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
                    )
            except tf.errors.InvalidArgumentError:
                problems.append(f"{path}: {filename} does not decode")
            if filename in seen:
                problems.append(f"{path}: {filename} also in {seen[filename]}")
            seen[filename] = name
            count += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        return problems + [f"{path}: unreadable after {count} records: {error.message}"]
    if os.path.exists(stats_path(output_dir, name)):
        try:
            read_stats(output_dir, name, records=count)
        except StatsProblem as problem:
            problems.append(str(problem))
    return problems


def _box_problem(example, label):
    """What is wrong with one parsed example's bounding boxes, or None: the
    lists must have one entry per box, coordinates in [0, 1] with each min at
    most its max, and the example's label for each box."""
    xmin, ymin, xmax, ymax = (example[key].values.numpy() for key in BOX_KEYS)
    box_labels = example[BOX_LABEL_KEY].values.numpy()
    lengths = [len(values) for values in (xmin, ymin, xmax, ymax, box_labels)]
    if len(set(lengths)) > 1:
        return f"of unequal lengths {lengths} (xmin, ymin, xmax, ymax, label)"
    for values in xmin, ymin, xmax, ymax:
        if any(not 0.0 <= v <= 1.0 for v in values):
            return "outside [0, 1]"
    if any(xmin > xmax) or any(ymin > ymax):
        return "whose min exceeds their max"
    if any(box_labels != label):
        return f"labelled {sorted(set(box_labels.tolist()))}, not the image's label {label}"
    return None


# --- Command line ------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so modules can share flag names."""
    flags.DEFINE_string(
        "raw_data_dir",
        None,
        "ImageNet as downloaded: the extracted tree, the three official files, or the "
        "extracted Kaggle archive (tools/imagenet_layouts.py); the layout is detected.",
    )
    flags.DEFINE_string("output_dir", None, "Where the shards go.")
    flags.DEFINE_string(
        "validation_labels",
        None,
        "One wnid per line, in sorted-filename order. By default the labels come from "
        "the devkit or LOC_val_solution.csv, or from wnid folders in validation/.",
    )
    flags.DEFINE_string(
        "synset_names",
        None,
        "`wnid name` lines for labels.txt and image/class/text; by default from the "
        "devkit or LOC_synset_mapping.txt.",
    )
    flags.DEFINE_integer("train_shards", 1024, "Training shards.")
    flags.DEFINE_integer("validation_shards", 128, "Validation shards.")
    flags.DEFINE_integer(
        "num_workers",
        min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS),
        f"Worker processes (default: the cores, at most {MAX_DEFAULT_WORKERS}: each imports "
        "TensorFlow, about 0.5-1 GB of memory).",
    )
    flags.DEFINE_list("splits", list(SPLITS), "Which splits to convert.")
    flags.DEFINE_bool(
        "allow_skips",
        False,
        "Skip files that cannot be read or decoded, folders that are not classes and file "
        "names that are not UTF-8 and bounding-box files that cannot be used, listing "
        "them, and exit 0.",
    )
    flags.DEFINE_string(
        "bounding_boxes",
        None,
        "The extracted ILSVRC2012_bbox_train_v2.tar.gz (from ImageNet's download page): "
        "PASCAL VOC <image stem>.xml files, found at any depth. Each training image's "
        "boxes are stored as image/object/bbox/{xmin,ymin,xmax,ymax} (fractions of the "
        "image) and image/object/bbox/label, as tensorflow/tpu does; images without a "
        "file, and validation images, get empty lists.",
    )
    flags.DEFINE_bool("verify", False, "Only read back and check existing shards.")


def main(argv):
    problem = flag_problem(argv[1:])
    if problem:
        return _error(f"{problem} (see --help)")
    if FLAGS.verify:
        problems = verify(FLAGS.output_dir)
        for problem in problems:
            print("PROBLEM", problem)
        print(f"verify: {len(problems)} problem(s) in {FLAGS.output_dir}")
        return 1 if problems else 0
    try:
        summary = _convert_from_flags()
    except ConversionError as error:
        return _error(str(error))
    return _report(summary)


def flag_problem(arguments):
    """What is wrong with the command line, or None; checked before anything
    is listed, written or imported (TensorFlow)."""
    if arguments:
        return f"unexpected arguments: {' '.join(arguments)}"
    if not FLAGS.output_dir:
        return "--output_dir is required"
    if FLAGS.verify:
        return None
    if not FLAGS.raw_data_dir:
        return "--raw_data_dir is required"
    for name in ("raw_data_dir", "bounding_boxes"):
        folder = FLAGS[name].value
        if folder is not None and not os.path.isdir(folder):
            what = "is not a directory" if os.path.exists(folder) else "does not exist"
            return f"--{name}={folder} {what}"
    for name in ("train_shards", "validation_shards", "num_workers"):
        if FLAGS[name].value < 1:
            return f"--{name}={FLAGS[name].value}: must be at least 1"
    if not FLAGS.splits or set(FLAGS.splits) - set(SPLITS):
        return f"--splits={','.join(FLAGS.splits)}: must be one or both of {','.join(SPLITS)}"
    return None


def _error(message):
    print(f"imagenet_to_tfrecords: error: {message}", file=sys.stderr)
    return 1


def _convert_from_flags():
    return convert(
        FLAGS.raw_data_dir,
        FLAGS.output_dir,
        FLAGS.validation_labels,
        FLAGS.synset_names,
        FLAGS.train_shards,
        FLAGS.validation_shards,
        FLAGS.num_workers,
        tuple(FLAGS.splits),
        FLAGS.allow_skips,
        FLAGS.bounding_boxes,
    )


def _report(summary):
    """Prints what was converted and skipped; the exit status."""
    skipped = 0
    for split in FLAGS.splits:
        s = summary[split]
        counts = list(s["class_counts"].values()) or [0]
        print(
            f"{split}: {s['images']} images in {s['shards']} shards, "
            f"{len(counts)} classes ({min(counts)}..{max(counts)} per class), "
            f"{len(s['reencoded'])} re-encoded, {len(s['skipped'])} skipped"
        )
        if split == "train" and summary["bounding_boxes"]:
            print(f"  boxes for {s['images_with_boxes']} of {s['images']} training images")
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
            f"{skipped} file(s) could not be read or decoded (listed above). The shards "
            "are complete without them; rerun with --allow_skips to accept.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # the console script: recipes/scripts.py
    define_flags()
    app.run(main)
