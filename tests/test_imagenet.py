"""The ImageNet converter and input pipeline, on generated ImageNet-format data."""

import os
import shutil

import keras
import numpy as np
import pytest

import commands

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.data and TFRecords are TensorFlow's"
)
tf = pytest.importorskip("tensorflow")

from recipes.imagenet import bad_data  # noqa: E402
from recipes.imagenet import batching  # noqa: E402
from recipes.imagenet import sources  # noqa: E402
from recipes.imagenet.crops import preprocess  # noqa: E402
from recipes.imagenet.preprocessing import PREPROCESSING  # noqa: E402
from recipes.imagenet.records import BOX_KEYS  # noqa: E402
from recipes.imagenet.records import list_files  # noqa: E402
from recipes.imagenet.records import parse  # noqa: E402
from recipes.imagenet.records import read_records  # noqa: E402
from tools import imagenet_to_tfrecords as converter  # noqa: E402
from tools import make_fake_imagenet  # noqa: E402

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 6, 2
GOOD_ODDITIES = 3  # CMYK, greyscale and PNG: re-encoded and kept
SHARDS = dict(train_shards=3, validation_shards=2)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake")
    make_fake_imagenet.make(str(root), CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, with_bad_files=True)
    return root


def convert(source, output, **kwargs):
    raw = fake_raw(source)
    return converter.convert(
        str(source),
        str(output),
        validation_labels=os.path.join(raw, "validation_labels.txt"),
        synset_names=os.path.join(raw, "synsets.txt"),
        **{**SHARDS, **kwargs},
    )


def fake_raw(source):
    return os.path.join(os.path.dirname(str(source)), "raw")


@pytest.fixture(scope="module")
def converted(fake, tmp_path_factory):
    output = tmp_path_factory.mktemp("tfrecords")
    return output, convert(fake / "raw", output)


def shard_bytes(directory):
    return {
        name: (directory / name).read_bytes()
        for name in sorted(os.listdir(directory))
        if converter.SHARD_NAME.match(name)
    }


def records(directory, split):
    spec = {
        key: tf.io.FixedLenFeature([], dtype, default_value=default)
        for key, dtype, default in [
            ("image/encoded", tf.string, None),
            ("image/class/label", tf.int64, None),
            ("image/class/synset", tf.string, None),
            ("image/filename", tf.string, None),
            ("image/class/text", tf.string, b""),  # only with --synset_names
            ("image/height", tf.int64, None),
        ]
    }
    files = sorted(str(directory / n) for n in os.listdir(directory) if n.startswith(split + "-"))
    return [
        {k: v.numpy() for k, v in tf.io.parse_single_example(r, spec).items()}
        for r in tf.data.TFRecordDataset(files)
    ]


def test_converts_with_schema_labels_and_reports(converted):
    output, summary = converted
    train = records(output, "train")
    assert len(train) == summary["train"]["images"] == CLASSES * TRAIN_PER_CLASS + GOOD_ODDITIES
    assert len(records(output, "validation")) == CLASSES * VAL_PER_CLASS
    wnids = [make_fake_imagenet.wnid(c) for c in range(CLASSES)]
    for record in train:
        synset = record["image/class/synset"].decode()
        assert record["image/class/label"] == wnids.index(synset) + 1  # 1..N, sorted
        assert record["image/class/text"].decode() == f"fake class {wnids.index(synset)}"
        image = tf.io.decode_jpeg(record["image/encoded"]).numpy()
        assert image.shape == (48, 64, 3) and record["image/height"] == 48
    assert sorted(summary["train"]["class_counts"].values()) == [6, 6, 6, 9]
    skipped = summary["train"]["skipped"]
    assert len(skipped) == 2
    assert any("truncated.JPEG" in s for s in skipped)
    assert any("not_an_image.JPEG" in s for s in skipped)
    assert all(str(fake_raw(output)) not in s for s in skipped)
    reencoded = " ".join(summary["train"]["reencoded"])
    assert "CMYK" in reencoded and "JPEG L" in reencoded and "PNG" in reencoded
    labels = (output / "labels.txt").read_text().splitlines()
    assert labels[0] == f"1\t{wnids[0]}\tfake class 0" and len(labels) == CLASSES


def test_archives_give_the_same_bytes_as_the_tree(fake, converted, tmp_path):
    output, _ = converted
    summary = convert(fake / "archives", tmp_path)
    assert shard_bytes(tmp_path) == shard_bytes(output)
    assert all("ILSVRC2012_img_train.tar:" in s for s in summary["train"]["skipped"])


def test_every_download_layout_gives_the_same_shards(fake, converted, tmp_path, capsys):
    """The official three files (labels and names from the devkit) and the
    Kaggle layout (from LOC_val_solution.csv and LOC_synset_mapping.txt), with
    no labels or names file given, give the tree's shards byte for byte."""
    output, _ = converted
    for layout, source in (("official", fake / "archives"), ("kaggle", fake / "kaggle")):
        summary = converter.convert(str(source), str(tmp_path / layout), **SHARDS)
        assert summary["layout"] == layout
        assert shard_bytes(tmp_path / layout) == shard_bytes(output), layout
        assert (tmp_path / layout / "labels.txt").read_text() == (output / "labels.txt").read_text()
    printed = capsys.readouterr().out
    assert "Found the official archives" in printed and "labels from ILSVRC2012_devkit" in printed
    assert "Found the Kaggle CLS-LOC" in printed and "labels from LOC_val_solution.csv" in printed


def test_mixed_and_incomplete_layouts_are_refused_by_name(fake, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(fake / "raw" / "train", mixed / "train")
    shutil.copy(fake / "archives" / "ILSVRC2012_img_train.tar", mixed)
    with pytest.raises(
        converter.ConversionError, match="mixes ImageNet layouts.*tree: train.*official"
    ):
        converter.convert(str(mixed), str(tmp_path / "out"), **SHARDS)

    kaggle = tmp_path / "kaggle"
    shutil.copytree(fake / "kaggle", kaggle)
    (kaggle / "LOC_val_solution.csv").unlink()
    with pytest.raises(converter.ConversionError, match="incomplete: LOC_val_solution.csv missing"):
        converter.convert(str(kaggle), str(tmp_path / "out"), **SHARDS)

    official = tmp_path / "official"
    shutil.copytree(fake / "archives", official)
    (official / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(converter.ConversionError, match="ILSVRC2012_devkit_t12.tar.gz missing"):
        converter.convert(str(official), str(tmp_path / "out"), **SHARDS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(converter.ConversionError, match="holds no ImageNet layout"):
        converter.convert(str(tmp_path / "empty"), str(tmp_path / "out"), **SHARDS)
    assert not (tmp_path / "out").exists()  # nothing written on a refusal


def test_a_rerun_from_other_inputs_is_refused_naming_what_differs(fake, tmp_path):
    convert(fake / "raw", tmp_path / "out")
    wrong_labels = tmp_path / "wrong_labels.txt"
    lines = (fake_raw(fake / "raw") + "/validation_labels.txt").strip()
    wnids = open(lines).read().split()
    wrong_labels.write_text("\n".join(wnids[1:] + wnids[:1]) + "\n")
    names = os.path.join(fake_raw(fake / "raw"), "synsets.txt")
    with pytest.raises(ValueError, match=r"\(validation images differ\)"):
        converter.convert(
            str(fake / "raw"),
            str(tmp_path / "out"),
            validation_labels=str(wrong_labels),
            synset_names=names,
            **SHARDS,
        )
    wrong_names = tmp_path / "names.txt"
    wrong_names.write_text("".join(f"{w} another name\n" for w in sorted(set(wnids))))
    with pytest.raises(ValueError, match=r"\(class names differ\)"):
        converter.convert(
            str(fake / "raw"),
            str(tmp_path / "out"),
            validation_labels=os.path.join(fake_raw(fake / "raw"), "validation_labels.txt"),
            synset_names=str(wrong_names),
            **SHARDS,
        )
    other = tmp_path / "other"
    make_fake_imagenet.make(str(other), CLASSES, TRAIN_PER_CLASS + 1, VAL_PER_CLASS)
    with pytest.raises(ValueError, match=r"\(train images differ\)"):
        converter.convert(
            str(other / "raw"),
            str(tmp_path / "out"),
            validation_labels=str(other / "raw" / "validation_labels.txt"),
            synset_names=names,
            **SHARDS,
        )
    assert (tmp_path / "out" / "labels.txt").read_text().count("fake class") == CLASSES
    with pytest.raises(ValueError, match=r"\(train shards\) differ|\(train shards differ\)"):
        converter.convert(
            str(fake / "raw"),
            str(tmp_path / "out"),
            validation_labels=os.path.join(fake_raw(fake / "raw"), "validation_labels.txt"),
            synset_names=names,
            **{**SHARDS, "train_shards": 2},
        )


def test_the_devkit_names_classes_even_with_a_labels_file(fake, tmp_path):
    converter.convert(
        str(fake / "archives"),
        str(tmp_path),
        validation_labels=os.path.join(fake_raw(fake / "raw"), "validation_labels.txt"),
        **SHARDS,
    )
    assert (tmp_path / "labels.txt").read_text().count("\tfake class ") == CLASSES


def test_validation_sorted_into_wnid_folders(fake, converted, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(fake / "raw" / "train", raw / "train")
    wnids = (fake / "raw" / "validation_labels.txt").read_text().split()
    for name, wnid in zip(sorted(os.listdir(fake / "raw" / "validation")), wnids):
        (raw / "validation" / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(fake / "raw" / "validation" / name, raw / "validation" / wnid / name)
    converter.convert(str(raw), str(tmp_path / "out"), **SHARDS)

    def labels_by_file(directory):
        return {
            r["image/filename"]: r["image/class/label"] for r in records(directory, "validation")
        }

    assert labels_by_file(tmp_path / "out") == labels_by_file(converted[0])


def test_interrupted_run_resumes_to_identical_output(fake, converted, tmp_path, monkeypatch):
    output, _ = converted
    real_write_shard = converter.write_shard
    calls = []

    def dies_on_third_shard(job):
        calls.append(job.name)
        if len(calls) == 3:  # killed mid-shard: a partial file, then death
            partial = os.path.join(job.output_dir, converter.WORK_DIR, job.name + ".partial")
            with open(partial, "wb") as f:
                f.write(b"half a shard")
            raise KeyboardInterrupt
        return real_write_shard(job)

    monkeypatch.setattr(converter, "write_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        convert(fake / "raw", tmp_path)
    assert len(shard_bytes(tmp_path)) == 2  # no partial shard under a final name
    monkeypatch.setattr(converter, "write_shard", real_write_shard)

    summary = convert(fake / "raw", tmp_path)
    assert summary["shards_already_done"] == 2 and summary["shards_written_this_run"] == 3
    assert shard_bytes(tmp_path) == shard_bytes(output)
    assert summary["train"]["skipped"] == converted[1]["train"]["skipped"]


def test_verify_passes_then_catches_tampering(fake, tmp_path):
    convert(fake / "raw", tmp_path)
    assert converter.verify(str(tmp_path)) == []
    shard = tmp_path / "train-00001-of-00003"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "validation-00001-of-00002").write_bytes(
        (tmp_path / "validation-00000-of-00002").read_bytes()
    )
    problems = converter.verify(str(tmp_path))
    assert any(p.startswith(str(shard)) for p in problems), problems
    assert any("also in validation-00000-of-00002" in p for p in problems), problems


def box_file(width, height, *boxes):
    """A PASCAL VOC annotation, as ILSVRC2012_bbox_train_v2.tar.gz holds:
    the image's size and each (xmin, ymin, xmax, ymax) box in pixels."""
    objects = "".join(
        "<object><name>n01440764</name><bndbox>"
        + "".join(f"<{c}>{v}</{c}>" for c, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        + "</bndbox></object>"
        for box in boxes
    )
    return (
        f"<annotation><folder>n01440764</folder><filename>x</filename><size><width>{width}"
        f"</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )


def box_records(directory, split):
    """{file name: (label, [(xmin, ymin, xmax, ymax), ...], box labels)}."""
    spec = {
        "image/filename": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        **{k: tf.io.VarLenFeature(tf.float32) for k in converter.BOX_KEYS},
        "image/object/bbox/label": tf.io.VarLenFeature(tf.int64),
    }
    files = sorted(str(directory / n) for n in os.listdir(directory) if n.startswith(split + "-"))
    found = {}
    for record in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(record, spec)
        xmin, ymin, xmax, ymax = (example[k].values.numpy() for k in converter.BOX_KEYS)
        found[example["image/filename"].numpy().decode()] = (
            int(example["image/class/label"]),
            list(zip(xmin, ymin, xmax, ymax)),
            example["image/object/bbox/label"].values.numpy().tolist(),
        )
    return found


def test_bounding_boxes_are_stored_as_tensorflow_tpu_stores_them(fake, tmp_path, capsys):
    """Pixels over the annotated size, min and max swapped where reversed,
    clamped to [0, 1]; the image's label once per box; empty lists for
    images without an annotation and for validation."""
    wnids = [make_fake_imagenet.wnid(c) for c in range(CLASSES)]
    boxes = tmp_path / "bbox"
    for folder in wnids[:3]:
        (boxes / folder).mkdir(parents=True)
    annotations = {  # image file name -> its annotation's path and text
        f"{wnids[0]}_0.JPEG": (boxes / wnids[0], box_file(64, 48, (8, 12, 40, 36))),
        f"{wnids[1]}_1.JPEG": (
            boxes / wnids[1],
            box_file(64, 48, (0, 0, 64, 48), (16, 6, 32, 30)),
        ),
        f"{wnids[2]}_2.JPEG": (boxes / wnids[2], box_file(64, 48, (48, 36, 16, 12))),  # reversed
        # Past every edge; at the top of the folder, not in a class folder.
        f"{wnids[3]}_3.JPEG": (boxes, box_file(64, 48, (-8, 24, 80, 60))),
        # An image that the converter skips (truncated): counted without boxes.
        f"{wnids[0]}_truncated.JPEG": (boxes / wnids[0], box_file(64, 48, (1, 1, 2, 2))),
        "n09999999_1.JPEG": (boxes, box_file(64, 48, (1, 1, 2, 2))),  # no such image
    }
    for name, (folder, text) in annotations.items():
        (folder / name.replace(".JPEG", ".xml")).write_text(text)
    expected = {  # worked out by hand: x / 64, y / 48
        f"{wnids[0]}_0.JPEG": [(0.125, 0.25, 0.625, 0.75)],
        f"{wnids[1]}_1.JPEG": [(0.0, 0.0, 1.0, 1.0), (0.25, 0.125, 0.5, 0.625)],
        f"{wnids[2]}_2.JPEG": [(0.25, 0.25, 0.75, 0.75)],
        f"{wnids[3]}_3.JPEG": [(0.0, 0.5, 1.0, 1.0)],
    }
    summary = convert(fake / "raw", tmp_path / "out", bounding_boxes=str(boxes))
    train = box_records(tmp_path / "out", "train")
    assert len(train) == summary["train"]["images"] == CLASSES * TRAIN_PER_CLASS + GOOD_ODDITIES
    for name, (label, found, box_labels) in train.items():
        want = expected.get(name, [])
        assert np.allclose(found, want, atol=1e-7) and len(found) == len(want), name
        assert box_labels == [label] * len(want), name
    validation = box_records(tmp_path / "out", "validation")
    assert len(validation) == CLASSES * VAL_PER_CLASS
    assert all(found == [] and box_labels == [] for _, found, box_labels in validation.values())
    assert summary["train"]["images_with_boxes"] == len(expected)
    assert summary["bounding_boxes"] == str(boxes)
    assert converter.verify(str(tmp_path / "out")) == []
    # What the training input makes of them: boxes here, none without the flag.
    assert sources.TFRecordSource(str(tmp_path / "out" / "train-*")).has_bounding_boxes()
    convert(fake / "raw", tmp_path / "plain")
    plain = sources.TFRecordSource(str(tmp_path / "plain" / "train-*"))
    assert not plain.has_bounding_boxes()


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(train_shards=0), "train_shards"),
        (dict(validation_shards=-1), "validation_shards"),
        (dict(splits=("train", "val")), "splits"),
    ],
)
def test_bad_converter_arguments_are_named(fake, tmp_path, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        convert(fake / "raw", tmp_path, **kwargs)


def test_verify_names_a_directory_that_is_not_converter_output(tmp_path):
    (tmp_path / "train-00000-of-00001").write_bytes(b"")
    problems = converter.verify(str(tmp_path))
    assert problems == [
        f"{tmp_path / 'labels.txt'}: missing; is {tmp_path} the converter's output?"
    ]


def test_command_line_exits_non_zero_on_skips_unless_allowed(fake, tmp_path):
    base = commands.module(
        "tools.imagenet_to_tfrecords",
        f"--raw_data_dir={fake / 'raw'}",
        f"--output_dir={tmp_path}",
        f"--validation_labels={fake / 'raw' / 'validation_labels.txt'}",
        "--train_shards=2",
        "--validation_shards=1",
        "--num_workers=2",
    )
    logs = tmp_path.parent / f"{tmp_path.name}-logs"
    logs.mkdir()
    code, output = commands.run(base, logs / "first.log")
    assert code == 1 and "SKIPPED" in output and "truncated.JPEG" in output, output
    code, output = commands.run(base + ["--allow_skips"], logs / "again.log")
    assert code == 0 and "0 shards written, 3 already done" in output, output
    verify = commands.module("tools.imagenet_to_tfrecords", "--verify", f"--output_dir={tmp_path}")
    code, output = commands.run(verify, logs / "verify.log")
    assert code == 0 and "0 problem(s)" in output, output
    code, output = commands.run(
        commands.module("tools.imagenet_to_tfrecords", "--helpshort"), logs / "help.log"
    )
    assert f"at most {converter.MAX_DEFAULT_WORKERS}" in output  # each imports TF
    (tmp_path / "empty").mkdir()
    refused = commands.module(
        "tools.imagenet_to_tfrecords",
        f"--raw_data_dir={tmp_path / 'empty'}",
        f"--output_dir={tmp_path / 'out'}",
    )
    code, output = commands.run(refused, logs / "refused.log")
    assert code == 1 and "holds no ImageNet layout" in output and "Traceback" not in output


# --- The input pipeline ------------------------------------------------------


@pytest.mark.parametrize("preprocessing", sorted(PREPROCESSING))
@pytest.mark.parametrize("training", [True, False])
def test_pipeline_shapes_dtypes_and_labels(converted, preprocessing, training):
    """Every source's preprocessing ships uint8 images (the model normalises)."""
    output, _ = converted
    dataset = batching.build_dataset(
        str(output / "train-*"),
        training=training,
        global_batch_size=5,
        image_size=32,
        preprocessing=preprocessing,
        repeat=False,
    )
    images, labels = next(iter(dataset))
    assert images.shape == (5, 32, 32, 3) and images.dtype == tf.uint8
    assert images.numpy().std() > 0
    assert labels.dtype == tf.int32
    all_labels = np.concatenate([b[1].numpy() for b in dataset])
    assert set(all_labels) == set(range(CLASSES))  # 1..N in the files, minus 1
    raw = batching.build_dataset(
        str(output / "train-*"), training=False, global_batch_size=5, label_offset=0
    )
    assert set(np.concatenate([b[1].numpy() for b in raw])) == set(range(1, CLASSES + 1))


def test_caffe_crops_by_hand(tmp_path):
    """Caffe's AlexNet input: the image squashed to 256/227 of the input size
    (here 40 -> round(40 * 256 / 227) = 45 square), then a 40-pixel crop:
    the centre one, from pixel (45 - 40) // 2 = 2, in evaluation; a random
    one, always inside the squashed image, in training."""
    from PIL import Image

    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(30, 70, 3), dtype=np.uint8)
    path = tmp_path / "image.jpg"
    Image.fromarray(pixels).save(path, quality=100, subsampling=0)
    image_bytes = tf.constant(path.read_bytes())
    squashed = tf.image.resize(tf.io.decode_jpeg(image_bytes), [45, 45]).numpy()
    centre = preprocess(image_bytes, False, 40, "caffe").numpy()
    np.testing.assert_array_equal(
        centre, np.clip(squashed[2:42, 2:42] + 0.5, 0, 255).astype(np.uint8)
    )
    crop = preprocess(image_bytes, True, 40, "caffe", seed=tf.constant([3, 4], tf.int64))
    rounded = np.clip(squashed + 0.5, 0, 255).astype(np.uint8)
    windows = [rounded[i : i + 40, j : j + 40] for i in range(6) for j in range(6)] + [
        rounded[i : i + 40, j : j + 40][:, ::-1] for i in range(6) for j in range(6)
    ]
    assert any(np.array_equal(crop.numpy(), window) for window in windows)


def jpeg(pixels, path):
    from PIL import Image

    Image.fromarray(pixels).save(path, quality=100, subsampling=0)
    return path.read_bytes()


def write_records(path, image_bytes, copies, boxes=None):
    """`copies` records of one image, label 1, with `boxes` ([(ymin, xmin,
    ymax, xmax)], normalised) in tensorflow/tpu's schema if given."""

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
    }
    if boxes is not None:
        for corner, key in enumerate(BOX_KEYS):
            feature[key] = floats([box[corner] for box in boxes])
    record = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(copies):
            writer.write(record)


def test_mlperf_tf2_training_crops_cover_the_annotated_box(tmp_path):
    """A black 64² image whose top-left 16² (1/16 of it) is white and
    annotated: every mlperf_tf2 crop covers at least 0.1 of that box, so
    holds white; the same records without boxes crop anywhere in the image,
    and some of 64 crops miss the corner (the reference's "whole image")."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:16, :16] = 255
    image_bytes = jpeg(pixels, tmp_path / "corner.jpg")
    write_records(tmp_path / "boxed-00000", image_bytes, 64, boxes=[(0.0, 0.0, 0.25, 0.25)])
    write_records(tmp_path / "plain-00000", image_bytes, 64)

    def crops(name):
        source = sources.TFRecordSource(str(tmp_path / f"{name}-*"))
        batch = batching.batches(
            source,
            training=True,
            global_batch_size=64,
            image_size=16,
            preprocessing="mlperf_tf2",
            deterministic=True,
        )
        return source, next(iter(batch))[0].numpy()

    boxed, boxed_crops = crops("boxed")
    plain, plain_crops = crops("plain")
    assert boxed.has_bounding_boxes() and not plain.has_bounding_boxes()
    assert all(crop.max() > 128 for crop in boxed_crops)
    assert any(crop.max() < 128 for crop in plain_crops)


def test_records_boxes_parse_in_the_samplers_order(tmp_path):
    write_records(tmp_path / "r", b"jpeg", 1, boxes=[(0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)])
    serialized = next(iter(tf.data.TFRecordDataset(str(tmp_path / "r"))))
    _, label, boxes = parse(serialized, boxes=True)
    np.testing.assert_allclose(boxes.numpy(), [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    assert label.numpy() == 0  # 1 in the file, minus the schema's offset
    write_records(tmp_path / "plain", b"jpeg", 1)
    serialized = next(iter(tf.data.TFRecordDataset(str(tmp_path / "plain"))))
    assert parse(serialized, boxes=True)[2].shape == (0, 4)


def test_mlperf_tf2_falls_back_to_the_whole_image(tmp_path):
    """A 2x200 image has no crop of 3/4..4/3 aspect with 5% of its area: the
    sampler gives up, and the MLPerf TF2 reference resizes the whole image
    (tensorflow_tpu takes its centre crop instead)."""
    rng = np.random.default_rng(4)
    image_bytes = tf.constant(
        jpeg(rng.integers(0, 256, (2, 200, 3), dtype=np.uint8), tmp_path / "thin.jpg")
    )
    whole = tf.image.resize(tf.io.decode_jpeg(image_bytes), [16, 16]).numpy()
    whole = np.clip(whole + 0.5, 0, 255).astype(np.uint8)
    seed = tf.constant([5, 6], tf.int64)
    crop = preprocess(image_bytes, True, 16, "mlperf_tf2", seed=seed).numpy()
    assert np.array_equal(crop, whole) or np.array_equal(crop, whole[:, ::-1])
    centre = preprocess(image_bytes, True, 16, "tensorflow_tpu", seed=seed).numpy()
    assert not (np.array_equal(centre, whole) or np.array_equal(centre, whole[:, ::-1]))


def test_mlperf_tf2_evaluation_resizes_the_short_side_then_crops_the_centre(tmp_path):
    """A 30x70 image for a 28² input: the short side to round(28 * 256 /
    224) = 32, so 32x75 (70 * 32 / 30 = 74.7), then the centre 28², from row
    (32 - 28) // 2 = 2 and column (75 - 28) // 2 = 23."""
    rng = np.random.default_rng(3)
    image_bytes = tf.constant(
        jpeg(rng.integers(0, 256, (30, 70, 3), dtype=np.uint8), tmp_path / "wide.jpg")
    )
    resized = tf.image.resize(tf.io.decode_jpeg(image_bytes), [32, 75]).numpy()
    expected = np.clip(resized[2:30, 23:51] + 0.5, 0, 255).astype(np.uint8)
    got = preprocess(image_bytes, False, 28, "mlperf_tf2").numpy()
    np.testing.assert_array_equal(got, expected)


def test_mlperf_tf2_subtracts_the_references_mean_only():
    from recipes.imagenet import models

    layer = models.build("resnet50", 4, 32, preprocessing="mlperf_tf2").get_layer("normalize")
    pixels = np.array([[[[0, 128, 255]]]], "uint8")
    expected = np.array([0 - 123.68, 128 - 116.78, 255 - 103.94], "float32")  # CHANNEL_MEANS
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pixels))[0, 0, 0], expected)


def test_a_run_without_boxes_says_its_crops_use_the_whole_image(tmp_path, capsys):
    from recipes.imagenet import config as config_lib
    from recipes.imagenet import job

    write_records(tmp_path / "train-00000", b"jpeg", 1)
    source = sources.TFRecordSource(str(tmp_path / "train-*"))
    for preprocessing, said in (("mlperf_tf2", True), ("tensorflow_tpu", False)):
        config = config_lib.resolve(
            "mlperf_4k", model_dir="/m", data_dir=str(tmp_path), preprocessing=preprocessing
        )
        capsys.readouterr()
        job._say_if_no_bounding_boxes(config, source)
        out = capsys.readouterr().out
        assert ("crops use the whole image" in out) == said, out


def test_evaluation_reads_only_its_pipelines_files(converted):
    """Two pipelines over the two validation shards: each reads one file, the
    two together every image once, each padded to the same number of steps."""
    output, _ = converted
    source = sources.TFRecordSource(str(output / "validation-*"))
    assert len(source.files) == 2
    counts = source.pipeline_counts(2)
    assert sum(counts) == source.count() and len(counts) == 2
    steps = batching.evaluation_steps(source, global_batch_size=4, num_pipelines=2)
    assert steps == max(1, -(-max(counts) // 2))
    images = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(2, pipeline, 2)
        examples = list(source.evaluation_examples(context))
        assert len(examples) == counts[pipeline]
        images.append({image.numpy() for image, _ in examples})
        batches = batching.evaluation_batches(
            source, global_batch_size=4, input_context=context, image_size=16
        )
        masks = [mask.numpy() for _, _, mask in batches]
        assert len(masks) == steps and sum(m.sum() for m in masks) == counts[pipeline]
    assert not images[0] & images[1]


def test_tfds_schema(tmp_path):
    path = str(tmp_path / "imagenet2012-train.tfrecord-00000-of-00001")
    image = tf.io.encode_jpeg(tf.zeros([40, 50, 3], tf.uint8)).numpy()
    with tf.io.TFRecordWriter(path) as writer:
        for label in (0, 999):
            writer.write(
                tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        }
                    )
                ).SerializeToString()
            )
    dataset = batching.build_dataset(
        str(tmp_path / "imagenet2012-train*"),
        training=False,
        global_batch_size=2,
        schema="tfds",
        image_size=16,
        deterministic=True,  # the files' order (by default tf.data may reorder)
    )
    assert next(iter(dataset))[1].numpy().tolist() == [0, 999]


def filenames_seen(files, context):
    spec = {"image/filename": tf.io.FixedLenFeature([], tf.string)}
    records_ = read_records(files, training=True, input_context=context, seed=1)
    return [tf.io.parse_single_example(r, spec)["image/filename"].numpy() for r in records_]


@pytest.mark.parametrize("pattern", ["train-*", "validation-00000-*"])
def test_input_contexts_cover_the_data_disjointly_and_completely(converted, pattern):
    output, _ = converted
    files = list_files(str(output / pattern))
    everything = filenames_seen(files, None)
    parts = [filenames_seen(files, tf.distribute.InputContext(2, i, 2)) for i in range(2)]
    assert all(parts) and sorted(parts[0] + parts[1]) == sorted(everything)
    assert len(set(everything)) == len(everything)


def test_per_replica_batch_from_the_input_context(converted):
    output, _ = converted
    dataset = batching.build_dataset(
        str(output / "train-*"),
        training=True,
        global_batch_size=8,
        image_size=16,
        input_context=tf.distribute.InputContext(2, 0, 2),
    )
    assert next(iter(dataset))[0].shape[0] == 4


def test_deterministic_mode_repeats_exactly(converted):
    output, _ = converted

    def first_batches(seed):
        dataset = batching.build_dataset(
            str(output / "train-*"),
            training=True,
            global_batch_size=4,
            image_size=24,
            deterministic=True,
            seed=seed,
        )
        return [b[0].numpy() for b, _ in zip(dataset, range(3))]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_errors_name_the_path(converted, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        batching.build_dataset(
            str(tmp_path / "missing" / "train-*"), training=True, global_batch_size=2
        )
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        batching.build_dataset(str(tmp_path / "train-*"), training=True, global_batch_size=2)
    with pytest.raises(ValueError, match="`preprocessing`"):
        batching.build_dataset(
            str(converted[0] / "train-*"),
            training=True,
            global_batch_size=2,
            preprocessing="imagemagick",
        )
    good = (converted[0] / "train-00000-of-00003").read_bytes()
    (tmp_path / "train-00000-of-00002").write_bytes(good)
    (tmp_path / "train-00001-of-00002").write_bytes(good[: len(good) // 2])
    dataset = batching.build_dataset(
        str(tmp_path / "train-*"), training=False, global_batch_size=2, image_size=16
    )
    with pytest.raises(bad_data.BadDataError, match="train-00001-of-00002"):
        with bad_data.naming_bad_files(dataset.files):
            for _ in dataset:
                pass


def test_a_model_side_error_is_re_raised_at_once(converted, no_rescan):
    output, _ = converted
    error = tf.errors.InvalidArgumentError(
        None, None, "Received a label value of 1000 which is outside the valid range [0, 1000)"
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the valid range") as raised:
        with bad_data.naming_bad_files(list_files(str(output / "train-*"))):
            raise error
    assert raised.value is error


def test_a_label_outside_the_classes_is_named_with_no_files_to_rescan(no_rescan):
    """TFDS's source has no files of its own to rescan: its label errors are
    named all the same, as the assertion's one line."""
    labels = tf.data.Dataset.from_tensor_slices([1, 7]).map(
        lambda label: bad_data.checked_label(label, 4)
    )
    with pytest.raises(bad_data.LabelOutOfRange) as raised:
        with bad_data.naming_bad_files([]):
            for _ in labels:
                pass
    message = str(raised.value)
    assert "Label outside [0, 4): is the label offset right?" in message and "\n" not in message
