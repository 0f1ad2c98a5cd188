"""Faults the large-batch study meets: data that is not Fashion-MNIST's shape
(labels outside the classes, images of another size, counts that differ) is
named by the loader, which the command runs before anything trains. (How the
command prints a loader's error, in one line: tests/test_study.py's
`test_data_that_is_not_gzip_stops_before_training`; a killed study resuming:
test_study.py too.)"""

import gzip
import re

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the study runs on TensorFlow (make study)"
)

from recipes.study import fashion_mnist  # noqa: E402


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion(directory, train=600, train_labels=None, side=28, top_label=9):
    """A tiny Fashion-MNIST in idx files, perhaps of the wrong shape."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("t10k", 200)):
        labels = rng.integers(0, 10, size=n)
        labels[0] = top_label if split == "train" else 9
        if split == "train" and train_labels is not None:
            labels = labels[:train_labels]
        images = rng.integers(0, 255, size=(n, side, side))
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images, 2051)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    return directory


@pytest.mark.parametrize(
    "shape,file,message",
    [
        (dict(top_label=10), "train-labels", "label 10 outside Fashion-MNIST's classes 0..9"),
        (dict(side=32), "train-images", "images of shape (32, 32), not Fashion-MNIST's 28x28"),
        (dict(train_labels=500), "train-labels", "500 labels for the 600 images of"),
    ],
    ids=["label out of range", "32x32 images", "500 labels for 600 images"],
)
def test_data_of_the_wrong_shape_is_named_with_its_file(tmp_path, shape, file, message):
    data = tmp_path / "data"
    data.mkdir()
    fashion(data, **shape)
    with pytest.raises(ValueError, match=rf"{file}-idx[13]-ubyte.gz: .*{re.escape(message)}"):
        fashion_mnist.load(str(data))
