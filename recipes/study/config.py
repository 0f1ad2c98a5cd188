"""The study's settings and the runs they plan. No Keras here."""

import dataclasses
import math
import numbers

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

    def __post_init__(self):
        if not self.models or any(m not in MODELS for m in self.models):
            raise ValueError(f"`models` must be among {MODELS}. Received: models={self.models}")
        if not self.batch_sizes or not all(_is_int(b, 1) for b in self.batch_sizes):
            raise ValueError(
                f"`batch_sizes` must be integers >= 1. Received: batch_sizes={self.batch_sizes}"
            )
        for name in ("epochs", "seeds"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(
                    f"`{name}` must be an integer >= 1. Received: {name}={getattr(self, name)!r}"
                )
        if not _is_int(self.validation_examples, 1):
            raise ValueError(
                "`validation_examples` must be an integer >= 1 (the rates are chosen on them). "
                f"Received: validation_examples={self.validation_examples!r}"
            )
        for name in ("train_examples", "test_examples"):
            if not _is_int(getattr(self, name), 0):
                raise ValueError(
                    f"`{name}` must be an integer >= 0. Received: {name}={getattr(self, name)!r}"
                )
        if not _is_int(self.warmup_epochs, 0) or self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be an integer in [0, epochs={self.epochs}) "
                f"(set --warmup_epochs too). Received: warmup_epochs={self.warmup_epochs}"
            )
        for name, low, high in (
            ("momentum", 0.0, 1.0),
            ("weight_decay", 0.0, None),
            ("sgd_base_lr", 0.0, None),
            ("trust_coefficient", 0.0, None),
        ):
            value = getattr(self, name)
            if not _is_number(value) or value < low or (high is not None and value >= high):
                bounds = f"in [{low}, {high})" if high is not None else f">= {low}"
                raise ValueError(f"`{name}` must be a number {bounds}. Received: {name}={value!r}")
        if self.sgd_base_lr <= 0 or self.trust_coefficient <= 0:
            raise ValueError("`sgd_base_lr` and `trust_coefficient` must be > 0")
        if not self.sgd_sweep or self.sgd_sweep[0] != 1.0:
            raise ValueError(
                "`sgd_sweep` must start with 1.0 (linear scaling). "
                f"Received: sgd_sweep={self.sgd_sweep}"
            )
        for name in ("sgd_sweep", "lars_lrs"):
            rates = getattr(self, name)
            if (
                not rates
                or not all(_is_number(r) and r > 0 for r in rates)
                or len(set(rates)) < len(rates)
            ):
                raise ValueError(f"`{name}` must be distinct numbers > 0. Received: {name}={rates}")


def _is_int(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# A smoke run: fewer epochs and images, one LARS rate, one seed.
QUICK = dict(epochs=6, seeds=1, lars_lrs=(24.0,), train_examples=10000, test_examples=5000)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The claim's parts, in accuracy points (0-100)."""

    sgd_failure_gap: float = 10.0  # linear SGD "fails": diverges or this far below
    lars_gaps: tuple = ((4096, 4.0), (8192, 7.0))  # LARS at most this far below

    def __post_init__(self):
        if not _is_number(self.sgd_failure_gap) or self.sgd_failure_gap < 0:
            raise ValueError(
                f"`sgd_failure_gap` must be a number >= 0. Received: {self.sgd_failure_gap!r}"
            )
        for batch, gap in self.lars_gaps:
            if not _is_int(batch, 1) or not _is_number(gap) or gap < 0:
                raise ValueError(
                    "`lars_gaps` must be (batch >= 1, points >= 0) pairs. "
                    f"Received: {self.lars_gaps}"
                )


DEFAULT_THRESHOLDS = Thresholds()


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
