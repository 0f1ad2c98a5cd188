"""LARS: Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017)."""

import numbers
import re

import keras
from keras import ops

from keras_lars._validation import check_number

# Leaf names of Keras bias and normalisation variables (Dense/Conv `bias`,
# BatchNormalization/LayerNormalization/GroupNormalization `gamma` and `beta`).
# Matched with `re.search` against `variable.path`, e.g. "model/dense/bias".
DEFAULT_EXCLUDE_PATTERNS = (r"(^|/)(bias|gamma|beta)$",)

SUM_OF_NORMS = "sum_of_norms"
NORM_OF_SUM = "norm_of_sum"
_DENOMINATORS = (SUM_OF_NORMS, NORM_OF_SUM)


@keras.saving.register_keras_serializable(package="keras_lars")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling with momentum.

    Each variable `w` with gradient `g` gets its own rate `λ` from the ratio of
    its weight norm to its gradient norm (the paper's default form):

    ```
    g̃ = g + β·w                                   (coupled weight decay)
    λ = η·‖w‖ / (‖g‖ + β·‖w‖ + ε)                 (λ = 1 if ‖w‖ = 0 or ‖g‖ = 0)
    v = m·v + γ·λ·g̃                                (γ: the global learning rate)
    w = w − v                                      (nesterov: w = w − (m·v + γ·λ·g̃))
    ```

    `η` is `trust_coefficient`, `β` is `weight_decay`, `m` is `momentum`. The
    global rate sits inside the momentum buffer, as in the paper and in every
    TensorFlow and JAX implementation. Norms are computed in float32 whatever
    the variable's dtype, and no Python branch depends on a tensor value, so the
    step compiles under XLA and on TPUs.

    Variants, each an explicit argument:

    - `trust_ratio_denominator="norm_of_sum"`: `λ = η·‖w‖ / (‖g + β·w‖ + ε)`,
      as in `optax.lars`, TF Model Garden and SimCLR (λ = 1 if ‖w‖ = 0 or
      ‖g + β·w‖ = 0). It never gives a smaller ratio; both agree when β = 0.
    - `larc_clip=True`: LARC's "clip" mode (apex `LARC(clip=True)`,
      OpenSeq2Seq `larc_mode="clip"`): the local rate is `min(λ, γ)` instead of
      `γ·λ`, so adaptation can only lower the global rate.
    - `nesterov=True`: Nesterov momentum.

    Exclusions. A variable excluded from weight decay uses `β = 0` in both the
    update and the ratio. A variable excluded from layer adaptation uses
    `λ = 1`: plain momentum SGD at the global rate. By default biases and
    normalisation parameters (`DEFAULT_EXCLUDE_PATTERNS`) are excluded from
    both, as in the TF and MLPerf reference code. The trade-off: excluded
    variables move with the raw global rate, which in LARS recipes is 10 to 30;
    the authors' own Caffe code adapted every variable. Adapting biases is not
    free either: a zero-initialised bias has ‖w‖ = 0, so λ = 1 and it moves
    with the full global rate on its first step. To adapt biases but still skip
    their decay, pass `adaptation_exclude_patterns=()`; to exclude by rank as
    timm does, call `exclude_from_layer_adaptation(var_list=[v for v in
    model.trainable_variables if len(v.shape) <= 1])` before training.

    Patterns are regular expressions searched in `variable.path`
    (e.g. `"sequential/dense/bias"`), which is the same on every backend.

    Example:

    ```python
    schedule = keras_lars.PolynomialWarmup(
        initial_learning_rate=10.0, decay_steps=10_000, warmup_steps=500)
    model.compile(
        optimizer=keras_lars.LARS(schedule, weight_decay=5e-4),
        loss="sparse_categorical_crossentropy")
    ```

    Args:
        learning_rate: The global rate `γ`: a float, a
            `keras.optimizers.schedules.LearningRateSchedule` (for example
            `keras_lars.PolynomialWarmup`), or a callable taking no arguments.
            Defaults to `1.0`; the paper used 2 (batch 512) to 40 (batch 32K).
        momentum: `m`, a float in [0, 1). Defaults to `0.9`.
        weight_decay: `β`, the coupled L2 weight decay, a float >= 0. It enters
            both the update and the trust ratio; the base class's decoupled
            decay is not applied. Defaults to `5e-4` (the paper's value).
        trust_coefficient: `η`, a float > 0. Defaults to `0.001`.
        epsilon: `ε`, a float >= 0 added to the ratio's denominator. Defaults to
            `0.0`, and 0 means 0.
        nesterov: Whether to use Nesterov momentum. Defaults to `False`.
        trust_ratio_denominator: `"sum_of_norms"` (the paper's
            `‖g‖ + β‖w‖ + ε`) or `"norm_of_sum"` (`‖g + βw‖ + ε`). Defaults to
            `"sum_of_norms"`.
        larc_clip: Whether to cap the local rate at the global rate (LARC's clip
            mode). Defaults to `False`.
        weight_decay_exclude_patterns: Regular expressions; variables whose path
            matches any are not decayed. Defaults to `DEFAULT_EXCLUDE_PATTERNS`.
        adaptation_exclude_patterns: Regular expressions; variables whose path
            matches any get `λ = 1`. Defaults to `DEFAULT_EXCLUDE_PATTERNS`.
        track_trust_ratios: Whether to keep the `λ` of each variable's last
            update in a float32 optimizer variable, for monitoring (the
            paper's per-layer plots) without an extra forward or backward
            pass; read them with `trust_ratios()`. Defaults to `False`.
        clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
            ema_overwrite_frequency, loss_scale_factor,
            gradient_accumulation_steps, name: forwarded to
            `keras.optimizers.Optimizer`, with its meanings and defaults
            (`name` defaults to `"lars"`).
    """

    def __init__(
        self,
        learning_rate=1.0,
        momentum=0.9,
        weight_decay=5e-4,
        trust_coefficient=0.001,
        epsilon=0.0,
        nesterov=False,
        trust_ratio_denominator=SUM_OF_NORMS,
        larc_clip=False,
        weight_decay_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        adaptation_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        track_trust_ratios=False,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="lars",
        **kwargs,
    ):
        if isinstance(learning_rate, numbers.Real):  # Not a schedule or callable.
            check_number("learning_rate", learning_rate, low=0.0)
            learning_rate = float(learning_rate)  # The base class wants a float.
        check_number("momentum", momentum, low=0.0, high=1.0)
        check_number("weight_decay", weight_decay, low=0.0)
        check_number("epsilon", epsilon, low=0.0)
        check_number("trust_coefficient", trust_coefficient, low=0.0, low_inclusive=False)
        if trust_ratio_denominator not in _DENOMINATORS:
            raise ValueError(
                f"`trust_ratio_denominator` must be one of {_DENOMINATORS}. "
                f"Received: trust_ratio_denominator={trust_ratio_denominator!r}"
            )
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=float(weight_decay),
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.momentum = float(momentum)
        self.trust_coefficient = float(trust_coefficient)
        self.epsilon = float(epsilon)
        self.nesterov = bool(nesterov)
        self.trust_ratio_denominator = trust_ratio_denominator
        self.larc_clip = bool(larc_clip)
        self.track_trust_ratios = bool(track_trust_ratios)
        self.weight_decay_exclude_patterns = _check_patterns(
            "weight_decay_exclude_patterns", weight_decay_exclude_patterns
        )
        self.adaptation_exclude_patterns = _check_patterns(
            "adaptation_exclude_patterns", adaptation_exclude_patterns
        )
        # Variables excluded by object (`var_list=`), keyed by `_var_key`. They
        # cannot be serialized; patterns and `var_names=` can.
        self._weight_decay_excluded_keys = set()
        self._adaptation_excluded_keys = set()

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Excludes variables from weight decay (adds to the exclusions).

        Args:
            var_list: Variables to exclude, by object.
            var_names: Strings; a variable is excluded when one of them occurs
                in its `path`. They are stored as escaped patterns, so
                `get_config` keeps them.
        """
        self._check_not_built("exclude_from_weight_decay")
        self._weight_decay_excluded_keys.update(self._var_key(v) for v in var_list or ())
        self.weight_decay_exclude_patterns += tuple(re.escape(n) for n in var_names or ())

    def exclude_from_layer_adaptation(self, var_list=None, var_names=None):
        """Excludes variables from layer adaptation (they get `λ = 1`).

        Args:
            var_list: Variables to exclude, by object.
            var_names: Strings; a variable is excluded when one of them occurs
                in its `path`. They are stored as escaped patterns, so
                `get_config` keeps them.
        """
        self._check_not_built("exclude_from_layer_adaptation")
        self._adaptation_excluded_keys.update(self._var_key(v) for v in var_list or ())
        self.adaptation_exclude_patterns += tuple(re.escape(n) for n in var_names or ())

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Treatment is decided here, from `path`: inside `update_step` the
        # TensorFlow backend passes raw (possibly per-replica) tf.Variables.
        # Frozensets, because TF's tracking wraps lists and dicts.
        self._decayed_indices = frozenset(
            i
            for i, v in enumerate(variables)
            if self.weight_decay > 0
            and not self._is_excluded(
                v,
                self._weight_decay_excluded_keys,
                self.weight_decay_exclude_patterns,
            )
        )
        self._adapted_indices = frozenset(
            i
            for i, v in enumerate(variables)
            if not self._is_excluded(
                v,
                self._adaptation_excluded_keys,
                self.adaptation_exclude_patterns,
            )
        )
        self.momentums = []
        if self.momentum > 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        self._variable_paths = tuple(_variable_path(v) for v in variables)
        self._trust_ratios = []
        if self.track_trust_ratios:
            self._trust_ratios = [
                self.add_variable(
                    shape=(),
                    dtype="float32",
                    name=re.sub(r"\W", "_", path) + "_trust_ratio",
                )
                for path in self._variable_paths
            ]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        gradient = _densify(gradient, variable.shape)
        decay = self.weight_decay if index in self._decayed_indices else 0.0

        learning_rate = ops.cast(learning_rate, "float32")
        trust_ratio = 1.0
        if index in self._adapted_indices:
            trust_ratio, usable = self._trust_ratio(gradient, variable, decay)
            if self.larc_clip:
                learning_rate = ops.where(
                    usable, ops.minimum(trust_ratio, learning_rate), learning_rate
                )
            else:
                learning_rate = learning_rate * trust_ratio
        if self._trust_ratios:
            self.assign(self._trust_ratios[index], trust_ratio)
        learning_rate = ops.cast(learning_rate, dtype)

        gradient = ops.cast(gradient, dtype)
        if decay:
            gradient = ops.add(gradient, ops.multiply(ops.cast(decay, dtype), variable))
        step = ops.multiply(learning_rate, gradient)

        if not self.momentums:
            self.assign_sub(variable, step)
            return
        velocity = self.momentums[index]
        momentum = ops.cast(self.momentum, dtype)
        self.assign(velocity, ops.add(ops.multiply(momentum, velocity), step))
        if self.nesterov:
            self.assign_sub(variable, ops.add(ops.multiply(momentum, velocity), step))
        else:
            self.assign_sub(variable, velocity)

    def _trust_ratio(self, gradient, variable, decay):
        """`λ` as a float32 scalar (1 where a norm is zero), and whether the
        norms were usable."""
        weights = ops.cast(variable, "float32")
        gradient = ops.cast(gradient, "float32")
        weight_norm = _norm(weights)
        if self.trust_ratio_denominator == SUM_OF_NORMS:
            gradient_norm = _norm(gradient)
            denominator = gradient_norm + decay * weight_norm + self.epsilon
        else:
            gradient_norm = _norm(gradient + decay * weights)
            denominator = gradient_norm + self.epsilon
        usable = ops.logical_and(weight_norm > 0, gradient_norm > 0)
        # The `where` on the denominator keeps 0/0 out of the unused branch.
        ratio = (self.trust_coefficient * weight_norm) / ops.where(usable, denominator, 1.0)
        return ops.where(usable, ratio, 1.0), usable

    def trust_ratios(self):
        """`{variable.path: λ}` of each variable's last update, as floats; 1.0
        for variables excluded from adaptation, 0.0 before the first update.

        Needs `track_trust_ratios=True` and a built optimizer.
        """
        if not self.track_trust_ratios:
            raise ValueError("`trust_ratios()` needs `LARS(..., track_trust_ratios=True)`.")
        if not self.built:
            raise ValueError("`trust_ratios()` needs a built optimizer (after the first step).")
        return {
            path: float(ops.convert_to_numpy(ratio))
            for path, ratio in zip(self._variable_paths, self._trust_ratios)
        }

    def _apply_weight_decay(self, variables):
        # The base class would apply decoupled (AdamW-style) decay before
        # `update_step`; LARS couples the decay into the gradient instead.
        pass

    def _is_excluded(self, variable, excluded_keys, patterns):
        if self._var_key(variable) in excluded_keys:
            return True
        path = _variable_path(variable)
        return any(re.search(p, path) for p in patterns)

    def _check_not_built(self, method):
        if self.built:
            raise ValueError(
                f"`{method}()` can only be called before the optimizer is "
                "built (before the first training step)."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "trust_coefficient": self.trust_coefficient,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "trust_ratio_denominator": self.trust_ratio_denominator,
                "larc_clip": self.larc_clip,
                "track_trust_ratios": self.track_trust_ratios,
                "weight_decay_exclude_patterns": list(self.weight_decay_exclude_patterns),
                "adaptation_exclude_patterns": list(self.adaptation_exclude_patterns),
            }
        )
        return config


def _densify(gradient, shape):
    """A dense gradient; `tf.IndexedSlices` (Embedding gradients on TensorFlow)
    are scattered with repeated indices summed. The norm needs the true
    gradient, and the decay term makes the update dense anyway."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            indices = ops.expand_dims(gradient.indices, -1)
            return ops.scatter(indices, gradient.values, shape)
    return gradient


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


def _variable_path(variable):
    path = getattr(variable, "path", None)
    if path is None:  # A raw backend variable: "dense/bias:0" -> "dense/bias".
        path = re.sub(r":\d+$", "", variable.name)
    return path


def _check_patterns(name, patterns):
    if isinstance(patterns, str):
        raise ValueError(
            f"`{name}` must be a list of regular expressions, not a single "
            f"string. Received: {name}={patterns!r}"
        )
    patterns = tuple(patterns or ())
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"`{name}` holds an invalid regular expression {pattern!r}: {error}"
            ) from None
    return patterns
