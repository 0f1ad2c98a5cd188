r"""Input-pipeline throughput: the training pipeline against decode-and-resize.

Generates an ImageNet-format data set (ImageNet-sized JPEGs, 375x500), converts
it with tools/imagenet_to_tfrecords.py, then measures images per second per
core for (a) a baseline that only decodes and resizes to 224, and (b)
`recipes.input_pipeline.build_dataset(training=True)` (random crop decoded from
the JPEG, flip, resize, normalise, batch). Both run in the same process, one
after the other, several rounds each; the ratio is what to compare across
machines.

    python -m benchmarks.input_pipeline [--images=1024] [--rounds=3]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from recipes.imagenet import input_pipeline  # noqa: E402
from tools import imagenet_to_tfrecords  # noqa: E402
from tools import make_fake_imagenet  # noqa: E402

IMAGE_SHAPE = (375, 500)  # a typical ImageNet photo
CLASSES = 8
BATCH = 64


def baseline(files):
    """Decode and resize only: the floor any ImageNet pipeline pays."""

    def decode(serialized):
        image_bytes, label = input_pipeline.parse(serialized)
        image = tf.image.resize(
            tf.io.decode_jpeg(image_bytes, channels=3), [input_pipeline.IMAGE_SIZE] * 2
        )
        return image, label

    return (
        tf.data.TFRecordDataset(files)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )


def training(files_pattern):
    return input_pipeline.build_dataset(
        files_pattern, training=True, global_batch_size=BATCH, repeat=False, drop_remainder=False
    )


def images_per_second(dataset):
    start, count = time.perf_counter(), 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        make_fake_imagenet.make(tmp, CLASSES, args.images // CLASSES, 1, size=IMAGE_SHAPE)
        out = os.path.join(tmp, "tfrecords")
        imagenet_to_tfrecords.convert(
            os.path.join(tmp, "raw"),
            out,
            os.path.join(tmp, "raw", "validation_labels.txt"),
            train_shards=8,
            validation_shards=1,
            num_workers=1,
            splits=("train",),
        )
        pattern = os.path.join(out, "train-*")
        files = input_pipeline.list_files(pattern)
        images_per_second(baseline(files))  # warm the page cache and tf.data
        base, train = [], []
        for _ in range(args.rounds):
            base.append(images_per_second(baseline(files)))
            train.append(images_per_second(training(pattern)))
    best_base, best_train = max(base), max(train)
    print(
        f"{args.images} images of {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}, batch {BATCH}, "
        f"{cores} cores, best of {args.rounds} rounds"
    )
    print("| pipeline | images/s | images/s per core |")
    print("|---|---:|---:|")
    print(f"| decode + resize (baseline) | {best_base:.0f} | {best_base / cores:.0f} |")
    print(f"| training pipeline | {best_train:.0f} | {best_train / cores:.0f} |")
    print(f"ratio training / baseline: {best_train / best_base:.2f}")


if __name__ == "__main__":
    main()
