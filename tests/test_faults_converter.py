"""The converter under faults: shards reproducible across processes, and every
bad input, flag or output directory answered in one line that names it and
what is wrong, exit status 1, no traceback, nothing lost.

Root runs these tests and can read any file, so an unreadable file is made
in ways that hold for root too: a dangling symbolic link and a symbolic link
to itself (real), and a PermissionError raised in this process for one path
(simulated). A full disk is a real file size limit (RLIMIT_FSIZE, with
SIGXFSZ ignored so the write fails with EFBIG) on a converter process, and a
simulated ENOSPC from TensorFlow's writer in this process. A file name that is
not UTF-8 is written as bytes; a JPEG that Pillow decodes and TensorFlow does
not is a lossless JPEG, encoded here.
"""

import errno
import io
import json
import os
import re
import shutil
import struct
import sys
import tarfile

import keras
import numpy as np
import pytest
from PIL import Image

import commands

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFRecords are TensorFlow's"
)
tf = pytest.importorskip("tensorflow")

from tools import imagenet_layouts  # noqa: E402
from tools import imagenet_to_tfrecords as converter  # noqa: E402
from tools import make_fake_imagenet  # noqa: E402
from tools.make_fake_imagenet import wnid  # noqa: E402

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 6, 2
SHARDS = dict(train_shards=3, validation_shards=2)
ERROR = "imagenet_to_tfrecords: error:"
TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
# Runs a module as `python -m` would, then says whether TensorFlow was imported.
TENSORFLOW_IMPORTED = "tensorflow imported:"
WITHOUT_TENSORFLOW = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    f"    print({TENSORFLOW_IMPORTED!r}, 'tensorflow' in sys.modules)\n"
)
# Runs a command under a file size limit (bytes, the first argument).
UNDER_A_FILE_SIZE_LIMIT = (
    "import os, resource, signal, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """A fake set with the awkward files (two of them undecodable)."""
    root = tmp_path_factory.mktemp("fake")
    make_fake_imagenet.make(str(root), CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, with_bad_files=True)
    return root


def copy_raw(fake, tmp_path):
    shutil.copytree(fake / "raw", tmp_path / "raw")
    return tmp_path / "raw"


def copy_archives(fake, tmp_path):
    shutil.copytree(fake / "archives", tmp_path / "archives")
    return tmp_path / "archives"


def shard_bytes(directory):
    return {
        name: (directory / name).read_bytes()
        for name in sorted(os.listdir(directory))
        if converter.SHARD_NAME.match(name)
    }


def convert(raw, output, **kwargs):
    """Converts a tree in this process, as the command line does."""
    return converter.convert(
        str(raw),
        str(output),
        validation_labels=str(raw / "validation_labels.txt"),
        synset_names=str(raw / "synsets.txt"),
        **{**SHARDS, **kwargs},
    )


def refused(match, source, output, **kwargs):
    """The one-line ConversionError that converting `source` raises; checks
    that nothing was written."""
    with pytest.raises(converter.ConversionError, match=match) as raised:
        converter.convert(str(source), str(output), **{**SHARDS, **kwargs})
    assert "\n" not in str(raised.value)
    assert not output.is_dir() or not shard_bytes(output)
    return str(raised.value)


def converter_command(raw, output, *flags):
    return commands.module(
        "tools.imagenet_to_tfrecords",
        f"--raw_data_dir={raw}",
        f"--output_dir={output}",
        f"--validation_labels={raw / 'validation_labels.txt'}",
        f"--synset_names={raw / 'synsets.txt'}",
        f"--train_shards={SHARDS['train_shards']}",
        f"--validation_shards={SHARDS['validation_shards']}",
        "--num_workers=1",
        *flags,
    )


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith(ERROR)]


@pytest.fixture(scope="module")
def by_a_process(fake, tmp_path_factory):
    """The fake set converted by a converter process: its output directory."""
    root = tmp_path_factory.mktemp("by_a_process")
    command = converter_command(fake / "raw", root / "out", "--allow_skips")
    code, output = commands.run(command, root / "convert.log")
    assert code == 0, output[-3000:]
    return root / "out"


# --- Reproducible shards -----------------------------------------------------


def test_two_processes_write_byte_identical_shards(fake, by_a_process, tmp_path):
    command = converter_command(fake / "raw", tmp_path / "out", "--allow_skips")
    code, output = commands.run(command, tmp_path / "convert.log")
    assert code == 0, output[-3000:]
    first, second = shard_bytes(by_a_process), shard_bytes(tmp_path / "out")
    assert len(first) == SHARDS["train_shards"] + SHARDS["validation_shards"]
    assert list(second) == list(first)
    for name in first:
        assert second[name] == first[name], f"{name} differs between two processes"
    convert(fake / "raw", tmp_path / "here")
    assert shard_bytes(tmp_path / "here") == first


# --- Splits and classes without images ---------------------------------------


def test_an_empty_train_folder_and_empty_labels_are_refused(tmp_path):
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "validation").mkdir()
    (raw / "validation_labels.txt").write_text("")
    (raw / "synsets.txt").write_text("")
    code, output = commands.run(converter_command(raw, tmp_path / "out"), tmp_path / "log")
    assert code == 1 and "Traceback" not in output, output[-3000:]
    assert error_lines(output) == [f"{ERROR} train: no images in {raw / 'train'}"]
    assert not (tmp_path / "out").exists()


def empty_tar():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    return buffer.getvalue()


def test_a_split_without_images_is_refused_naming_it(fake, tmp_path):
    raw = copy_raw(fake, tmp_path)
    shutil.rmtree(raw / "validation")
    (raw / "validation").mkdir()
    refused(
        f"^validation: no images in {re.escape(str(raw / 'validation'))}$",
        raw,
        tmp_path / "out",
        validation_labels=str(raw / "validation_labels.txt"),
    )
    archives = copy_archives(fake, tmp_path)
    (archives / "ILSVRC2012_img_val.tar").write_bytes(empty_tar())
    refused("^validation: no images in .*ILSVRC2012_img_val.tar$", archives, tmp_path / "out")
    (archives / TRAIN_ARCHIVE).write_bytes(empty_tar())
    refused(f"^train: no images in .*{TRAIN_ARCHIVE}", archives, tmp_path / "out")


def test_a_class_without_images_is_refused_naming_it(fake, tmp_path):
    raw = copy_raw(fake, tmp_path)
    (raw / "train" / wnid(CLASSES)).mkdir()
    refused(
        f"^train: class {wnid(CLASSES)} has no images "
        f"\\({re.escape(str(raw / 'train' / wnid(CLASSES)))} is empty\\)$",
        raw,
        tmp_path / "out",
        validation_labels=str(raw / "validation_labels.txt"),
    )

    sorted_validation = tmp_path / "sorted"
    shutil.copytree(fake / "raw" / "train", sorted_validation / "train")
    for c in range(CLASSES):
        (sorted_validation / "validation" / wnid(c)).mkdir(parents=True)
    shutil.copy(
        fake / "raw" / "validation" / "ILSVRC2012_val_00000001.JPEG",
        sorted_validation / "validation" / wnid(0),
    )
    refused(f"^validation: class {wnid(1)} has no images", sorted_validation, tmp_path / "out")

    archives = copy_archives(fake, tmp_path)
    with tarfile.open(archives / TRAIN_ARCHIVE, "a") as outer:
        info = tarfile.TarInfo(f"{wnid(CLASSES)}.tar")
        info.size = len(empty_tar())
        outer.addfile(info, io.BytesIO(empty_tar()))
    refused(
        f"^train: class {wnid(CLASSES)} has no images "
        f"\\(.*{TRAIN_ARCHIVE}:{wnid(CLASSES)}.tar holds no files\\)$",
        archives,
        tmp_path / "out",
    )


def test_verify_names_an_empty_split_and_a_class_without_images(fake, tmp_path):
    """Output that older converters wrote from such inputs fails --verify."""
    convert(fake / "raw", tmp_path)
    assert converter.verify(str(tmp_path)) == []
    with (tmp_path / "labels.txt").open("a") as f:
        f.write(f"{CLASSES + 1}\t{wnid(CLASSES)}\t\n")
    for name in ("validation-00000-of-00002", "validation-00001-of-00002"):
        with tf.io.TFRecordWriter(str(tmp_path / name)):
            pass
    problems = converter.verify(str(tmp_path))
    assert "validation: no records in its 2 shard(s)" in problems, problems
    assert f"train: no images of label(s) [{CLASSES + 1}] of the {CLASSES + 1} in labels.txt" in (
        problems
    )


def test_a_class_left_as_an_archive_is_named(fake, tmp_path):
    """Left unextracted among the class folders, the class would be missing
    and every label after it shift: refused, --allow_skips or not."""
    raw = copy_raw(fake, tmp_path)
    folder = raw / "train" / wnid(1)
    archive = raw / "train" / f"{wnid(1)}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=".")
    shutil.rmtree(folder)
    for flags in [], ["--allow_skips"]:
        command = converter_command(raw, tmp_path / "out", *flags)
        code, output = commands.run(command, tmp_path / "log")
        assert code == 1 and "Traceback" not in output, output[-3000:]
        assert error_lines(output) == [
            f"{ERROR} {archive}: class {wnid(1)} left as an archive; extract it into {folder}/ "
            "(or remove it)"
        ]
        assert not (tmp_path / "out").exists()


def test_a_class_emptied_by_skips_is_refused_even_with_allow_skips(fake, by_a_process, tmp_path):
    """Its shards are kept: the rerun, once the files are fixed, rewrites
    only the shards that skipped them."""
    raw = copy_raw(fake, tmp_path)
    emptied = raw / "train" / wnid(2)
    for image in emptied.iterdir():
        image.write_bytes(b"lost in the download\n")
    out = tmp_path / "out"
    code, output = commands.run(converter_command(raw, out, "--allow_skips"), tmp_path / "log")
    assert code == 1 and "Traceback" not in output, output[-3000:]
    assert error_lines(output) == [
        f"{ERROR} train: every file of class(es) {wnid(2)} was skipped (listed in "
        f"{out / 'summary.json'}); fix or replace them and rerun, which rewrites only the "
        "shards that skipped them"
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["train"]["skipped"]) == TRAIN_PER_CLASS + 2  # and the fake set's two
    written = shard_bytes(out)
    assert len(written) == 5

    shutil.rmtree(emptied)
    shutil.copytree(fake / "raw" / "train" / wnid(2), emptied)
    again = convert(raw, out)
    assert again["shards_written_this_run"] == len(
        [n for n, data in written.items() if data != shard_bytes(by_a_process)[n]]
    )
    assert shard_bytes(out) == shard_bytes(by_a_process)


# --- Class folders and file names -------------------------------------------------


def test_folders_that_are_not_classes_are_refused_or_skipped(fake, by_a_process, tmp_path, capsys):
    """A stray folder among the class folders would become a class and shift
    every label after it: refused, or skipped with --allow_skips; a hidden
    one is ignored, saying so."""
    raw = copy_raw(fake, tmp_path)
    train = raw / "train"
    for folder, image in (".ipynb_checkpoints", wnid(0)), ("tmp", wnid(1)):
        (train / folder).mkdir()
        shutil.copy(train / image / f"{image}_0.JPEG", train / folder / "a_copy.JPEG")
    code, output = commands.run(converter_command(raw, tmp_path / "out"), tmp_path / "log")
    assert code == 1 and "Traceback" not in output, output[-3000:]
    assert error_lines(output) == [
        f"{ERROR} {train}: 1 folder(s) are not classes: tmp (a class folder is named by its "
        "wnid, n + 8 digits, or in --validation_labels or --synset_names); move them out, or "
        "rerun with --allow_skips to skip them"
    ]
    assert not (tmp_path / "out").exists()

    summary = convert(raw, tmp_path / "out", allow_skips=True)
    assert f"{train}: ignoring the hidden .ipynb_checkpoints" in capsys.readouterr().out.split("\n")
    assert f"{train / 'tmp'}: {imagenet_layouts.NOT_A_CLASS}" in summary["train"]["skipped"]
    assert shard_bytes(tmp_path / "out") == shard_bytes(by_a_process)  # the same labels


def test_class_folders_named_in_the_labels_or_names_file_are_classes(tmp_path):
    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for name in "cat", "dog":
        (raw / "train" / name).mkdir(parents=True)
        for n in range(2):
            image = make_fake_imagenet.texture(rng, n, 2, (8, 8))
            (raw / "train" / name / f"{name}_{n}.JPEG").write_bytes(make_fake_imagenet.jpeg(image))
    (raw / "validation").mkdir()
    shutil.copy(raw / "train" / "cat" / "cat_0.JPEG", raw / "validation" / "val_0.JPEG")
    (raw / "validation_labels.txt").write_text("cat\n")
    (raw / "synsets.txt").write_text("cat a cat\ndog a dog\n")
    convert(raw, tmp_path / "out", train_shards=1, validation_shards=1)
    labels = (tmp_path / "out" / "labels.txt").read_text()
    assert labels == "1\tcat\ta cat\n2\tdog\ta dog\n"


def test_file_names_that_are_not_utf8_are_named_or_skipped(fake, by_a_process, tmp_path):
    raw = copy_raw(fake, tmp_path)
    folder = raw / "train" / wnid(2)
    with open(os.fsencode(folder) + b"/caf\xe9.JPEG", "wb") as f:
        f.write((folder / f"{wnid(2)}_0.JPEG").read_bytes())
    escaped = f"{folder}/caf\\xe9.JPEG"
    code, output = commands.run(converter_command(raw, tmp_path / "out"), tmp_path / "log")
    assert code == 1 and "Traceback" not in output, output[-3000:]
    assert error_lines(output) == [
        f"{ERROR} {escaped}: the file name is not UTF-8; rename it, or rerun with "
        "--allow_skips to skip it"
    ]
    assert not (tmp_path / "out").exists()

    command = converter_command(raw, tmp_path / "out", "--allow_skips")
    code, output = commands.run(command, tmp_path / "allowed.log")
    assert code == 0 and "Traceback" not in output, output[-3000:]
    assert f"  SKIPPED {escaped}: the file name is not UTF-8" in output.splitlines()
    assert shard_bytes(tmp_path / "out") == shard_bytes(by_a_process)


def test_missing_class_names_are_warned_in_one_line(fake, tmp_path, capsys):
    names = tmp_path / "synsets.txt"
    names.write_text(f"{wnid(0)} fake class 0\n")
    converter.convert(
        str(fake / "raw"), str(tmp_path / "out"), synset_names=str(names), splits=("train",)
    )
    warnings = [line for line in capsys.readouterr().out.split("\n") if "warning" in line]
    assert warnings == [
        f"warning: 3 of the 4 classes have no name in --synset_names={names} ({wnid(1)}, "
        f"{wnid(2)}, {wnid(3)}): labels.txt and image/class/text leave them empty"
    ]
    assert (tmp_path / "out" / "labels.txt").read_text().split("\n")[1] == f"2\t{wnid(1)}\t"


# --- Files that cannot be read -------------------------------------------------


def test_files_that_cannot_be_read_are_listed_and_skipped(fake, tmp_path, monkeypatch):
    """A folder inside a class folder, a dangling symbolic link, a link to
    itself and a file the system refuses to open are each listed with their
    path and skipped, like an undecodable image; the run finishes."""
    raw = copy_raw(fake, tmp_path)
    folder = raw / "train" / wnid(1) / "more_images"
    folder.mkdir()
    shutil.copy(raw / "train" / wnid(1) / f"{wnid(1)}_0.JPEG", folder)
    dangling = raw / "train" / wnid(2) / "dangling.JPEG"
    dangling.symlink_to(tmp_path / "moved_away.JPEG")
    loop = raw / "train" / wnid(2) / "loop.JPEG"
    loop.symlink_to(loop)
    denied = raw / "train" / wnid(3) / f"{wnid(3)}_0.JPEG"

    def open_but_not_denied(path, *args, **kwargs):
        if str(path) == str(denied):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(imagenet_layouts, "open", open_but_not_denied, raising=False)
    summary = convert(raw, tmp_path / "out")
    skipped = summary["train"]["skipped"]
    for line in (
        f"{folder}: cannot be read: a folder, not an image",
        f"{dangling}: cannot be read: a broken symbolic link to {tmp_path / 'moved_away.JPEG'}",
        f"{loop}: cannot be read: Too many levels of symbolic links",
        f"{denied}: cannot be read: Permission denied",
    ):
        assert line in skipped, skipped
    assert len(skipped) == 2 + 4  # with the fake set's two undecodable files
    assert summary["train"]["images"] == CLASSES * TRAIN_PER_CLASS + 3 - 1  # 3 re-encoded
    assert converter.verify(str(tmp_path / "out")) == []

    again = convert(raw, tmp_path / "out")  # the rerun finds every shard done
    assert again["shards_already_done"] == 5 and again["train"]["skipped"] == skipped


def test_a_rerun_rewrites_the_shard_whose_skipped_file_now_reads(
    fake, by_a_process, tmp_path, capsys
):
    """The shard's recorded skips say which files to try again; the others
    stay done."""
    raw = copy_raw(fake, tmp_path)
    image = raw / "train" / wnid(1) / f"{wnid(1)}_3.JPEG"
    image.write_bytes(b"not downloaded yet\n")
    out = tmp_path / "out"
    skip = f"{image}: not an image format Pillow recognises"
    assert skip in convert(raw, out)["train"]["skipped"]
    (shard,) = [
        name for name in shard_bytes(out) if skip in converter.read_stats(str(out), name)["skipped"]
    ]
    skipped_there = len(converter.read_stats(str(out), shard)["skipped"])
    capsys.readouterr()

    shutil.copy(fake / "raw" / "train" / wnid(1) / image.name, image)
    again = convert(raw, out)
    lines = capsys.readouterr().out.split("\n")
    assert (
        f"{shard}: 1 of the {skipped_there} file(s) it skipped now read ({image}); writing it again"
        in lines
    )
    assert again["shards_written_this_run"] == 1 and len(again["train"]["skipped"]) == 2
    assert shard_bytes(out) == shard_bytes(by_a_process)
    assert convert(raw, out)["shards_already_done"] == 5  # the other skips still fail


def lossless_jpeg(pixels):
    """An RGB lossless JPEG (ITU T.81 process 14, SOF3, predictor 1), which
    Pillow's libjpeg-turbo (3.x) decodes and TensorFlow's (2.1) does not."""
    height, width, _ = pixels.shape
    bits = []
    for y in range(height):
        for x in range(width):
            for c in range(3):
                predicted = (
                    128 if x == y == 0 else pixels[y, x - 1, c] if x else pixels[y - 1, 0, c]
                )
                difference = int(pixels[y, x, c]) - int(predicted)
                size = abs(difference).bit_length()
                bits.append(f"{size:04b}")  # the Huffman code of `size`
                if size:
                    extra = difference if difference > 0 else difference - 1
                    bits.append(f"{extra & ((1 << size) - 1):0{size}b}")
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))

    def segment(marker, payload):
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    frame = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
    table = bytes([0, 0, 0, 0, 9] + [0] * 12) + bytes(range(9))  # sizes 0..8: 4-bit codes
    scan = bytes([3, 1, 0, 2, 0, 3, 0, 1, 0, 0])  # the three components, predictor 1
    return b"".join(
        [
            b"\xff\xd8",
            segment(0xFFC3, frame),
            segment(0xFFC4, table),
            segment(0xFFDA, scan),
            data.replace(b"\xff", b"\xff\x00"),
            b"\xff\xd9",
        ]
    )


def test_images_training_cannot_crop_or_decode_are_skipped_or_re_encoded(fake, tmp_path):
    """A 1x1 image passes Pillow but not training's crops: skipped. A
    lossless JPEG passes Pillow but not tf.io.decode_jpeg: re-encoded.
    --verify names both in shards written without these checks."""
    pixels = make_fake_imagenet.texture(np.random.default_rng(0), 1, CLASSES, (12, 16))
    lossless = lossless_jpeg(pixels)
    with Image.open(io.BytesIO(lossless)) as image:
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert (np.asarray(image) == pixels).all()
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(lossless, channels=3)
    raw = copy_raw(fake, tmp_path)
    folder = raw / "train" / wnid(1)
    small = {"one_pixel.JPEG": (1, 1), "one_row.JPEG": (1, 16)}
    for name, size in small.items():
        (folder / name).write_bytes(make_fake_imagenet.jpeg(pixels[: size[0], : size[1]]))
    (folder / "lossless.JPEG").write_bytes(lossless)

    summary = convert(raw, tmp_path / "out")
    for name, (height, width) in small.items():
        assert (
            f"{folder / name}: {width}x{height} pixels; training's crops need at least 2x2"
            in summary["train"]["skipped"]
        )
    reencoded = f"{folder / 'lossless.JPEG'}: JPEG RGB that tf.io.decode_jpeg cannot decode"
    assert reencoded in summary["train"]["reencoded"]
    assert converter.verify(str(tmp_path / "out")) == []

    shard = tmp_path / "out" / "validation-00001-of-00002"
    unchecked = {"tiny.JPEG": make_fake_imagenet.jpeg(pixels[:1, :1]), "lossless.JPEG": lossless}
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for name, jpeg in unchecked.items():
            ref = imagenet_layouts.ImageRef(name, wnid(0), "")
            writer.write(converter.make_example(tf, ref, jpeg, 1, 1, 1, "").SerializeToString())
    problems = converter.verify(str(tmp_path / "out"))
    assert f"{shard}: tiny.JPEG is 1x1 pixels; training's crops need at least 2x2" in problems
    assert f"{shard}: lossless.JPEG does not decode" in problems


def test_the_smallest_image_side_is_the_smallest_training_crops():
    """MIN_IMAGE_SIDE is where every preset's crops start to work."""
    from recipes.imagenet.crops import preprocess
    from recipes.imagenet.preprocessing import PREPROCESSING

    def crops(side):
        pixels = np.full((side, 40, 3), 128, np.uint8)
        image = tf.constant(make_fake_imagenet.jpeg(pixels))
        try:
            for preprocessing in PREPROCESSING:
                preprocess(image, False, 16, preprocessing)
                for seed in range(5):
                    preprocess(image, True, 16, preprocessing, tf.constant([seed, 0]))
            return True
        except tf.errors.InvalidArgumentError:
            return False

    assert crops(converter.MIN_IMAGE_SIDE)
    assert not crops(converter.MIN_IMAGE_SIDE - 1)


def test_skipped_files_are_listed_by_the_command_line(fake, tmp_path):
    raw = copy_raw(fake, tmp_path)
    (raw / "train" / wnid(0) / "a_folder").mkdir()
    (raw / "train" / wnid(1) / "dangling.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    code, output = commands.run(converter_command(raw, tmp_path / "out"), tmp_path / "first.log")
    assert code == 1 and "Traceback" not in output, output[-3000:]
    assert f"SKIPPED {raw / 'train' / wnid(0) / 'a_folder'}: cannot be read: a folder" in output
    assert f"SKIPPED {raw / 'train' / wnid(1) / 'dangling.JPEG'}: cannot be read: a broken" in (
        output
    )
    assert "4 file(s) could not be read or decoded" in output
    command = converter_command(raw, tmp_path / "out", "--allow_skips")
    code, output = commands.run(command, tmp_path / "again.log")
    assert code == 0 and "0 shards written, 5 already done" in output, output[-3000:]


def test_a_class_folder_that_cannot_be_listed_is_named(fake, tmp_path, monkeypatch):
    raw = copy_raw(fake, tmp_path)
    denied = str(raw / "train" / wnid(2))
    listdir = os.listdir

    def listdir_but_not_denied(path="."):
        if str(path) == denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", listdir_but_not_denied)
    refused(
        f"^{re.escape(denied)}: cannot be listed \\(Permission denied\\)$",
        raw,
        tmp_path / "out",
        validation_labels=str(raw / "validation_labels.txt"),
    )


def truncations(archive):
    """{where it stops: length}: inside a header, inside a class's tar, at a
    class's boundary, and just before the end-of-archive marker."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        end = tar.offset
    return {
        "in a header": 100,
        "in a class": members[1].offset_data + 1000,
        "at a class boundary": members[1].offset,
        "before the end marker": end,
    }


@pytest.mark.parametrize(
    "where", ["in a header", "in a class", "at a class boundary", "before the end marker"]
)
def test_a_truncated_archive_is_named(fake, tmp_path, where):
    archives = copy_archives(fake, tmp_path)
    archive = archives / TRAIN_ARCHIVE
    data = archive.read_bytes()
    archive.write_bytes(data[: truncations(archive)[where]])
    message = refused(
        f"^{re.escape(str(archive))}: truncated or damaged", archives, tmp_path / "out"
    )
    assert message.endswith("download it again")


def test_a_truncated_validation_archive_and_devkit_are_named(fake, tmp_path):
    archives = copy_archives(fake, tmp_path)
    validation = archives / "ILSVRC2012_img_val.tar"
    with tarfile.open(validation) as tar:
        second = tar.getmembers()[1].offset
    validation.write_bytes(validation.read_bytes()[:second])
    refused(f"^{re.escape(str(validation))}: truncated or damaged", archives, tmp_path / "out")
    shutil.copy(fake / "archives" / validation.name, validation)
    devkit = archives / "ILSVRC2012_devkit_t12.tar.gz"
    devkit.write_bytes(devkit.read_bytes()[: devkit.stat().st_size // 2])
    refused(f"^{re.escape(str(devkit))}: truncated or damaged", archives, tmp_path / "out")


def test_unreadable_labels_and_names_files_are_named(fake, tmp_path):
    raw = copy_raw(fake, tmp_path)
    refused(
        f"^--validation_labels={re.escape(str(tmp_path))}: cannot be read as text "
        "\\(Is a directory\\)$",
        raw,
        tmp_path / "out",
        validation_labels=str(tmp_path),
    )
    names = raw / "synsets.txt"
    lines = names.read_text().splitlines()
    names.write_text("\n".join([lines[0], wnid(1), *lines[2:]]) + "\n")
    refused(
        f"^{re.escape(str(names))}, line 2: expected `wnid name`, found '{wnid(1)}'$",
        raw,
        tmp_path / "out",
        validation_labels=str(raw / "validation_labels.txt"),
        synset_names=str(names),
    )


# --- Statistics and --verify ------------------------------------------------------


def test_statistics_that_are_damaged_or_disagree_are_named_and_rewritten(
    fake, by_a_process, tmp_path, capsys
):
    """The training recipe counts its examples from the statistics: --verify
    checks them against the records, and a rerun against the shard's inputs,
    writing that shard again."""
    out = tmp_path / "out"
    shutil.copytree(by_a_process, out)
    work = out / converter.WORK_DIR
    disagrees, damaged, not_stats = (
        work / f"{name}.json"
        for name in ("train-00000-of-00003", "train-00001-of-00003", "validation-00000-of-00002")
    )
    original = json.loads(disagrees.read_text())
    disagrees.write_text(json.dumps({**original, "count": 999}))
    damaged.write_text(damaged.read_text()[:20])
    not_stats.write_text("[]")

    problems = converter.verify(str(out))
    assert (
        f"{disagrees}: 999 records, but {out / 'train-00000-of-00003'} holds {original['count']}"
        in problems
    )
    assert any(p.startswith(f"{damaged}: cannot be read (") for p in problems), problems
    assert f"{not_stats}: damaged (not the statistics the converter writes)" in problems
    assert len(problems) == 3, problems

    capsys.readouterr()
    summary = convert(fake / "raw", out)
    lines = capsys.readouterr().out.split("\n")
    files = original["count"] + len(original["skipped"])
    assert (
        f"{disagrees}: 999 records and {len(original['skipped'])} skipped, but "
        f"train-00000-of-00003 is written from {files} files; writing train-00000-of-00003 again"
    ) in lines
    assert any(
        line.startswith(f"{damaged}: cannot be read (")
        and line.endswith("; writing train-00001-of-00003 again")
        for line in lines
    ), lines
    assert (
        f"{not_stats}: damaged (not the statistics the converter writes); writing "
        "validation-00000-of-00002 again"
    ) in lines
    assert summary["shards_written_this_run"] == 3
    assert shard_bytes(out) == shard_bytes(by_a_process)
    assert converter.verify(str(out)) == []


def test_a_shard_written_again_replaces_the_old_one_only_when_complete(
    fake, by_a_process, tmp_path, monkeypatch
):
    """A rerun stopped while it writes a shard again (its statistics were
    damaged) keeps the old shard; without statistics beside it, the next run
    writes it again."""
    out = tmp_path / "out"
    shutil.copytree(by_a_process, out)
    shard = out / "train-00002-of-00003"
    stats = out / converter.WORK_DIR / f"{shard.name}.json"
    stats.write_text("")
    replace = os.replace

    def stopped_at_the_shard(source, target):
        if str(target) == str(shard):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", stopped_at_the_shard)
    with pytest.raises(KeyboardInterrupt):
        convert(fake / "raw", out)
    monkeypatch.undo()
    assert shard_bytes(out) == shard_bytes(by_a_process)
    assert not stats.exists()
    assert convert(fake / "raw", out)["shards_written_this_run"] == 1
    assert shard_bytes(out) == shard_bytes(by_a_process)
    assert converter.verify(str(out)) == []


def test_verify_names_a_labels_file_that_is_a_directory(by_a_process, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(by_a_process, out)
    (out / "labels.txt").unlink()
    (out / "labels.txt").mkdir()
    command = commands.module("tools.imagenet_to_tfrecords", "--verify", f"--output_dir={out}")
    code, output = commands.run(command, tmp_path / "log")
    assert code == 1, output[-3000:]
    assert [line for line in output.splitlines() if line.strip()] == [
        f"PROBLEM {out / 'labels.txt'}: cannot be read (Is a directory)",
        f"verify: 1 problem(s) in {out}",
    ]


# --- The output directory --------------------------------------------------------


def test_an_output_dir_that_cannot_be_written_is_named(fake, tmp_path, monkeypatch):
    raw = fake / "raw"
    labels = dict(validation_labels=str(raw / "validation_labels.txt"))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    refused(
        f"^--output_dir={re.escape(str(a_file))} is a file, not a directory$", raw, a_file, **labels
    )
    refused(
        f"^--output_dir={re.escape(str(a_file / 'out'))}: {re.escape(str(a_file))} is a file",
        raw,
        a_file / "out",
        **labels,
    )
    assert a_file.read_text() == "not a folder"

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: path != str(read_only) and access(path, mode)
    )
    refused(
        f"^--output_dir={re.escape(str(read_only / 'out'))}: {re.escape(str(read_only))} is not "
        "writable$",
        raw,
        read_only / "out",
        **labels,
    )
    monkeypatch.undo()

    def makedirs_denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "makedirs", makedirs_denied)
    work = tmp_path / "out" / converter.WORK_DIR
    refused(
        f"^cannot write {re.escape(str(work))}: Permission denied$", raw, tmp_path / "out", **labels
    )


def test_a_rerun_is_refused_only_where_shards_from_other_inputs_exist(
    fake, by_a_process, tmp_path, monkeypatch
):
    """A run stopped before its first shard leaves a record of its inputs and
    no shard: a rerun from other inputs replaces the record. Once a shard
    exists, other inputs are refused."""
    raw = copy_raw(fake, tmp_path)
    (raw / "train" / wnid(0) / "a_folder").mkdir()
    real_write_shard = converter.write_shard

    def stopped(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(converter, "write_shard", stopped)
    with pytest.raises(KeyboardInterrupt):
        convert(raw, tmp_path / "out")
    assert (tmp_path / "out" / converter.INPUTS_RECORD).exists()
    assert not shard_bytes(tmp_path / "out")
    (raw / "train" / wnid(0) / "a_folder").rmdir()
    calls = []

    def stops_after_one(job):
        calls.append(job.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_write_shard(job)

    monkeypatch.setattr(converter, "write_shard", stops_after_one)
    with pytest.raises(KeyboardInterrupt):
        convert(raw, tmp_path / "out")  # other inputs than the record's, and no shard
    assert len(shard_bytes(tmp_path / "out")) == 1
    monkeypatch.setattr(converter, "write_shard", real_write_shard)
    (raw / "train" / wnid(0) / "a_folder").mkdir()
    with pytest.raises(converter.ConversionError, match="holds shards written from other inputs"):
        convert(raw, tmp_path / "out")
    (raw / "train" / wnid(0) / "a_folder").rmdir()
    summary = convert(raw, tmp_path / "out")
    assert summary["shards_already_done"] == 1
    assert shard_bytes(tmp_path / "out") == shard_bytes(by_a_process)


def test_duplicate_file_names_are_refused_naming_both(fake, tmp_path):
    raw = copy_raw(fake, tmp_path)
    name = f"{wnid(0)}_0.JPEG"
    shutil.copy(raw / "train" / wnid(0) / name, raw / "train" / wnid(1) / name)
    first, second = raw / "train" / wnid(0) / name, raw / "train" / wnid(1) / name
    refused(
        f"^{re.escape(str(first))} and {re.escape(str(second))} have the same file name",
        raw,
        tmp_path / "out",
        validation_labels=str(raw / "validation_labels.txt"),
    )
    assert not (tmp_path / "out").exists()


# --- Bounding boxes ------------------------------------------------------------

GOOD_BOX_FILE = (
    "<annotation><size><width>64</width><height>48</height></size>"
    "<object><bndbox><xmin>8</xmin><ymin>12</ymin><xmax>40</xmax><ymax>36</ymax></bndbox>"
    "</object></annotation>"
)


def box_folder(path, **files):
    """A folder of annotation files by image stem, each in its class folder."""
    for stem, text in files.items():
        (path / stem.split("_")[0]).mkdir(parents=True, exist_ok=True)
        (path / stem.split("_")[0] / f"{stem}.xml").write_text(text)
    return path


def test_a_box_folder_without_annotations_is_refused_naming_it(fake, tmp_path):
    """Missing, empty (no .xml at any depth), or with two files for one image."""
    labels = fake / "raw" / "validation_labels.txt"

    def refused_boxes(message, boxes):
        refused(
            "^" + re.escape(message),
            fake / "raw",
            tmp_path / "out",
            validation_labels=str(labels),
            bounding_boxes=str(boxes),
        )

    refused_boxes(f"--bounding_boxes={tmp_path / 'missing'} does not exist", tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / wnid(0)).mkdir(parents=True)
    (empty / wnid(0) / "README.txt").write_text("not an annotation")
    refused_boxes(f"--bounding_boxes={empty} holds no .xml files", empty)
    twice = box_folder(tmp_path / "twice", **{f"{wnid(0)}_0": GOOD_BOX_FILE})
    (twice / f"{wnid(0)}_0.xml").write_text(GOOD_BOX_FILE)
    first, second = twice / f"{wnid(0)}_0.xml", twice / wnid(0) / f"{wnid(0)}_0.xml"
    refused_boxes(f"{first} and {second} both annotate image {wnid(0)}_0: remove one", twice)
    assert not (tmp_path / "out").exists()


NO_BOX = GOOD_BOX_FILE.split("<object>")[0] + "</annotation>"
# Each file, and a pattern of why it is refused (the parser's words vary).
BAD_BOX_FILES = {
    "not XML": ("<annotation><size>", r"not XML \(no element found: .+\)"),
    "no size": (GOOD_BOX_FILE.replace("<height>48</height>", ""), "<size/height> missing"),
    "no box": (NO_BOX, "no <object><bndbox>"),
    "a word for a number": (
        GOOD_BOX_FILE.replace("<xmax>40</xmax>", "<xmax>forty</xmax>"),
        "<xmax> 'forty', not a number",
    ),
    "a zero width": (GOOD_BOX_FILE.replace(">64<", ">0<"), "the image's size is 0x48 pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_BOX_FILES))
def test_a_box_file_that_cannot_be_used_is_named(fake, tmp_path, case):
    """Refused before anything is written, as a folder that is not a class
    is: its image's boxes would be missing from the shards."""
    text, why = BAD_BOX_FILES[case]
    boxes = box_folder(tmp_path / "bbox", **{f"{wnid(1)}_0": GOOD_BOX_FILE, f"{wnid(2)}_3": text})
    bad = boxes / wnid(2) / f"{wnid(2)}_3.xml"
    refused(
        f"^{re.escape(str(bad))}: {why}; fix or remove it, or rerun with --allow_skips to "
        "convert its image without boxes$",
        fake / "raw",
        tmp_path / "out",
        validation_labels=str(fake / "raw" / "validation_labels.txt"),
        bounding_boxes=str(boxes),
    )
    assert not (tmp_path / "out").exists()


def test_a_bad_box_file_stops_the_command_line_or_is_skipped(fake, tmp_path):
    """One line and no traceback; with --allow_skips the image is converted
    without boxes, the file listed, and the report counts the images with
    boxes."""
    why = "no <object><bndbox>"
    boxes = box_folder(tmp_path / "bbox", **{f"{wnid(1)}_0": GOOD_BOX_FILE, f"{wnid(2)}_3": NO_BOX})
    bad = boxes / wnid(2) / f"{wnid(2)}_3.xml"
    command = converter_command(fake / "raw", tmp_path / "out", f"--bounding_boxes={boxes}")
    code, output = commands.run(command, tmp_path / "refused.log")
    assert code == 1 and "Traceback" not in output, output[-3000:]
    assert error_lines(output) == [
        f"{ERROR} {bad}: {why}; fix or remove it, or rerun with --allow_skips to convert its "
        "image without boxes"
    ]
    assert not (tmp_path / "out").exists()

    code, output = commands.run(command + ["--allow_skips"], tmp_path / "allowed.log")
    assert code == 0 and "Traceback" not in output, output[-3000:]
    lines = output.splitlines()
    images = CLASSES * TRAIN_PER_CLASS + 3  # and the 3 re-encoded
    assert f"  boxes for 1 of {images} training images" in lines, output[-3000:]
    assert f"  SKIPPED {bad}: {why} (its image has no boxes)" in lines, output[-3000:]
    assert converter.verify(str(tmp_path / "out")) == []


def test_a_rerun_with_other_boxes_is_refused_keeping_the_shards(fake, by_a_process, tmp_path):
    """Boxes added, removed or changed would leave shards written with other
    boxes beside the new ones: refused, naming the boxes, like other inputs.
    A record from before boxes existed stands for shards without them."""
    raw = fake / "raw"
    boxes = box_folder(tmp_path / "bbox", **{f"{wnid(1)}_0": GOOD_BOX_FILE})
    out = tmp_path / "out"
    convert(raw, out, allow_skips=True)
    written = shard_bytes(out)
    assert written == shard_bytes(by_a_process)
    differ = r"holds shards written from other inputs \(bounding boxes differ\)"
    with pytest.raises(converter.ConversionError, match=differ):
        convert(raw, out, allow_skips=True, bounding_boxes=str(boxes))
    record = json.loads((out / converter.INPUTS_RECORD).read_text())
    del record["bounding boxes"]  # as the converter wrote it before boxes
    (out / converter.INPUTS_RECORD).write_text(json.dumps(record))
    with pytest.raises(converter.ConversionError, match=differ):
        convert(raw, out, allow_skips=True, bounding_boxes=str(boxes))
    assert shard_bytes(out) == written

    with_boxes = tmp_path / "with_boxes"
    convert(raw, with_boxes, allow_skips=True, bounding_boxes=str(boxes))
    with pytest.raises(converter.ConversionError, match=differ):
        convert(raw, with_boxes, allow_skips=True)  # removed
    (boxes / wnid(1) / f"{wnid(1)}_0.xml").write_text(GOOD_BOX_FILE.replace(">8<", ">9<"))
    with pytest.raises(converter.ConversionError, match=differ):
        convert(raw, with_boxes, allow_skips=True, bounding_boxes=str(boxes))  # changed
    (boxes / wnid(1) / f"{wnid(1)}_0.xml").write_text(GOOD_BOX_FILE)
    shutil.move(boxes, tmp_path / "moved")  # the same boxes elsewhere
    summary = convert(raw, with_boxes, allow_skips=True, bounding_boxes=str(tmp_path / "moved"))
    assert summary["shards_written_this_run"] == 0
    assert summary["train"]["images_with_boxes"] == 1


# --- A full disk ----------------------------------------------------------------


def test_a_file_size_limit_stops_in_one_line_and_the_rerun_keeps_the_shards(
    fake, by_a_process, tmp_path
):
    """Validation's shards first: they fit under the limit; the first
    training shard does not. The rerun without the limit writes the rest."""
    reference = shard_bytes(by_a_process)
    sizes = {
        split: [len(v) for k, v in reference.items() if k.startswith(split)]
        for split in ("train", "validation")
    }
    assert max(sizes["validation"]) < min(sizes["train"])
    limit = (max(sizes["validation"]) + min(sizes["train"])) // 2
    command = converter_command(
        fake / "raw", tmp_path / "out", "--allow_skips", "--splits=validation,train"
    )
    limited = [sys.executable, "-c", UNDER_A_FILE_SIZE_LIMIT, str(limit), *command]
    code, output = commands.run(limited, tmp_path / "limited.log")
    partial = tmp_path / "out" / converter.WORK_DIR / "train-00000-of-00003.partial"
    assert code == 1 and "Traceback" not in output, output[-3000:]
    assert error_lines(output) == [
        f"{ERROR} cannot write {partial}: the file size limit (ulimit -f) was reached (File too "
        "large); the shards already finished are complete, and a rerun keeps them"
    ]
    written = shard_bytes(tmp_path / "out")
    assert sorted(written) == ["validation-00000-of-00002", "validation-00001-of-00002"]
    assert all(written[name] == reference[name] for name in written)

    code, output = commands.run(command, tmp_path / "rerun.log")
    assert code == 0 and "3 shards written, 2 already done" in output, output[-3000:]
    assert shard_bytes(tmp_path / "out") == reference


def test_a_full_disk_stops_in_one_line_and_the_rerun_keeps_the_shards(
    fake, by_a_process, tmp_path, monkeypatch
):
    """TensorFlow's writer reports ENOSPC while writing the third shard."""
    real_writer = tf.io.TFRecordWriter
    opened = []

    class FillsUp(real_writer):
        def __init__(self, path, *args, **kwargs):
            super().__init__(path, *args, **kwargs)
            opened.append(path)

        def write(self, record):
            if len(opened) == 3:
                raise tf.errors.ResourceExhaustedError(
                    None, None, f"{opened[-1]}; {os.strerror(errno.ENOSPC)}"
                )
            super().write(record)

    monkeypatch.setattr(tf.io, "TFRecordWriter", FillsUp)
    with pytest.raises(converter.ConversionError) as raised:
        convert(fake / "raw", tmp_path)
    partial = tmp_path / converter.WORK_DIR / "train-00002-of-00003.partial"
    assert str(raised.value) == (
        f"cannot write {partial}: the disk is full (No space left on device); the shards "
        "already finished are complete, and a rerun keeps them"
    )
    monkeypatch.undo()
    assert len(shard_bytes(tmp_path)) == 2
    summary = convert(fake / "raw", tmp_path)
    assert summary["shards_already_done"] == 2 and summary["shards_written_this_run"] == 3
    assert shard_bytes(tmp_path) == shard_bytes(by_a_process)


# --- The command line --------------------------------------------------------------


def without_tensorflow(name, *flags):
    return [sys.executable, "-c", WITHOUT_TENSORFLOW, name, *map(str, flags)]


CONVERTER_FLAG_ERRORS = {
    "no output_dir": ([], "--output_dir is required (see --help)"),
    "no raw_data_dir": (["--output_dir={out}"], "--raw_data_dir is required (see --help)"),
    "missing raw_data_dir": (
        ["--output_dir={out}", "--raw_data_dir={tmp}/missing"],
        "--raw_data_dir={tmp}/missing does not exist (see --help)",
    ),
    "missing bounding_boxes": (
        ["--output_dir={out}", "--raw_data_dir={raw}", "--bounding_boxes={tmp}/missing"],
        "--bounding_boxes={tmp}/missing does not exist (see --help)",
    ),
    "no train shards": (
        ["--output_dir={out}", "--raw_data_dir={raw}", "--train_shards=0"],
        "--train_shards=0: must be at least 1 (see --help)",
    ),
    "negative validation shards": (
        ["--output_dir={out}", "--raw_data_dir={raw}", "--validation_shards=-1"],
        "--validation_shards=-1: must be at least 1 (see --help)",
    ),
    "unknown split": (
        ["--output_dir={out}", "--raw_data_dir={raw}", "--splits=train,val"],
        "--splits=train,val: must be one or both of train,validation (see --help)",
    ),
    "an argument": (
        ["--output_dir={out}", "--raw_data_dir={raw}", "train"],
        "unexpected arguments: train (see --help)",
    ),
    "output_dir a file": (
        ["--output_dir={raw}/synsets.txt", "--raw_data_dir={raw}"],
        "--output_dir={raw}/synsets.txt is a file, not a directory",
    ),
}


@pytest.mark.parametrize("case", sorted(CONVERTER_FLAG_ERRORS))
def test_converter_flag_errors_are_one_line_before_tensorflow(fake, tmp_path, case):
    flags, message = CONVERTER_FLAG_ERRORS[case]
    names = dict(out=tmp_path / "out", tmp=tmp_path, raw=fake / "raw")
    command = without_tensorflow("tools.imagenet_to_tfrecords", *(f.format(**names) for f in flags))
    code, output = commands.run(command, tmp_path / "log")
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1, output
    assert lines == [f"{ERROR} {message.format(**names)}", f"{TENSORFLOW_IMPORTED} False"]
    assert not (tmp_path / "out").exists()


MAKE_FAKE_FLAG_ERRORS = {
    "no output_dir": ([], "--output_dir is required (see --help)"),
    "no classes": (
        ["--output_dir={out}", "--classes=0"],
        "--classes=0: must be at least 1 (see --help)",
    ),
    "one size": (
        ["--output_dir={out}", "--size=48"],
        "--size=48: must be two positive integers, height,width (see --help)",
    ),
    "words for a size": (
        ["--output_dir={out}", "--size=a,b"],
        "--size=a,b: must be two positive integers, height,width (see --help)",
    ),
    "output_dir a file": (
        ["--output_dir={file}"],
        "--output_dir={file} is a file, not a directory",
    ),
    "output_dir under a file": (
        ["--output_dir={file}/out"],
        "--output_dir={file}/out: {file} is a file, not a directory",
    ),
}


@pytest.mark.parametrize("case", sorted(MAKE_FAKE_FLAG_ERRORS))
def test_make_fake_imagenet_flag_errors_are_one_line(tmp_path, case):
    flags, message = MAKE_FAKE_FLAG_ERRORS[case]
    (tmp_path / "a_file").write_text("")
    names = dict(out=tmp_path / "out", file=tmp_path / "a_file")
    command = without_tensorflow("tools.make_fake_imagenet", *(f.format(**names) for f in flags))
    code, output = commands.run(command, tmp_path / "log")
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1, output
    assert lines[0] == f"make_fake_imagenet: error: {message.format(**names)}"
    assert lines[1:] == [f"{TENSORFLOW_IMPORTED} False"]
    assert not (tmp_path / "out").exists()
