"""The ImageNet recipe's settings: a preset (`presets.py`), the defaults of
the settings no preset fixes (`DEFAULTS`), and the flags over both.

`resolve(preset=..., model=..., **overrides)` returns a `TrainConfig` with
every field set, or raises `ValueError` naming the flag that is wrong. The
field names are the flag names of `recipes/imagenet/cli.py`. Each choice list
(models, strategies, dtypes, ...) and each default is defined here once.

Neither this module nor what it imports loads Keras, TensorFlow or JAX, so
that --help and a flag's mistake are instant.
"""

import dataclasses
import re

from ..checks import check_choice
from ..checks import check_integer
from ..checks import check_number
from . import presets
from .preprocessing import PREPROCESSING

MODELS = ("resnet50", "alexnet", "alexnet_bn")
IMAGE_SIZE = {"resnet50": 224, "alexnet": 227, "alexnet_bn": 227}
# Below these, a model's last pooling has nothing left to pool (AlexNet: 67 is
# the smallest input whose pool5 keeps one pixel).
MIN_IMAGE_SIZE = {"resnet50": 32, "alexnet": 67, "alexnet_bn": 67}
ALEXNET_GROUPS = ("split", "native", "none")
# The width of AlexNet's fc6 and fc7 in every source; narrower ones make
# small inputs' runs (the tests', a quick look at a recipe) cheap.
ALEXNET_FC_UNITS = 4096
CONV_INITIALIZERS = ("he_normal", "variance_scaling")  # models/resnet.py
ALEXNET_BN_VARIANTS = ("authors", "conv_bn_relu")
DTYPES = ("float32", "bfloat16", "float16")
# tf.distribute strategies (recipes/imagenet/strategies.py) and
# keras.distribution's data parallelism (recipes/imagenet/jax_runner.py);
# "default" is one device on both.
TF_STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
JAX_STRATEGIES = ("default", "data_parallel")
STRATEGIES = TF_STRATEGIES + ("data_parallel",)
ALLREDUCE_DTYPES = ("float32", "bfloat16")  # TensorFlow's gradient all-reduce
# Each step count and the epoch setting it overrides.
STEPS_OVERRIDING_EPOCHS = {
    "train_steps": "train_epochs",
    "warmup_steps": "warmup_epochs",
    "eval_every_steps": "eval_every_epochs",
}
# MLPerf's closed_common rules: the divisions and a submission's status.
MLPERF_DIVISIONS = ("closed", "open")
MLPERF_STATUSES = ("cloud", "onprem", "preview", "research")
# A tf.data service dispatcher's address (recipes/imagenet/data_service.py).
DATA_SERVICE_ADDRESS = re.compile(r"(grpc://)?[\w.-]+:\d+")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run, each the flag of the same name. `resolve`
    builds it: the preset's fields (`PRESET_FIELDS`) from the preset, the
    others from `DEFAULTS`, the flags given over both."""

    model: str
    preset: str
    model_dir: str | None  # required: `check` says so in one line
    # Data: exactly one of these.
    data_dir: str | None
    tfds_data_dir: str | None
    synthetic: bool
    # The training input made by a tf.data service's workers: its dispatcher.
    data_service: str | None
    # Where it runs.
    strategy: str
    tpu: str | None
    logical_cpus: int
    multi_process: bool
    jit_compile: bool | None
    compile_optimizer: bool | None
    allreduce_dtype: str
    # The preset's fields.
    global_batch_size: int
    learning_rate: float
    warmup_epochs: float
    train_epochs: float
    weight_decay: float
    momentum: float
    label_smoothing: float
    end_learning_rate: float
    trust_coefficient: float
    adapt_biases: bool
    dropout: float
    eval_every_epochs: float
    eval_offset_epochs: float  # the first evaluation; then every eval_every_epochs
    target_accuracy: float | None  # stop at the first evaluation reaching this top-1
    bn_span: int  # images a batch-norm statistic covers (0: a replica's micro-batch)
    preprocessing: str  # preprocessing.PREPROCESSING
    conv_initializer: str  # ResNet-50's: CONV_INITIALIZERS
    # Step counts as a source ran them, overriding the epochs (a preset's hold
    # at its own batch size only: `resolve` drops them at another).
    train_steps: int | None  # overrides train_epochs
    warmup_steps: int | None  # overrides warmup_epochs
    eval_every_steps: int | None  # overrides eval_every_epochs
    # Steps, precision, model options.
    train_images: int | None
    steps_per_loop: int | None
    checkpoint_every_minutes: float  # 0: after every loop; always at the end
    eval_batch_size: int | None
    accumulation_steps: int
    image_size: int | None
    dtype: str | None
    zero_init_residual: bool
    alexnet_groups: str
    alexnet_bn_variant: str
    alexnet_fc_units: int
    seed: int
    deterministic: bool
    profile_steps: str | None  # "A,B": trace the steps after A up to B
    # ResNet-50's model_dir/mlperf.log (recipes/imagenet/mlperf_log.py).
    mlperf_submission_org: str
    mlperf_submission_platform: str | None
    mlperf_submission_division: str
    mlperf_submission_status: str

    def to_dict(self):
        return dataclasses.asdict(self)


# The default of every setting a preset does not fix: the one place for them
# (the command line's flags default to these too). None where what the run
# finds decides, as each comment says.
DEFAULTS = dict(
    model_dir=None,
    data_dir=None,
    tfds_data_dir=None,
    synthetic=False,
    data_service=None,  # the training input made on this host
    strategy="default",
    tpu=None,
    logical_cpus=0,
    multi_process=False,
    jit_compile=None,  # on with GPUs or TPUs (the runners say)
    compile_optimizer=None,  # TensorFlow: on with GPUs or TPUs (tf_runner.py)
    allreduce_dtype="float32",
    train_images=None,  # counted (the converter records the count)
    steps_per_loop=None,  # one epoch
    checkpoint_every_minutes=5.0,
    eval_batch_size=None,  # an update's micro-batch (plan.evaluation_batch_size)
    accumulation_steps=1,
    image_size=None,  # the model's: IMAGE_SIZE
    # bfloat16 on TPUs (--strategy=tpu here; JAX on a TPU when its runner
    # finds one: `Runner.default_dtype`), else float32.
    dtype=None,
    zero_init_residual=True,
    alexnet_groups="split",
    alexnet_bn_variant="authors",
    alexnet_fc_units=ALEXNET_FC_UNITS,
    seed=0,
    deterministic=False,
    profile_steps=None,
    mlperf_submission_org="keras_lars",
    mlperf_submission_platform=None,  # the devices found
    mlperf_submission_division="closed",
    mlperf_submission_status="research",
)
# What every preset holds (presets.py), and nothing else but its DESCRIPTIVE fields.
PRESET_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in {"preset", *DEFAULTS}
)


def resolve(preset=None, model=None, **overrides):
    """The preset (by default the model's smallest-batch paper preset), with
    `overrides` (flag name -> value; None means "not given") on top."""
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
    settings = {**DEFAULTS, **{name: values[name] for name in PRESET_FIELDS}, "preset": preset}
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


def check(config):
    """`ValueError` naming the flag of the first setting that is wrong."""
    sources = [bool(config.data_dir), bool(config.tfds_data_dir), config.synthetic]
    if sum(sources) != 1:
        raise ValueError("Give exactly one of --data_dir, --tfds_data_dir and --synthetic")
    if not config.model_dir:
        raise ValueError("--model_dir is required: checkpoints and summaries go there")
    if config.data_service is not None:
        _check_data_service(config)
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
    for name in ("global_batch_size", "accumulation_steps", "image_size", "alexnet_fc_units"):
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


def _check_data_service(config):
    if not DATA_SERVICE_ADDRESS.fullmatch(config.data_service):
        raise ValueError(
            "--data_service is a tf.data service dispatcher's address, grpc://HOST:PORT. "
            f"Received: --data_service={config.data_service}"
        )
    if not config.data_dir:
        raise ValueError(
            "--data_service makes the training input from --data_dir's TFRecords (its "
            "workers share them by files): give --data_dir"
        )
    if config.deterministic:
        raise ValueError(
            "--deterministic repeats the input's order, which --data_service's workers, "
            "delivering batches as they finish them, do not: drop one of them"
        )


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
