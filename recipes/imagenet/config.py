"""The ImageNet recipe's settings: a preset, the flags over it, and the plan
derived from them and the data.

`resolve(preset=..., model=..., **overrides)` returns a `TrainConfig` with
every field set, or raises `ValueError` naming the flag that is wrong. The
field names are the flag names of `recipes/imagenet/cli.py`. Each choice list
(models, strategies, dtypes, ...) is defined here once.

Importing this module loads neither Keras nor TensorFlow, so that --help is
instant. The checks use the package's one argument checker
(`keras_lars._validation`), which loads Keras with the optimizer: they import
it when they run.
"""

import dataclasses
import os

from . import presets
from .preprocessing import PREPROCESSING

MODELS = ("resnet50", "alexnet", "alexnet_bn")
IMAGE_SIZE = {"resnet50": 224, "alexnet": 227, "alexnet_bn": 227}
# Below these, a model's last pooling has nothing left to pool (AlexNet: 67 is
# the smallest input whose pool5 keeps one pixel).
MIN_IMAGE_SIZE = {"resnet50": 32, "alexnet": 67, "alexnet_bn": 67}
ALEXNET_GROUPS = ("split", "native", "none")
CONV_INITIALIZERS = ("he_normal", "variance_scaling")  # models/resnet.py
ALEXNET_BN_VARIANTS = ("authors", "conv_bn_relu")
DTYPES = ("float32", "bfloat16", "float16")
# tf.distribute strategies (recipes/imagenet/strategies.py) and
# keras.distribution's data parallelism (recipes/imagenet/jax_runner.py);
# "default" is one device on both.
TF_STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
JAX_STRATEGIES = ("default", "data_parallel")
STRATEGIES = TF_STRATEGIES + ("data_parallel",)
BACKENDS = ("tensorflow", "jax")
ALLREDUCE_DTYPES = ("float32", "bfloat16")  # TensorFlow's gradient all-reduce
# Settings that may change when a run is resumed: where and how it runs, or
# when it stops, not what it computes. (The backend may not: its checkpoints
# are its own. The data may move, but not change: the plan says.)
# Each step count and the epoch setting it overrides.
STEPS_OVERRIDING_EPOCHS = {
    "train_steps": "train_epochs",
    "warmup_steps": "warmup_epochs",
    "eval_every_steps": "eval_every_epochs",
}

MAY_CHANGE_ON_RESUME = frozenset(
    {
        "strategy",
        "tpu",
        "logical_cpus",
        "multi_process",
        "jit_compile",
        "compile_optimizer",
        "allreduce_dtype",
        "steps_per_loop",
        "checkpoint_every_minutes",
        "eval_batch_size",
        "target_accuracy",
        "data_dir",
        "tfds_data_dir",
        "model_dir",
        "profile_steps",
        "mlperf_submission_org",
        "mlperf_submission_platform",
        "mlperf_submission_division",
        "mlperf_submission_status",
    }
)
# MLPerf's closed_common rules: the divisions and a submission's status.
MLPERF_DIVISIONS = ("closed", "open")
MLPERF_STATUSES = ("cloud", "onprem", "preview", "research")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str
    preset: str
    model_dir: str | None = None  # required: `check` says so in one line
    # Data: exactly one of these.
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    synthetic: bool = False
    # Where it runs.
    strategy: str = "default"
    tpu: str | None = None
    logical_cpus: int = 0
    multi_process: bool = False
    jit_compile: bool | None = None  # default: on with GPUs or TPUs (the runners say)
    compile_optimizer: bool | None = None  # TF: default on with GPUs (tf_runner.py)
    allreduce_dtype: str = "float32"  # TF: ALLREDUCE_DTYPES
    # The preset's fields.
    global_batch_size: int = 256
    learning_rate: float = 4.0
    warmup_epochs: float = 5.0
    train_epochs: float = 100.0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    end_learning_rate: float = 0.0
    trust_coefficient: float = 0.001
    adapt_biases: bool = False
    dropout: float = 0.0
    eval_every_epochs: float = 4.0
    eval_offset_epochs: float = 0.0  # the first evaluation; then every eval_every_epochs
    target_accuracy: float | None = None  # stop at the first evaluation reaching this top-1
    bn_span: int = 0  # images a batch-norm statistic covers (0: a replica's micro-batch)
    preprocessing: str = "model_garden"  # preprocessing.PREPROCESSING
    conv_initializer: str = "he_normal"  # ResNet-50's: CONV_INITIALIZERS
    # Steps, precision, model options.
    # Step counts as a source ran them, overriding the epochs (a preset's hold
    # at its own batch size only: `resolve` drops them at another).
    train_steps: int | None = None  # overrides train_epochs
    warmup_steps: int | None = None  # overrides warmup_epochs
    eval_every_steps: int | None = None  # overrides eval_every_epochs
    train_images: int | None = None  # default: counted (the converter records the count)
    steps_per_loop: int | None = None  # default: one epoch
    checkpoint_every_minutes: float = 5.0  # 0: after every loop; always at the end
    eval_batch_size: int | None = None  # default: the global batch size
    accumulation_steps: int = 1
    image_size: int | None = None  # default: the model's
    # Default: bfloat16 on TPUs (--strategy=tpu here; JAX on a TPU when its
    # runner finds one: `Runner.default_dtype`), else float32.
    dtype: str | None = None
    zero_init_residual: bool = True
    alexnet_groups: str = "split"
    alexnet_bn_variant: str = "authors"
    seed: int = 0
    deterministic: bool = False
    profile_steps: str | None = None  # "A,B": trace the steps after A up to B
    # ResNet-50's model_dir/mlperf.log (recipes/imagenet/mlperf_log.py).
    mlperf_submission_org: str = "keras_lars"
    mlperf_submission_platform: str | None = None  # default: the devices found
    mlperf_submission_division: str = "closed"
    mlperf_submission_status: str = "research"

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step counts derived from the config and the data, fixed at a run's
    first start."""

    replicas: int
    num_classes: int
    train_images: int
    eval_images: int  # 0 with synthetic data: no evaluation
    steps_per_epoch: int
    train_steps: int
    warmup_steps: int
    steps_per_loop: int
    eval_every_steps: int  # 0: only at the end
    eval_offset_steps: int  # the first evaluation (with eval_every_steps)
    # The data's identity (its files' names, sizes and first bytes), so that a
    # resume on other images of the same counts is refused.
    data_fingerprint: str = "synthetic"


def resolve(preset=None, model=None, **overrides):
    """The preset (by default the model's smallest-batch paper preset), with
    `overrides` (flag name -> value; None means "not given") on top."""
    from keras_lars._validation import check_choice

    if preset is not None:
        check_choice("--preset", preset, tuple(presets.PRESETS))
    if model is not None:
        check_choice("--model", model, MODELS)
    if preset is None:
        preset = presets.DEFAULT_PRESET[model or "resnet50"]
    values = presets.PRESETS[preset]
    if model is not None and model != values["model"]:
        raise ValueError(
            f"--preset={preset} is for --model={values['model']}, not --model={model}: "
            "pass the preset's model, or another preset"
        )
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"Unknown settings: {sorted(unknown)}")
    settings = {**presets.BASE, **values, "preset": preset}
    for name in presets.DESCRIPTIVE:
        del settings[name]
    given = {k: v for k, v in overrides.items() if v is not None}
    other_batch = given.get("global_batch_size", settings["global_batch_size"])
    for steps, epochs in STEPS_OVERRIDING_EPOCHS.items():
        # A preset's step count holds at its batch; a flag in epochs replaces it.
        if other_batch != settings["global_batch_size"] or epochs in given:
            settings[steps] = None
    settings.update(given)
    config = TrainConfig(**settings)
    image_size = config.image_size or IMAGE_SIZE[config.model]
    dtype = config.dtype or ("bfloat16" if config.strategy == "tpu" else None)
    config = dataclasses.replace(config, image_size=image_size, dtype=dtype)
    check(config)
    return config


def configured_warmup_steps(config, steps_per_epoch):
    """The warm-up the settings ask for, in steps (before a short run cuts it)."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return round(config.warmup_epochs * steps_per_epoch)


def check(config):
    """`ValueError` naming the flag of the first setting that is wrong."""
    from keras_lars._validation import check_choice
    from keras_lars._validation import check_integer
    from keras_lars._validation import check_number

    sources = [bool(config.data_dir), bool(config.tfds_data_dir), config.synthetic]
    if sum(sources) != 1:
        raise ValueError("Give exactly one of --data_dir, --tfds_data_dir and --synthetic")
    if not config.model_dir:
        raise ValueError("--model_dir is required: checkpoints and summaries go there")
    check_choice("--strategy", config.strategy, STRATEGIES)
    check_choice("--allreduce_dtype", config.allreduce_dtype, ALLREDUCE_DTYPES)
    if config.tpu and config.strategy != "tpu":
        raise ValueError(f"--tpu={config.tpu} needs --strategy=tpu")
    if config.dtype is not None:
        check_choice("--dtype", config.dtype, DTYPES)
    check_choice("--alexnet_groups", config.alexnet_groups, ALEXNET_GROUPS)
    check_choice("--conv_initializer", config.conv_initializer, CONV_INITIALIZERS)
    check_choice("--alexnet_bn_variant", config.alexnet_bn_variant, ALEXNET_BN_VARIANTS)
    check_choice("--preprocessing", config.preprocessing, tuple(PREPROCESSING))
    division, status = config.mlperf_submission_division, config.mlperf_submission_status
    check_choice("--mlperf_submission_division", division, MLPERF_DIVISIONS)
    check_choice("--mlperf_submission_status", status, MLPERF_STATUSES)
    for name in ("global_batch_size", "accumulation_steps", "image_size"):
        check_integer(f"--{name}", getattr(config, name), low=1)
    for name in ("train_steps", "steps_per_loop", "train_images", "eval_batch_size"):
        if getattr(config, name) is not None:
            check_integer(f"--{name}", getattr(config, name), low=1)
    for name in ("warmup_steps", "eval_every_steps"):
        if getattr(config, name) is not None:
            check_integer(f"--{name}", getattr(config, name), low=0)
    check_integer("--logical_cpus", config.logical_cpus, low=0)
    check_integer("--bn_span", config.bn_span, low=0)
    check_integer("--seed", config.seed, low=0)
    if config.profile_steps is not None:
        _check_profile_steps(config.profile_steps)
    min_size = MIN_IMAGE_SIZE[config.model]
    if config.image_size < min_size:
        raise ValueError(
            f"--image_size must be >= {min_size} for --model={config.model}. "
            f"Received: --image_size={config.image_size}"
        )
    for name in ("learning_rate", "train_epochs", "trust_coefficient"):
        check_number(f"--{name}", getattr(config, name), low=0.0, low_inclusive=False)
    for name in (
        "warmup_epochs",
        "weight_decay",
        "end_learning_rate",
        "eval_every_epochs",
        "eval_offset_epochs",
        "checkpoint_every_minutes",
    ):
        check_number(f"--{name}", getattr(config, name), low=0.0)
    if config.target_accuracy is not None and not 0 < config.target_accuracy <= 1:
        raise ValueError(
            "--target_accuracy is a top-1 fraction in (0, 1], e.g. 0.759. "
            f"Received: --target_accuracy={config.target_accuracy}"
        )
    micro_batch = config.global_batch_size // config.accumulation_steps
    if config.bn_span and micro_batch % config.bn_span:
        raise ValueError(
            f"--bn_span={config.bn_span} does not divide the {micro_batch} images of an "
            f"update's micro-batch (--global_batch_size={config.global_batch_size} / "
            f"--accumulation_steps={config.accumulation_steps}); --bn_span=0 normalises "
            "over each replica's whole micro-batch"
        )
    for name in ("momentum", "label_smoothing", "dropout"):
        check_number(f"--{name}", getattr(config, name), low=0.0, high=1.0)


def _check_profile_steps(text):
    try:
        first, last = (int(part) for part in text.split(","))
    except ValueError:
        first = last = None
    if first is None or not 0 <= first < last:
        raise ValueError(
            "--profile_steps is two steps A,B with 0 <= A < B (the steps after A up to "
            f"B are traced). Received: --profile_steps={text}"
        )


def backend():
    """The Keras backend this process will use, read as Keras reads it (the
    environment, then ~/.keras/keras.json), without importing Keras."""
    import json

    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(keras_home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def check_backend(config, backend_name):
    """`ValueError` naming the flag unless the strategy belongs to the Keras
    backend `backend_name`."""
    if backend_name == "jax":
        if config.allreduce_dtype != "float32":
            raise ValueError(
                f"--allreduce_dtype={config.allreduce_dtype} is for TensorFlow: on JAX, "
                "keras.distribution leaves the gradient all-reduce to XLA and has no setting "
                "for its dtype"
            )
        if config.strategy not in JAX_STRATEGIES:
            raise ValueError(
                f"--strategy={config.strategy} is a tf.distribute strategy: it needs "
                "KERAS_BACKEND=tensorflow. On JAX use --strategy=data_parallel (TPUs "
                "included: JAX finds their cores itself)"
            )
    elif backend_name == "tensorflow":
        if config.strategy not in TF_STRATEGIES:
            raise ValueError(
                f"--strategy={config.strategy} is keras.distribution, which Keras 3 runs on "
                "JAX only: use KERAS_BACKEND=jax, or on TensorFlow --strategy=mirrored, "
                "multi_worker or tpu"
            )
        if config.multi_process:
            raise ValueError(
                "--multi_process is for JAX; TensorFlow's --strategy=multi_worker reads "
                "the cluster from TF_CONFIG"
            )
    else:
        raise ValueError(
            f"The recipes run on the TensorFlow or JAX backend, not {backend_name!r}: set "
            "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax"
        )
