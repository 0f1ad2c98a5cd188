"""The ImageNet recipes' configuration: a preset, then the flags over it.

`resolve(preset=..., model=..., **overrides)` returns a `TrainConfig` with
every field set, or raises `ValueError` naming the flag that is wrong. The
field names are the flag names of `recipes/imagenet_train.py`.
"""

import dataclasses
import math

import keras

from recipes import models
from recipes import presets

DTYPES = ("float32", "bfloat16", "float16")
# tf.distribute strategies (recipes/strategies.py) and keras.distribution's
# data parallelism (recipes/jax_runner.py); "default" is one device on both.
TF_STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
JAX_STRATEGIES = ("default", "data_parallel")
STRATEGIES = TF_STRATEGIES + ("data_parallel",)
# Settings that may change when a run is resumed: where and how it runs, not
# what it computes.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "strategy",
        "tpu",
        "logical_cpus",
        "multi_process",
        "steps_per_loop",
        "data_dir",
        "tfds_data_dir",
    }
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str
    preset: str
    model_dir: str
    # Data: exactly one of these.
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    synthetic: bool = False
    # Where it runs.
    strategy: str = "default"
    tpu: str | None = None
    logical_cpus: int = 0
    multi_process: bool = False
    jit_compile: bool = False
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
    # Steps, precision, model options.
    train_steps: int | None = None  # overrides train_epochs
    train_images: int | None = None  # default: counted (the converter records the count)
    steps_per_loop: int | None = None  # default: one epoch
    accumulation_steps: int = 1
    image_size: int | None = None  # default: the model's
    dtype: str | None = None  # default: bfloat16 with --strategy=tpu, else float32
    zero_init_residual: bool = True
    alexnet_groups: str = "split"
    alexnet_bn_variant: str = "authors"
    seed: int = 0
    deterministic: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)


PRESET_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(TrainConfig)
    if f.name
    in {
        "global_batch_size",
        "learning_rate",
        "warmup_epochs",
        "train_epochs",
        "weight_decay",
        "momentum",
        "label_smoothing",
        "end_learning_rate",
        "trust_coefficient",
        "adapt_biases",
        "dropout",
        "eval_every_epochs",
    }
)


def resolve(preset=None, model=None, **overrides):
    """The preset (by default the model's smallest-batch paper preset), with
    `overrides` (flag name -> value; None means "not given") on top."""
    if preset is not None and preset not in presets.PRESETS:
        raise ValueError(
            f"--preset must be one of {', '.join(presets.PRESETS)}. Received: --preset={preset}"
        )
    if model is not None and model not in models.MODELS:
        raise ValueError(f"--model must be one of {models.MODELS}. Received: --model={model}")
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
    settings.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**settings)
    image_size = config.image_size or models.IMAGE_SIZE[config.model]
    dtype = config.dtype or ("bfloat16" if config.strategy == "tpu" else "float32")
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
    if config.strategy not in STRATEGIES:
        raise ValueError(
            f"--strategy must be one of {STRATEGIES}. Received: --strategy={config.strategy}"
        )
    if config.tpu and config.strategy != "tpu":
        raise ValueError(f"--tpu={config.tpu} needs --strategy=tpu")
    if config.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}. Received: --dtype={config.dtype}")
    if config.alexnet_groups not in models.ALEXNET_GROUPS:
        raise ValueError(
            f"--alexnet_groups must be one of {models.ALEXNET_GROUPS}. "
            f"Received: --alexnet_groups={config.alexnet_groups}"
        )
    if config.alexnet_bn_variant not in models.ALEXNET_BN_VARIANTS:
        raise ValueError(
            f"--alexnet_bn_variant must be one of {models.ALEXNET_BN_VARIANTS}. "
            f"Received: --alexnet_bn_variant={config.alexnet_bn_variant}"
        )
    for name in ("global_batch_size", "accumulation_steps", "image_size"):
        _integer(config, name, low=1)
    for name in ("train_steps", "steps_per_loop", "train_images"):
        if getattr(config, name) is not None:
            _integer(config, name, low=1)
    _integer(config, "logical_cpus", low=0)
    _integer(config, "seed", low=0)
    min_size = models.MIN_IMAGE_SIZE[config.model]
    if config.image_size < min_size:
        raise ValueError(
            f"--image_size must be >= {min_size} for --model={config.model}. "
            f"Received: --image_size={config.image_size}"
        )
    _number(config, "learning_rate", low=0.0, strict=True)
    _number(config, "train_epochs", low=0.0, strict=True)
    for name in ("warmup_epochs", "weight_decay", "end_learning_rate", "eval_every_epochs"):
        _number(config, name, low=0.0)
    _number(config, "trust_coefficient", low=0.0, strict=True)
    for name in ("momentum", "label_smoothing", "dropout"):
        _number(config, name, low=0.0, high=1.0)


def check_backend(config, backend=None):
    """`ValueError` naming the flag unless the strategy belongs to `backend`
    (by default the Keras backend in use)."""
    backend = backend or keras.backend.backend()
    if backend == "jax":
        if config.strategy not in JAX_STRATEGIES:
            raise ValueError(
                f"--strategy={config.strategy} is a tf.distribute strategy: it needs "
                "KERAS_BACKEND=tensorflow. On JAX use --strategy=data_parallel (TPUs "
                "included: JAX finds their cores itself)"
            )
    elif backend == "tensorflow":
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
            f"The recipes run on the TensorFlow or JAX backend, not {backend!r}: set "
            "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax"
        )


def _integer(config, name, low):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"--{name} must be an integer >= {low}. Received: --{name}={value}")


def _number(config, name, low, high=None, strict=False):
    value = getattr(config, name)
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
        and (high is None or value < high)
    )
    if not ok:
        bounds = f"> {low}" if strict else f">= {low}"
        if high is not None:
            bounds += f" and < {high}"
        raise ValueError(f"--{name} must be a number {bounds}. Received: --{name}={value}")
