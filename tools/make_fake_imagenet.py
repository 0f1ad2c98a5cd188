r"""Makes a small ImageNet-format data set, for tests, smoke runs and benchmarks.

Writes, under --output_dir:

    raw/train/<wnid>/<wnid>_<n>.JPEG
    raw/validation/ILSVRC2012_val_%08d.JPEG
    raw/validation_labels.txt       one wnid per line, sorted-filename order
    raw/synsets.txt                 `wnid name` per line
    archives/ILSVRC2012_img_train.tar   (a tar of per-class tars, as shipped)
    archives/ILSVRC2012_img_val.tar
    archives/ILSVRC2012_devkit_t12.tar.gz  (meta.mat and the validation ground truth)
    kaggle/ILSVRC/Data/CLS-LOC/{train,val}/, kaggle/LOC_val_solution.csv,
    kaggle/LOC_synset_mapping.txt   (the Kaggle archive's layout, extracted)

Images are random textures whose mean colour depends on the class, so a model
can learn them. --bad_files adds, to the first class, the awkward cases real
ImageNet has (a CMYK JPEG, a greyscale JPEG, a PNG named .JPEG) and two that
cannot be decoded (a truncated JPEG, a text file named .JPEG).

    python -m tools.make_fake_imagenet --output_dir=/tmp/fake --classes=10
"""

import io
import os
import sys
import tarfile

import numpy as np
from absl import app
from absl import flags
from PIL import Image

FIRST_WNID = 1440764  # n01440764, ImageNet's first class
TRUNCATE_TO = 0.5  # keep half of a JPEG for the truncated case


def wnid(index):
    return f"n{FIRST_WNID + index:08d}"


def texture(rng, label, classes, size):
    height, width = size
    hue = np.array(
        [
            np.cos(2 * np.pi * label / classes),
            np.sin(2 * np.pi * label / classes),
            np.cos(4 * np.pi * label / classes),
        ]
    )
    colour = 128 + 90 * hue
    noise = rng.normal(scale=40, size=(height, width, 3))
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


def jpeg(array, mode="RGB", fmt="JPEG"):
    out = io.BytesIO()
    image = Image.fromarray(array)
    image.convert(mode).save(out, fmt, quality=90)
    return out.getvalue()


def bad_files(rng, size):
    """{filename suffix: bytes} of the awkward cases; the last two are broken."""
    good = jpeg(texture(rng, 0, 1, size))
    return {
        "cmyk": jpeg(texture(rng, 0, 1, size), mode="CMYK"),
        "grey": jpeg(texture(rng, 0, 1, size), mode="L"),
        "png": jpeg(texture(rng, 0, 1, size), fmt="PNG"),
        "truncated": good[: int(len(good) * TRUNCATE_TO)],
        "not_an_image": b"this is not an image\n",
    }


def make(
    output_dir,
    classes=4,
    train_per_class=6,
    validation_per_class=2,
    size=(48, 64),
    with_bad_files=False,
    seed=0,
):
    """Writes the raw tree and the archives; returns the raw directory."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(output_dir, "raw")
    files = {}  # relative path -> bytes
    for c in range(classes):
        for n in range(train_per_class):
            files[f"train/{wnid(c)}/{wnid(c)}_{n}.JPEG"] = jpeg(texture(rng, c, classes, size))
    if with_bad_files:
        for suffix, data in bad_files(rng, size).items():
            files[f"train/{wnid(0)}/{wnid(0)}_{suffix}.JPEG"] = data
    validation_wnids = []
    labels = rng.permutation(np.repeat(np.arange(classes), validation_per_class))
    for i, c in enumerate(labels, start=1):
        files[f"validation/ILSVRC2012_val_{i:08d}.JPEG"] = jpeg(texture(rng, c, classes, size))
        validation_wnids.append(wnid(c))

    for path, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(raw, path)), exist_ok=True)
        with open(os.path.join(raw, path), "wb") as f:
            f.write(data)
    with open(os.path.join(raw, "validation_labels.txt"), "w") as f:
        f.write("\n".join(validation_wnids) + "\n")
    with open(os.path.join(raw, "synsets.txt"), "w") as f:
        f.writelines(f"{wnid(c)} fake class {c}\n" for c in range(classes))

    archives = os.path.join(output_dir, "archives")
    os.makedirs(archives, exist_ok=True)
    with tarfile.open(os.path.join(archives, "ILSVRC2012_img_train.tar"), "w") as outer:
        for c in range(classes):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for path in sorted(p for p in files if p.startswith(f"train/{wnid(c)}/")):
                    _add(inner, os.path.basename(path), files[path])
            _add(outer, f"{wnid(c)}.tar", inner_bytes.getvalue())
    with tarfile.open(os.path.join(archives, "ILSVRC2012_img_val.tar"), "w") as tar:
        for path in sorted(p for p in files if p.startswith("validation/")):
            _add(tar, os.path.basename(path), files[path])
    _write_devkit(os.path.join(archives, "ILSVRC2012_devkit_t12.tar.gz"), classes, validation_wnids)
    _write_kaggle(os.path.join(output_dir, "kaggle"), files, classes, validation_wnids)
    return raw


def _write_devkit(path, classes, validation_wnids):
    """A devkit as image-net.org ships it: meta.mat numbers the classes by
    ILSVRC2012_ID in an order that is not the wnids' (here: reversed), and
    lists non-leaf synsets too; the ground truth gives an ID per validation
    image in file-number order."""
    from scipy import io as scipy_io

    ids = {wnid(c): classes - c for c in range(classes)}
    fields = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    synsets = np.empty(classes + 1, dtype=fields)
    for c in range(classes):
        synsets[c] = (ids[wnid(c)], wnid(c), f"fake class {c}", "", 0, 0, 0)
    synsets[classes] = (classes + 1, "n00000001", "a parent class", "", classes, 1, 0)
    meta = io.BytesIO()
    scipy_io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{ids[w]}\n" for w in validation_wnids).encode()
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        _add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)


def _write_kaggle(root, files, classes, validation_wnids):
    """The Kaggle "ImageNet Object Localization Challenge" layout, extracted."""
    images = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    for path, data in files.items():
        split, rest = path.split("/", 1)
        target = os.path.join(images, "train" if split == "train" else "val", rest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
    with open(os.path.join(root, "LOC_val_solution.csv"), "w") as f:
        f.write("ImageId,PredictionString\n")
        for i, w in enumerate(validation_wnids, start=1):
            f.write(f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 5 6 20 30\n")
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w") as f:
        f.writelines(f"{wnid(c)} fake class {c}\n" for c in range(classes))


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible archives
    tar.addfile(info, io.BytesIO(data))


FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so modules can share flag names."""
    flags.DEFINE_string("output_dir", None, "Where raw/, archives/ and kaggle/ go.")
    flags.DEFINE_integer("classes", 4, "Number of classes.")
    flags.DEFINE_integer("train_per_class", 6, "Training images per class.")
    flags.DEFINE_integer("validation_per_class", 2, "Validation images per class.")
    flags.DEFINE_list("size", ["48", "64"], "Image height,width.")
    flags.DEFINE_bool(
        "bad_files",
        False,
        "Add CMYK, greyscale, PNG, truncated and non-image files to the first class.",
    )


def main(argv):
    problem = flag_problem(argv[1:])
    if problem:
        return _error(f"{problem} (see --help)")
    problem = output_dir_problem(FLAGS.output_dir)
    if problem:
        return _error(problem)
    try:
        raw = make(
            FLAGS.output_dir,
            FLAGS.classes,
            FLAGS.train_per_class,
            FLAGS.validation_per_class,
            tuple(int(s) for s in FLAGS.size),
            FLAGS.bad_files,
        )
    except OSError as error:
        where = error.filename or FLAGS.output_dir
        return _error(f"cannot write {where}: {error.strerror or error}")
    print(f"wrote {raw}, and the archives/ and kaggle/ layouts beside it")
    return 0


def flag_problem(arguments):
    """What is wrong with the command line, or None."""
    if arguments:
        return f"unexpected arguments: {' '.join(arguments)}"
    if not FLAGS.output_dir:
        return "--output_dir is required"
    for name in ("classes", "train_per_class", "validation_per_class"):
        if FLAGS[name].value < 1:
            return f"--{name}={FLAGS[name].value}: must be at least 1"
    size = FLAGS.size
    if len(size) != 2 or not all(s.isdigit() and int(s) > 0 for s in size):
        return f"--size={','.join(size)}: must be two positive integers, height,width"
    return None


def output_dir_problem(output_dir):
    """Why `output_dir` cannot be a folder (it, or a folder above it, is a
    file), or None."""
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if os.path.isdir(existing):
        return None
    if existing == os.path.abspath(output_dir):
        return f"--output_dir={output_dir} is a file, not a directory"
    return f"--output_dir={output_dir}: {existing} is a file, not a directory"


def _error(message):
    print(f"make_fake_imagenet: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # the console script: recipes/scripts.py
    define_flags()
    app.run(main)
