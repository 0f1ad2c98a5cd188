r"""Evidence that the ImageNet recipe learns: each model family, through the
whole machinery, on real images.

No preset can run to completion without ImageNet and accelerators. This
writes Fashion-MNIST (real photographs of clothes, local files; 10 classes)
as an ImageNet tree of RGB JPEGs, converts it with
tools/imagenet_to_tfrecords.py, and trains ResNet-50 and AlexNet-BN with
`recipes.imagenet` from a preset of the paper, its schedule scaled down to a
few epochs (warm-up, poly(2) decay, rate, batch, weight decay, batch-norm
span and preprocessing as the preset has them), evaluating every epoch. It
writes the curves as a PNG and prints a table: the evidence in the README.

    python -m benchmarks.learning_curves [--out_dir=runs/learning_curves]

The recipe is not tuned to this data set: only the epochs are the run's own.
"""

import argparse
import glob
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from recipes.imagenet import config as config_lib  # noqa: E402
from recipes.imagenet import job  # noqa: E402
from recipes.study import fashion_mnist  # noqa: E402
from tools import imagenet_to_tfrecords  # noqa: E402

SIDE = 80  # the JPEGs' size: room for AlexNet's 67-pixel crops
FIRST_WNID = 1440764
# (family, preset, its settings at this scale): every other setting is the preset's.
RUNS = (
    ("ResNet-50", "paper_resnet_256", dict(image_size=32)),
    ("AlexNet-BN", "paper_alexnet_bn_512", dict(image_size=67)),
)


def write_tree(root, train_per_class, validation_per_class):
    """Fashion-MNIST as train/<wnid>/*.JPEG and validation/*.JPEG with a
    labels file, each image upscaled to SIDE² RGB."""
    data = fashion_mnist.load()
    wnids = [f"n{FIRST_WNID + k:08d}" for k in range(fashion_mnist.NUM_CLASSES)]

    def save(array, path):
        grey = Image.fromarray((array[..., 0] * 255).astype(np.uint8))
        grey.resize((SIDE, SIDE), Image.BICUBIC).convert("RGB").save(path, quality=95)

    for label, wnid in enumerate(wnids):
        os.makedirs(os.path.join(root, "train", wnid), exist_ok=True)
        images = data.x_train[data.y_train == label][:train_per_class]
        for i, image in enumerate(images):
            save(image, os.path.join(root, "train", wnid, f"{wnid}_{i}.JPEG"))
    os.makedirs(os.path.join(root, "validation"), exist_ok=True)
    picked = np.concatenate(
        [np.flatnonzero(data.y_test == k)[:validation_per_class] for k in range(len(wnids))]
    )
    labels = []
    for i, index in enumerate(sorted(picked)):
        save(data.x_test[index], os.path.join(root, "validation", f"val_{i:05d}.JPEG"))
        labels.append(wnids[data.y_test[index]])
    with open(os.path.join(root, "validation_labels.txt"), "w") as f:
        f.write("\n".join(labels) + "\n")


def curves(model_dir):
    """{split: {tag: [(step, value)]}} from a run's TensorBoard files."""
    values = {}
    for split in ("train", "eval"):
        for path in sorted(glob.glob(os.path.join(model_dir, split, "events.*"))):
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    number = float(tf.make_ndarray(value.tensor))
                    values.setdefault(split, {}).setdefault(value.tag, []).append(
                        (event.step, number)
                    )
    return values


def plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, top1_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for family, result in results.items():
        steps_per_epoch = result["steps_per_epoch"]
        loss = result["curves"]["train"]["loss"]
        top1 = result["curves"]["eval"]["top1"]
        loss_axes.plot([s / steps_per_epoch for s, _ in loss], [v for _, v in loss], label=family)
        top1_axes.plot(
            [s / steps_per_epoch for s, _ in top1], [100 * v for _, v in top1], "o-", label=family
        )
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    top1_axes.set(xlabel="epoch", ylabel="top-1 (%)", title="Validation top-1")
    for axes in (loss_axes, top1_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("Fashion-MNIST as an ImageNet tree, the paper's presets scaled down")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="runs/learning_curves")
    parser.add_argument("--train_per_class", type=int, default=500)
    parser.add_argument("--validation_per_class", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--plot", default="docs/learning_curves.png")
    args = parser.parse_args()
    raw = os.path.join(args.out_dir, "raw")
    records = os.path.join(args.out_dir, "tfrecords")
    if not os.path.isdir(records):
        write_tree(raw, args.train_per_class, args.validation_per_class)
        imagenet_to_tfrecords.convert(
            raw,
            records,
            os.path.join(raw, "validation_labels.txt"),
            train_shards=8,
            validation_shards=2,
        )
    results = {}
    for family, preset, settings in RUNS:
        defaults = config_lib.resolve(preset, model_dir="/unused", synthetic=True)
        scale = args.epochs / defaults.train_epochs  # the preset's schedule, shortened
        config = config_lib.resolve(
            preset,
            data_dir=records,
            model_dir=os.path.join(args.out_dir, preset),
            train_epochs=args.epochs,
            warmup_epochs=defaults.warmup_epochs * scale,
            eval_every_epochs=1,
            checkpoint_every_minutes=0,
            **settings,
        )
        started = time.time()
        summary = job.run(config)
        with open(os.path.join(config.model_dir, "config.json")) as f:
            plan = json.load(f)["plan"]
        results[family] = dict(
            preset=preset,
            summary=summary,
            seconds=time.time() - started,
            steps_per_epoch=plan["steps_per_epoch"],
            curves=curves(config.model_dir),
        )
    plot(args.plot, results)
    print(f"\nCurves: {args.plot}")
    print("| model | preset, scaled down | batch | epochs (warm-up) | top-1 | top-5 | wall time |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for family, result in results.items():
        summary, config = (
            result["summary"],
            config_lib.resolve(result["preset"], synthetic=True, model_dir="/x"),
        )
        warmup = config.warmup_epochs * args.epochs / config.train_epochs
        print(
            f"| {family} | `{result['preset']}` | {config.global_batch_size} | "
            f"{args.epochs:g} ({warmup:.2g}) | {100 * summary['top1']:.1f}% | "
            f"{100 * summary['top5']:.1f}% | {result['seconds'] / 60:.1f} min |"
        )


if __name__ == "__main__":
    main()
