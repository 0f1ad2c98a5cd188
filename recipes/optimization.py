"""LARS on its warm-up and polynomial-decay schedule, built from settings the
same way for the ImageNet recipe and the study, on every backend."""

import keras

import keras_lars
from keras_lars import _keras_internals

# Which variables are not adapted, besides the default (biases and
# normalisation variables): none (adapt everything, as the authors' NVCaffe
# did), or all (λ = 1 throughout: momentum SGD with LARS's coupled decay).
ADAPT_ALL = ()
ADAPT_NONE = (".*",)


def schedule(peak_rate, *, train_steps, warmup_steps, end_learning_rate=0.0):
    """Linear warm-up from 0 to `peak_rate`, then poly(2) decay to
    `end_learning_rate` over the remaining steps plus one: MLPerf's
    reference decays over `train_steps − warmup_steps + 1`, so that its
    last update still moves."""
    return keras_lars.PolynomialWarmup(
        peak_rate,
        decay_steps=train_steps - warmup_steps + 1,
        warmup_steps=warmup_steps,
        end_learning_rate=end_learning_rate,
    )


def lars(
    peak_rate,
    *,
    train_steps,
    warmup_steps,
    end_learning_rate=0.0,
    momentum,
    weight_decay,
    trust_coefficient,
    adaptation_exclude_patterns=keras_lars.DEFAULT_EXCLUDE_PATTERNS,
    track_trust_ratios=False,
    gradient_accumulation_steps=None,
):
    """`keras_lars.LARS` on `schedule(...)`. Biases and normalisation
    variables are never decayed; `adaptation_exclude_patterns` says which
    variables are not adapted (by default those too; `ADAPT_ALL`,
    `ADAPT_NONE`)."""
    return keras_lars.LARS(
        schedule(
            peak_rate,
            train_steps=train_steps,
            warmup_steps=warmup_steps,
            end_learning_rate=end_learning_rate,
        ),
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        adaptation_exclude_patterns=adaptation_exclude_patterns,
        track_trust_ratios=track_trust_ratios,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )


def learning_rate(optimizer):
    """The rate the schedule gives at the optimizer's current update."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def micro_steps(optimizer):
    """The micro-steps `optimizer` (a LARS, or a LossScaleOptimizer around
    one) has run: its updates times its gradient accumulation steps, plus
    those of an update under way. (Keras's public `iterations` counts whole
    updates when it accumulates, and would hide a stray micro-step.)"""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return int(keras.ops.convert_to_numpy(_keras_internals.micro_steps(inner)))
