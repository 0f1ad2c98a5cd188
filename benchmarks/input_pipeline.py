r"""Input-pipeline throughput on photo-like JPEGs: images/s per core.

Generates an ImageNet-format data set of JPEGs that decode like photographs
(500x375, smooth shading, shapes with edges, textures and grain: about 110 KB
each at quality 95, like ImageNet's average; noise JPEGs decode differently),
converts it with tools/imagenet_to_tfrecords.py, then measures, in the same
process and in turns:

- decode + resize: decode the whole JPEG and resize it to 224, the floor any
  pipeline pays;
- host-normalised: the training map as it was, the random crop decoded from
  the JPEG, flip, resize, then `(x - mean) / std` in float32 on the host;
- uint8 (the recipe's now): the same crop, flip and resize, shipped as uint8
  with normalisation left to the device, on a private thread pool with slack
  (`batching.tune_for_accelerators`).

    python -m benchmarks.input_pipeline [--images=512] [--rounds=3]
"""

import argparse
import io
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from recipes.imagenet import batching  # noqa: E402
from recipes.imagenet import crops  # noqa: E402
from recipes.imagenet import preprocessing  # noqa: E402
from recipes.imagenet.records import list_files  # noqa: E402
from recipes.imagenet.records import parse  # noqa: E402
from tools import imagenet_to_tfrecords  # noqa: E402

WIDTH, HEIGHT = 500, 375  # a typical ImageNet photo
CLASSES = 8
BATCH = 64
JPEG_QUALITY = 95
GRAIN = 12  # the noise's standard deviation, on [0, 255]


def photo_like(rng):
    """An RGB image with the statistics JPEG cares about in photographs:
    large smooth regions, sharp edges between them, textured surfaces (fine
    stripes, as of fabric or foliage) and grain."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.empty((HEIGHT, WIDTH, 3), np.float32)
    for channel in range(3):  # a shaded background
        a, b, c = rng.uniform(-0.4, 0.4, 2).tolist() + [rng.uniform(60, 200)]
        image[..., channel] = c + a * x + b * y
    for _ in range(rng.integers(8, 16)):  # ellipses and boxes with their own shading
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
        rx, ry = rng.uniform(20, 160), rng.uniform(20, 120)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        if rng.random() < 0.5:
            inside = (abs(x - cx) < rx) & (abs(y - cy) < ry)
        shade = rng.uniform(0, 255, 3) + rng.uniform(-0.3, 0.3) * (x - cx)[..., None]
        if rng.random() < 0.6:  # a texture: stripes 3 to 12 pixels apart
            angle, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
            phase = (np.cos(angle) * x + np.sin(angle) * y) * 2 * np.pi / period
            shade = shade + rng.uniform(10, 40) * np.sin(phase)[..., None]
        image[inside] = shade[inside]
    image += rng.normal(0, GRAIN, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_raw(root, images, rng):
    """`images` photo-like JPEGs as an ImageNet tree; their mean size in KB."""
    sizes = []
    for i in range(images):
        folder = os.path.join(root, "train", f"n{1440764 + i % CLASSES:08d}")
        os.makedirs(folder, exist_ok=True)
        buffer = io.BytesIO()
        photo_like(rng).save(buffer, "JPEG", quality=JPEG_QUALITY)
        sizes.append(len(buffer.getvalue()))
        with open(os.path.join(folder, f"{i}.JPEG"), "wb") as f:
            f.write(buffer.getvalue())
    os.makedirs(os.path.join(root, "validation"), exist_ok=True)
    return np.mean(sizes) / 1000


def records(files, map_fn):
    return (
        tf.data.TFRecordDataset(files)
        .enumerate()
        .map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )


def decode_resize(files):
    """The floor: decode the whole JPEG, resize."""

    def decode(index, serialized):
        image_bytes, label = parse(serialized)
        image = tf.io.decode_jpeg(image_bytes, channels=3)
        return tf.image.resize(image, [crops.IMAGE_SIZE] * 2), label

    return records(files, decode)


def crop(image_bytes, index):
    """The recipe's training crop and flip (model_garden), float32 [0, 255]."""
    chosen = preprocessing.PREPROCESSING["model_garden"]
    seed = tf.stack([tf.constant(0, tf.int64), index])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = crops.decode_and_random_crop(image_bytes, crops.IMAGE_SIZE, crop_seed, chosen)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def host_normalised(files):
    """The training map as it was: crop, flip, resize, then normalise on the host."""
    mean = tf.constant(preprocessing.IMAGENET_MEAN_RGB)
    stddev = tf.constant(preprocessing.IMAGENET_STDDEV_RGB)

    def preprocess(index, serialized):
        image_bytes, label = parse(serialized)
        return tf.cast((crop(image_bytes, index) - mean) / stddev, tf.float32), label

    return records(files, preprocess)


def uint8(files):
    """The recipe's map now: `crops.preprocess`, uint8 out."""

    def preprocess(index, serialized):
        image_bytes, label = parse(serialized)
        seed = tf.stack([tf.constant(0, tf.int64), index])
        return crops.preprocess(image_bytes, True, crops.IMAGE_SIZE, "model_garden", seed), label

    return batching.tune_for_accelerators(records(files, preprocess))


def images_per_second(dataset):
    start, count = time.perf_counter(), 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count()
    pipelines = {
        "decode + resize (floor)": decode_resize,
        "host-normalised float32 (before)": host_normalised,
        "uint8, normalised on the device (now)": uint8,
    }
    with tempfile.TemporaryDirectory() as tmp:
        kilobytes = write_raw(os.path.join(tmp, "raw"), args.images, np.random.default_rng(0))
        out = os.path.join(tmp, "tfrecords")
        imagenet_to_tfrecords.convert(
            os.path.join(tmp, "raw"),
            out,
            train_shards=8,
            validation_shards=1,
            num_workers=1,
            splits=("train",),
        )
        files = list_files(os.path.join(out, "train-*"))
        images_per_second(decode_resize(files))  # warm the page cache and tf.data
        rates = {name: [] for name in pipelines}
        for _ in range(args.rounds):  # in turns, so that drift hits each alike
            for name, pipeline in pipelines.items():
                rates[name].append(images_per_second(pipeline(files)))
    best = {name: max(r) for name, r in rates.items()}
    before = best["host-normalised float32 (before)"]
    print(
        f"{args.images} photo-like JPEGs of {WIDTH}x{HEIGHT} ({kilobytes:.0f} KB on average), "
        f"batch {BATCH}, {cores} cores, best of {args.rounds} rounds"
    )
    print("| pipeline | images/s | images/s per core | vs before |")
    print("|---|---:|---:|---:|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.0f} | {rate / cores:.0f} | {rate / before:.2f} |")


if __name__ == "__main__":
    main()
