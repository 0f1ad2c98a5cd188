"""The recipes' optimizer: keras_lars.LARS on a PolynomialWarmup schedule,
built the same way on every backend."""

import keras

import keras_lars


def schedule(config, plan):
    """Linear warm-up from 0, then poly(2) decay over the rest plus one step,
    as MLPerf does."""
    return keras_lars.PolynomialWarmup(
        config.learning_rate,
        decay_steps=plan.train_steps - plan.warmup_steps + 1,
        warmup_steps=plan.warmup_steps,
        end_learning_rate=config.end_learning_rate,
    )


def optimizer(config, plan, gradient_accumulation_steps=None):
    """(the optimizer to train with, the LARS inside it): a
    LossScaleOptimizer around LARS for float16, else LARS itself."""
    lars = keras_lars.LARS(
        schedule(config, plan),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        trust_coefficient=config.trust_coefficient,
        track_trust_ratios=True,
        # adapt_biases: biases and normalisation variables still skip the decay.
        adaptation_exclude_patterns=()
        if config.adapt_biases
        else keras_lars.DEFAULT_EXCLUDE_PATTERNS,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    if config.dtype == "float16":
        return keras.optimizers.LossScaleOptimizer(lars), lars
    return lars, lars


def learning_rate(lars):
    """The rate the schedule gives at the optimizer's current update."""
    return float(keras.ops.convert_to_numpy(lars.learning_rate))
