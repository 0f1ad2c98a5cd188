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
recipes/imagenet/presets.py for the presets and their sources,
recipes/imagenet/job.py for what a run does.
"""

import re
import sys

from absl import flags
from absl import logging

from ..backend import keras_backend
from . import config as config_lib
from . import presets
from .preprocessing import PREPROCESSING

FLAGS = flags.FLAGS
PROGRAM = "imagenet_train"
# The settings no preset fixes default to theirs (config.DEFAULTS); a preset's
# fields to None, "not given", so that the preset's value stands.
DEFAULTS = config_lib.DEFAULTS


def define_flags():
    """Defined only when run as a script, so modules can share flag names."""
    flags.DEFINE_enum("model", None, config_lib.MODELS, "The model (default: the preset's).")
    flags.DEFINE_enum(
        "preset",
        None,
        list(presets.PRESETS),
        "Large-batch settings (default: the model's paper preset at its smallest batch):\n"
        + presets.describe(),
    )
    flags.DEFINE_string(
        "data_dir", DEFAULTS["data_dir"], "TFRecords from tools/imagenet_to_tfrecords.py."
    )
    flags.DEFINE_string(
        "tfds_data_dir", DEFAULTS["tfds_data_dir"], "A TFDS data_dir holding imagenet2012."
    )
    flags.DEFINE_bool(
        "synthetic", DEFAULTS["synthetic"], "Random images made on the device: throughput only."
    )
    flags.DEFINE_string(
        "data_service",
        DEFAULTS["data_service"],
        "grpc://HOST:PORT: the training input is made by the workers of this tf.data "
        "service dispatcher (keras-lars-data-service); evaluation stays on this host.",
    )
    flags.DEFINE_string(
        "model_dir", DEFAULTS["model_dir"], "Checkpoints, TensorBoard logs, config and summary."
    )
    flags.DEFINE_enum(
        "strategy",
        DEFAULTS["strategy"],
        config_lib.STRATEGIES,
        "TensorFlow: a tf.distribute strategy (multi_worker reads the cluster from "
        "TF_CONFIG). JAX (KERAS_BACKEND=jax): data_parallel, keras.distribution over "
        "every local device. default: one device.",
    )
    flags.DEFINE_string("tpu", DEFAULTS["tpu"], "TPU name or grpc:// address; 'local' on a TPU VM.")
    flags.DEFINE_integer(
        "logical_cpus",
        DEFAULTS["logical_cpus"],
        "Split the CPU into N devices (to try strategies without GPUs).",
    )
    flags.DEFINE_bool(
        "multi_process",
        DEFAULTS["multi_process"],
        "JAX: several hosts (a TPU pod slice); calls keras.distribution.initialize().",
    )
    flags.DEFINE_bool(
        "jit_compile",
        DEFAULTS["jit_compile"],
        "Compile each replica's forward and backward pass with XLA (default: with GPUs "
        "or TPUs; JAX compiles its whole step anyway).",
    )
    flags.DEFINE_bool(
        "compile_optimizer",
        DEFAULTS["compile_optimizer"],
        "TensorFlow: compile each replica's optimizer update after the all-reduce (LARS's "
        "norms, rates and momentum step for every variable, loss scaling included) into one "
        "XLA computation. Default: on with GPUs; off on CPUs (no reliable gain measured there, "
        "benchmarks/RESULTS.md) and on TPUs (which compile the whole step anyway). JAX "
        "compiles its whole step anyway.",
    )
    flags.DEFINE_enum(
        "allreduce_dtype",
        DEFAULTS["allreduce_dtype"],
        config_lib.ALLREDUCE_DTYPES,
        "TensorFlow: the dtype gradients are all-reduced in across replicas; bfloat16 "
        "halves the bytes (Google's MLPerf TPU code's use_bf16_allreduce) at bfloat16's "
        "precision (8 bits of mantissa) in the summed gradient. Not on JAX.",
    )
    flags.DEFINE_integer("global_batch_size", None, "Images per update, over all replicas.")
    flags.DEFINE_float("learning_rate", None, "Peak global rate γ of LARS.")
    flags.DEFINE_float("warmup_epochs", None, "Linear warm-up from 0, in epochs.")
    flags.DEFINE_float("train_epochs", None, "Epochs to train.")
    flags.DEFINE_integer("train_steps", None, "Updates to train; overrides --train_epochs.")
    flags.DEFINE_integer("warmup_steps", None, "Warm-up in updates; overrides --warmup_epochs.")
    flags.DEFINE_integer(
        "eval_every_steps", None, "Evaluate every this many updates; overrides --eval_every_epochs."
    )
    flags.DEFINE_integer(
        "train_images",
        DEFAULTS["train_images"],
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
    flags.DEFINE_float(
        "eval_offset_epochs", None, "The first evaluation (then every --eval_every_epochs)."
    )
    flags.DEFINE_float(
        "target_accuracy",
        None,
        "Stop at the first evaluation whose top-1 reaches this fraction (MLPerf: 0.759).",
    )
    flags.DEFINE_integer(
        "bn_span",
        None,
        "Images each batch-norm statistic covers (ghost batch norm; 0: each replica's "
        "whole micro-batch). Larger than a replica's micro-batch needs JAX.",
    )
    flags.DEFINE_enum(
        "preprocessing",
        None,
        list(PREPROCESSING),
        "Crop, resize and normalisation of a source:\n"
        + "\n".join(f"  {name}: {p.describe()}" for name, p in PREPROCESSING.items()),
    )
    flags.DEFINE_integer(
        "eval_batch_size",
        DEFAULTS["eval_batch_size"],
        "Evaluation batch (default: the training one).",
    )
    flags.DEFINE_float(
        "checkpoint_every_minutes",
        DEFAULTS["checkpoint_every_minutes"],
        "Checkpoint after the first loop that ends this long after the last checkpoint "
        "(0: after every loop); always at the end.",
    )
    flags.DEFINE_integer(
        "steps_per_loop", DEFAULTS["steps_per_loop"], "Steps per host call and checkpoint."
    )
    flags.DEFINE_integer(
        "accumulation_steps", DEFAULTS["accumulation_steps"], "Micro-batches per update."
    )
    flags.DEFINE_integer(
        "image_size", DEFAULTS["image_size"], "Input size (default 224 ResNet, 227 AlexNet)."
    )
    flags.DEFINE_enum(
        "dtype",
        DEFAULTS["dtype"],
        config_lib.DTYPES,
        "Compute precision (default: bfloat16 on TPUs, --strategy=tpu or JAX on a TPU, "
        "else float32); float16 scales the loss.",
    )
    flags.DEFINE_enum(
        "conv_initializer",
        None,
        config_lib.CONV_INITIALIZERS,
        "ResNet-50's convolution kernels: he_normal (variance 2/fan-in) or variance_scaling "
        "(1/fan-in, tensorflow/tpu's); default: the preset's.",
    )
    flags.DEFINE_bool(
        "zero_init_residual",
        DEFAULTS["zero_init_residual"],
        "ResNet: zero the last BN γ of each branch.",
    )
    flags.DEFINE_enum(
        "alexnet_groups",
        DEFAULTS["alexnet_groups"],
        config_lib.ALEXNET_GROUPS,
        "AlexNet's grouped convolutions.",
    )
    flags.DEFINE_enum(
        "alexnet_bn_variant",
        DEFAULTS["alexnet_bn_variant"],
        config_lib.ALEXNET_BN_VARIANTS,
        "Where AlexNet-BN's BN sits.",
    )
    flags.DEFINE_integer(
        "alexnet_fc_units",
        DEFAULTS["alexnet_fc_units"],
        "Width of AlexNet's fc6 and fc7 (4096 in every source; narrower for small inputs).",
    )
    flags.DEFINE_integer("seed", DEFAULTS["seed"], "Seed of initialisation and input order.")
    flags.DEFINE_string(
        "profile_steps",
        DEFAULTS["profile_steps"],
        "A,B: trace the steps after step A up to step B (tf.profiler or jax.profiler) "
        "into model_dir/profile, for TensorBoard's profile tab.",
    )
    flags.DEFINE_string(
        "mlperf_submission_org",
        DEFAULTS["mlperf_submission_org"],
        "ResNet-50: submission_org in model_dir/mlperf.log.",
    )
    flags.DEFINE_string(
        "mlperf_submission_platform",
        DEFAULTS["mlperf_submission_platform"],
        "ResNet-50: submission_platform in mlperf.log (default: the devices found).",
    )
    flags.DEFINE_enum(
        "mlperf_submission_division",
        DEFAULTS["mlperf_submission_division"],
        config_lib.MLPERF_DIVISIONS,
        "ResNet-50: submission_division in mlperf.log.",
    )
    flags.DEFINE_enum(
        "mlperf_submission_status",
        DEFAULTS["mlperf_submission_status"],
        config_lib.MLPERF_STATUSES,
        "ResNet-50: submission_status in mlperf.log.",
    )
    flags.DEFINE_bool(
        "deterministic",
        DEFAULTS["deterministic"],
        "Repeatable input order and augmentation (slower input).",
    )


def main(argv):
    """Checks the flags (a mistake is one line and exit status 1, before
    TensorFlow loads), then runs the job."""
    if len(argv) > 1:
        return _error(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the progress bar
        logging.set_verbosity(logging.WARNING)
    settings = {
        name: FLAGS[name].value
        for name in config_lib.TrainConfig.__dataclass_fields__
        if name not in ("model", "preset")
    }
    try:
        config = config_lib.resolve(FLAGS.preset, FLAGS.model, **settings)
        config_lib.check_backend(config, keras_backend())
    except ValueError as error:
        return _error(f"{error} (see --help)")

    import tensorflow as tf

    from . import bad_data
    from . import checkpoints
    from . import controller
    from . import job
    from . import preemption
    from . import run_lock
    from . import runner
    from . import strategies

    try:
        job.run(config)
    except preemption.Preempted as stopped:
        print(f"{PROGRAM}: {stopped}", file=sys.stderr)
        return preemption.PREEMPTED_STATUS
    except KeyboardInterrupt:  # Ctrl-C outside the loops (inside, it stops them cleanly)
        return _error("interrupted; the checkpoints written so far are kept")
    except tf.errors.OpError as error:  # an unreadable gs:// path, ...
        return _error(_explanation(error.message))
    except (
        ValueError,
        OSError,
        strategies.StrategyError,
        bad_data.BadDataError,
        controller.TrainingDiverged,
        controller.LoopMiscounted,
        runner.ProcessesDisagree,
        run_lock.RunLocked,
        checkpoints.CheckpointNotSaved,
        checkpoints.NoIntactCheckpoint,
    ) as error:
        return _error(str(error))
    return 0


def _explanation(message):
    """The line of a TensorFlow error that says what is wrong: the first that
    is not TensorFlow's framing ("Graph execution error:", "{{function_node
    ...}}", tf.data's "Error in user-defined function ... with iterator:
    ...:"). The input pipeline's own errors come as `bad_data`'s types."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in lines:
        line = re.sub(r"^(\{\{function_node [^}]*\}\}\s*)+", "", line)
        line = re.sub(r"^Error in user-defined function .*? with iterator: \S+: ", "", line)
        if line and line != "Graph execution error:" and not line.startswith("[["):
            return line
    return "unknown TensorFlow error"


def _error(message):
    print(f"{PROGRAM}: error: {message}", file=sys.stderr)
    return 1
