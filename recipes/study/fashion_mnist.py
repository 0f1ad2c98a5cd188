"""Fashion-MNIST from local files: no download at run time.

Looked for, in order: a directory given by the caller, the Debian package
`dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`), and the Keras
cache (`~/.keras/datasets/fashion-mnist`). Nothing else stands in for it: a
study on other data would not be this study.
"""

import dataclasses
import gzip
import os

import numpy as np

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
KERAS_CACHE_DIR = os.path.expanduser("~/.keras/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
IMAGE_SIDE = 28
NUM_CLASSES = 10
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049
INSTALL_HINT = (
    "Install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (as "
    "root), or pass --data_dir with the four idx .gz files."
)


@dataclasses.dataclass
class Dataset:
    """Images as float32 in [0, 1], shape (n, 28, 28, 1); labels int32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def load(data_dir=None):
    """Returns a `Dataset`; raises FileNotFoundError naming what to install."""
    candidates = [data_dir] if data_dir else [DEBIAN_DIR, KERAS_CACHE_DIR]
    for directory in candidates:
        if all(os.path.exists(os.path.join(directory, f)) for f in FILES.values()):
            arrays = {k: _read_idx(os.path.join(directory, f)) for k, f in FILES.items()}
            _check(arrays, directory)
            return Dataset(
                **{k: _prepare(k, v) for k, v in arrays.items()},
                source=f"Fashion-MNIST ({directory})",
            )
    if data_dir:
        missing = [f for f in FILES.values() if not os.path.exists(os.path.join(data_dir, f))]
        raise FileNotFoundError(f"{data_dir} lacks {', '.join(missing)}. {INSTALL_HINT}")
    raise FileNotFoundError(
        f"No Fashion-MNIST in {DEBIAN_DIR} or {KERAS_CACHE_DIR}. {INSTALL_HINT}"
    )


def _check(arrays, directory):
    """ValueError naming the file, before anything trains, unless the images
    are 28x28, each has one label and every label is a class."""
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        images_file = os.path.join(directory, FILES[f"x_{split}"])
        labels_file = os.path.join(directory, FILES[f"y_{split}"])
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(
                f"{images_file}: images of shape {images.shape[1:]}, not Fashion-MNIST's "
                f"{IMAGE_SIDE}x{IMAGE_SIDE}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{labels_file}: {labels.size} labels for the {len(images)} images of "
                f"{images_file}: each image needs one"
            )
        if labels.size and labels.max() >= NUM_CLASSES:
            raise ValueError(
                f"{labels_file}: label {labels.max()} outside Fashion-MNIST's classes "
                f"0..{NUM_CLASSES - 1}"
            )


def _read_idx(path):
    """Parses an idx file (big-endian header: magic, dims, then uint8 data)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:  # not gzip, truncated, unreadable
        raise ValueError(f"{path}: cannot read it as a gzipped idx file ({error})") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise ValueError(f"{path}: not an idx image or label file (magic {magic})")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def _prepare(key, array):
    if key.startswith("x"):
        return (array.astype("float32") / 255.0)[..., None]
    return array.astype("int32")
