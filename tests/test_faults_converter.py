"""The converter under faults: every run reproducible across processes, and
every bad input, flag or output directory answered in one line that names it,
with nothing lost."""

import os

import keras
import pytest

import commands

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TFRecords are TensorFlow's"
)
tf = pytest.importorskip("tensorflow")

from tools import imagenet_to_tfrecords as converter  # noqa: E402
from tools import make_fake_imagenet  # noqa: E402

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 6, 2
SHARDS = dict(train_shards=3, validation_shards=2)
ERROR = "imagenet_to_tfrecords: error:"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """A fake set with the awkward files (two of them undecodable)."""
    root = tmp_path_factory.mktemp("fake")
    make_fake_imagenet.make(str(root), CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, with_bad_files=True)
    return root


def shard_bytes(directory):
    return {
        name: (directory / name).read_bytes()
        for name in sorted(os.listdir(directory))
        if converter.SHARD_NAME.match(name)
    }


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
        "--allow_skips",
        *flags,
    )


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith(ERROR)]


@pytest.fixture(scope="module")
def by_a_process(fake, tmp_path_factory):
    """The fake set converted by a converter process: its output directory."""
    root = tmp_path_factory.mktemp("by_a_process")
    code, output = commands.run(converter_command(fake / "raw", root / "out"), root / "convert.log")
    assert code == 0, output[-3000:]
    return root / "out"


# --- Reproducible shards -----------------------------------------------------


def convert(raw, output, **kwargs):
    """Converts in this process, as the command line does."""
    return converter.convert(
        str(raw),
        str(output),
        validation_labels=str(raw / "validation_labels.txt"),
        synset_names=str(raw / "synsets.txt"),
        **{**SHARDS, **kwargs},
    )


def test_two_processes_write_byte_identical_shards(fake, by_a_process, tmp_path):
    code, output = commands.run(
        converter_command(fake / "raw", tmp_path / "out"), tmp_path / "convert.log"
    )
    assert code == 0, output[-3000:]
    first, second = shard_bytes(by_a_process), shard_bytes(tmp_path / "out")
    assert len(first) == SHARDS["train_shards"] + SHARDS["validation_shards"]
    assert list(second) == list(first)
    for name in first:
        assert second[name] == first[name], f"{name} differs between two processes"
    convert(fake / "raw", tmp_path / "here")
    assert shard_bytes(tmp_path / "here") == first
