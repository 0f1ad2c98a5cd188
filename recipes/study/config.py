"""The study's settings and the runs they plan.

Importing this module loads no Keras, nor do its checks (`recipes/checks.py`).
"""

import dataclasses
import math
import types

from ..checks import check_choice
from ..checks import check_integer
from ..checks import check_number

BASE_BATCH = 128  # where `sgd_base_lr` applies
LARS_REFERENCE_BATCH = 4096  # LARS rates are given here, square-root scaled below
MODELS = ("cnn", "cnn_bn")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    models: tuple = ("cnn",)
    batch_sizes: tuple = (128, 4096, 8192)
    epochs: int = 10
    warmup_epochs: int = 2  # the paper's AlexNet warm-up; 3 or 5 did worse at 8K
    seeds: int = 3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sgd_base_lr: float = 0.05  # at batch 128
    # Multiples of the linear-scaled rate; the first must be 1 (linear scaling).
    sgd_sweep: tuple = (1.0, 0.0625, 0.015625, 0.00390625)  # 1, 1/16, 1/64, 1/256
    # LARS global rates at batch >= LARS_REFERENCE_BATCH, square-root scaled below.
    lars_lrs: tuple = (24.0, 48.0, 96.0)
    trust_coefficient: float = 0.001
    validation_examples: int = 5000
    # 30,000 of the 55,000 that remain after validation: three seeds of every
    # run fit in ten minutes on 2 cores (0: all of them).
    train_examples: int = 30000
    test_examples: int = 0  # 0: all

    @classmethod
    def defaults(cls):
        """The default settings, unchecked, as a namespace (for --help)."""
        return types.SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(cls)})

    def __post_init__(self):
        if not self.models:
            raise ValueError("`models` must name at least one model. Received: models=()")
        for model in self.models:
            check_choice("models", model, MODELS)
        if not self.batch_sizes:
            raise ValueError("`batch_sizes` must name at least one. Received: batch_sizes=()")
        for batch in self.batch_sizes:
            check_integer("batch_sizes", batch, low=1)
        check_integer("epochs", self.epochs, low=1)
        check_integer("seeds", self.seeds, low=1)
        check_integer("validation_examples", self.validation_examples, low=1)
        check_integer("train_examples", self.train_examples, low=0)
        check_integer("test_examples", self.test_examples, low=0)
        check_integer("warmup_epochs", self.warmup_epochs, low=0)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be below `epochs`={self.epochs} (set --warmup_epochs "
                f"too). Received: warmup_epochs={self.warmup_epochs}"
            )
        check_number("momentum", self.momentum, low=0.0, high=1.0)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("sgd_base_lr", self.sgd_base_lr, low=0.0, low_inclusive=False)
        check_number("trust_coefficient", self.trust_coefficient, low=0.0, low_inclusive=False)
        if not self.sgd_sweep or self.sgd_sweep[0] != 1.0:
            raise ValueError(
                "`sgd_sweep` must start with 1.0 (linear scaling). "
                f"Received: sgd_sweep={self.sgd_sweep}"
            )
        for name in ("sgd_sweep", "lars_lrs"):
            rates = getattr(self, name)
            for rate in rates:
                check_number(name, rate, low=0.0, low_inclusive=False)
            if not rates or len(set(rates)) < len(rates):
                raise ValueError(f"`{name}` must be distinct numbers > 0. Received: {name}={rates}")


# A smoke run: fewer epochs and images, one LARS rate, one seed.
QUICK = dict(epochs=6, seeds=1, lars_lrs=(24.0,), train_examples=10000, test_examples=5000)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The claim's parts, in accuracy points (0-100)."""

    sgd_failure_gap: float = 10.0  # linear SGD "fails": diverges or this far below
    lars_gaps: tuple = ((4096, 4.0), (8192, 7.0))  # LARS at most this far below

    def __post_init__(self):
        check_number("sgd_failure_gap", self.sgd_failure_gap, low=0.0)
        for batch, gap in self.lars_gaps:
            check_integer("lars_gaps", batch, low=1)
            check_number("lars_gaps", gap, low=0.0)


def parse_gaps(text):
    """ "4096:4,8192:7" -> ((4096, 4.0), (8192, 7.0)); ValueError naming it."""
    try:
        pairs = tuple(
            (int(batch), float(gap))
            for batch, gap in (item.split(":") for item in text.split(",") if item.strip())
        )
    except ValueError:
        raise ValueError(
            f"`lars_gaps` must look like 4096:4,8192:7 (batch:points). Received: {text!r}"
        ) from None
    Thresholds(lars_gaps=pairs)  # checks the values
    return pairs


@dataclasses.dataclass(frozen=True)
class Run:
    model: str
    optimizer: str  # "sgd" or "lars"
    batch_size: int
    learning_rate: float
    seed: int
    linear_scaled: bool = False


def plan_runs(config):
    """Every (model, optimizer, batch, rate, seed). The smallest batch is the
    reference: each optimizer runs once there, at the first rate of its sweep."""
    reference = min(config.batch_sizes)
    runs = []
    for model in config.models:
        for seed in range(config.seeds):
            for batch in config.batch_sizes:
                sgd_sweep = config.sgd_sweep[:1] if batch == reference else config.sgd_sweep
                lars_lrs = config.lars_lrs[:1] if batch == reference else config.lars_lrs
                linear = config.sgd_base_lr * batch / BASE_BATCH
                for k in sgd_sweep:
                    runs.append(Run(model, "sgd", batch, linear * k, seed, linear_scaled=k == 1.0))
                scale = math.sqrt(min(batch, LARS_REFERENCE_BATCH) / LARS_REFERENCE_BATCH)
                for lr in lars_lrs:
                    runs.append(Run(model, "lars", batch, round(lr * scale, 3), seed))
    return runs
