r"""Trains ResNet-50 or AlexNet on ImageNet with LARS: the command line.

    python -m recipes.imagenet_train --model=resnet50 --preset=mlperf_8k \
        --data_dir=/data/imagenet-tfrecords --model_dir=/runs/r50-8k --strategy=mirrored
    python -m recipes.imagenet_train --model=resnet50 --preset=mlperf_32k \
        --strategy=tpu --tpu=my-tpu --data_dir=gs://... --model_dir=gs://...
    python -m recipes.imagenet_train --model=alexnet_bn --preset=paper_alexnet_bn_8k ...
    python -m recipes.imagenet_train --model=resnet50 --synthetic \
        --global_batch_size=256 --train_steps=50 --model_dir=/tmp/r50-synthetic

Every preset field (batch, rate, warm-up, epochs, decay, momentum, ...) can be
overridden by its flag; without --preset a model starts from the paper's
smallest-batch preset. The resolved settings are printed and written to
model_dir/config.json; rerunning with the same --model_dir resumes. See
recipes/presets.py for the presets and their sources, recipes/imagenet_job.py
for what a run does.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from recipes import console_script
from recipes import presets

FLAGS = flags.FLAGS
MODELS = ("resnet50", "alexnet", "alexnet_bn")


def define_flags():
    """Defined only when run as a script, so modules can share flag names."""
    flags.DEFINE_enum("model", None, MODELS, "The model (default: the preset's).")
    flags.DEFINE_enum(
        "preset",
        None,
        list(presets.PRESETS),
        "Large-batch settings (default: the model's paper preset at its smallest batch):\n"
        + presets.describe(),
    )
    flags.DEFINE_string("data_dir", None, "TFRecords from tools/imagenet_to_tfrecords.py.")
    flags.DEFINE_string("tfds_data_dir", None, "A TFDS data_dir holding imagenet2012.")
    flags.DEFINE_bool("synthetic", False, "Random images made on the device: throughput only.")
    flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs, config and summary.")
    flags.DEFINE_enum(
        "strategy",
        "default",
        ["default", "one_device", "mirrored", "multi_worker", "tpu", "data_parallel"],
        "TensorFlow: a tf.distribute strategy (multi_worker reads the cluster from "
        "TF_CONFIG). JAX (KERAS_BACKEND=jax): data_parallel, keras.distribution over "
        "every local device. default: one device.",
    )
    flags.DEFINE_string("tpu", None, "TPU name or grpc:// address; 'local' on a TPU VM.")
    flags.DEFINE_integer(
        "logical_cpus", 0, "Split the CPU into N devices (to try strategies without GPUs)."
    )
    flags.DEFINE_bool(
        "multi_process",
        False,
        "JAX: several hosts (a TPU pod slice); calls keras.distribution.initialize().",
    )
    flags.DEFINE_bool("jit_compile", False, "Compile the step with XLA (one replica only).")
    flags.DEFINE_integer("global_batch_size", None, "Images per update, over all replicas.")
    flags.DEFINE_float("learning_rate", None, "Peak global rate γ of LARS.")
    flags.DEFINE_float("warmup_epochs", None, "Linear warm-up from 0, in epochs.")
    flags.DEFINE_float("train_epochs", None, "Epochs to train.")
    flags.DEFINE_integer("train_steps", None, "Updates to train; overrides --train_epochs.")
    flags.DEFINE_integer(
        "train_images",
        None,
        "Training images per epoch (default: counted; the converter's shards record "
        "their counts, other TFRecords are read once to count them).",
    )
    flags.DEFINE_float("weight_decay", None, "LARS's coupled weight decay β.")
    flags.DEFINE_float("momentum", None, "LARS momentum.")
    flags.DEFINE_float("label_smoothing", None, "Label smoothing of the cross-entropy.")
    flags.DEFINE_float("end_learning_rate", None, "The rate at the end of the decay.")
    flags.DEFINE_float("trust_coefficient", None, "LARS's η.")
    flags.DEFINE_bool(
        "adapt_biases", None, "Adapt biases and BN variables too (they are never decayed)."
    )
    flags.DEFINE_float("dropout", None, "Dropout of AlexNet's fc6 and fc7.")
    flags.DEFINE_float("eval_every_epochs", None, "Evaluate this often (0: only at the end).")
    flags.DEFINE_integer("steps_per_loop", None, "Steps per host call and checkpoint.")
    flags.DEFINE_integer("accumulation_steps", 1, "Micro-batches per update.")
    flags.DEFINE_integer("image_size", None, "Input size (default 224 ResNet, 227 AlexNet).")
    flags.DEFINE_enum(
        "dtype",
        None,
        ["float32", "bfloat16", "float16"],
        "Compute precision (default bfloat16 with --strategy=tpu, else float32; pass "
        "bfloat16 for TPUs on JAX too); float16 scales the loss.",
    )
    flags.DEFINE_bool("zero_init_residual", True, "ResNet: zero the last BN γ of each branch.")
    flags.DEFINE_enum(
        "alexnet_groups", "split", ["split", "native", "none"], "AlexNet's grouped convolutions."
    )
    flags.DEFINE_enum(
        "alexnet_bn_variant", "authors", ["authors", "conv_bn_relu"], "Where AlexNet-BN's BN sits."
    )
    flags.DEFINE_integer("seed", 0, "Seed of initialisation and input order.")
    flags.DEFINE_bool(
        "deterministic", False, "Repeatable input order and augmentation (slower input)."
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the progress bar
        logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    from recipes import imagenet_input
    from recipes import imagenet_job
    from recipes import strategies
    from recipes import train_config

    settings = {
        name: FLAGS[name].value
        for name in train_config.TrainConfig.__dataclass_fields__
        if name not in ("model", "preset")
    }
    try:
        config = train_config.resolve(FLAGS.preset, FLAGS.model, **settings)
        train_config.check_backend(config)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    try:
        imagenet_job.run(config)
    except (
        ValueError,
        FileNotFoundError,
        strategies.StrategyError,
        imagenet_input.BadDataError,
        imagenet_job.TrainingDiverged,
    ) as error:
        print(f"imagenet_train: error: {error}", file=sys.stderr)
        return 1
    except tf.errors.OpError as error:  # a bad label, an unreadable gs:// path, ...
        print(f"imagenet_train: error: {error.message.strip()}", file=sys.stderr)
        return 1
    return 0


def run():
    """The `keras-lars-train` console script."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    console_script.run(__name__, main)


if __name__ == "__main__":
    run()
