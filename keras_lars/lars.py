"""LARS: Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017)."""

import numbers
import re
import warnings
from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from keras_lars import _keras_internals
from keras_lars._validation import check_bool
from keras_lars._validation import check_integer
from keras_lars._validation import check_number

# Leaf names of the trainable variables of Keras's bias and normalisation
# weights: Dense/Conv `bias`; BatchNormalization, LayerNormalization and
# GroupNormalization `gamma` and `beta`; RMSNormalization `scale`. Searched
# (`re.search`) in `variable.path`, e.g. "model/dense/bias".
DEFAULT_EXCLUDE_PATTERNS = (r"(^|/)(bias|gamma|beta|scale)$",)

SUM_OF_NORMS = "sum_of_norms"
NORM_OF_SUM = "norm_of_sum"
_DENOMINATORS = (SUM_OF_NORMS, NORM_OF_SUM)

# Variable dtypes whose update runs as TensorFlow's fused momentum kernel
# (`LARS._tensorflow_update_step`) on that backend; others take the generic
# `keras.ops` path, with its float32 (float64) arithmetic.
TENSORFLOW_KERNEL_DTYPES = ("float32",)


class Rates(NamedTuple):
    """The rule's scalars for one variable (or vectors, one entry per
    variable), as `LARS.variable_rates` returns them."""

    decay: Any  # β: `weight_decay`, or 0 where the variable is not decayed
    trust_ratio: Any  # λ: 1 where not adapted or where a norm is zero
    buffer_rate: Any  # ρ: v ← m·v + ρ·g̃ (without momentum, w ← w − ρ·g̃)
    buffer_scale: Any  # s: w ← w − s·v; None for 1 (the paper's form)


@keras.saving.register_keras_serializable(package="keras_lars")
class LARS(_keras_internals.Optimizer):
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
    TensorFlow and JAX implementation; `learning_rate_outside_momentum=True`
    moves it outside, as PyTorch does (below). No Python branch depends on a
    tensor value, so the step compiles under XLA and on TPUs. Each variable's
    `β`, `λ` and rates come from one method, `variable_rates`, on every path:
    `update_step` in `keras.ops`, TensorFlow's fused momentum kernel for
    float32 variables, and PyTorch's multi-tensor step.

    Precision. The norms and the step (`γ·λ·g̃`, or `γ·u`) are formed in
    float32 (float64 for float64 variables), so float16 and bfloat16 variables
    neither overflow in the norms nor lose a small `γ·λ` to underflow before
    it meets `g̃`. The momentum buffer has the variable's dtype (as in Keras's
    optimizers), so with low-precision variables and momentum, `v` (or `u`)
    is rounded to that dtype each step; mixed-precision policies keep float32
    variables and avoid it.

    Variants, each an explicit argument:

    - `trust_ratio_denominator="norm_of_sum"`: `λ = η·‖w‖ / (‖g + β·w‖ + ε)`,
      as in `optax.lars`, TF Model Garden and SimCLR (λ = 1 if ‖w‖ = 0 or
      ‖g + β·w‖ = 0). It never gives a smaller ratio; both agree when β = 0.
    - `larc_clip=True`: LARC's "clip" mode (apex `LARC(clip=True)`,
      OpenSeq2Seq `larc_mode="clip"`): the local rate is `min(λ, γ)` instead of
      `γ·λ`, so adaptation can only lower the global rate.
    - `nesterov=True`: Nesterov momentum.
    - `learning_rate_outside_momentum=True`: the global rate multiplies the
      momentum buffer instead of entering it, as in PyTorch's SGD, timm's
      `Lars` and apex's `LARC`:

      ```
      u = m·u + λ·g̃
      w = w − γ·u                                    (nesterov: w = w − γ·(m·u + λ·g̃))
      ```

      In general the buffer accumulates the step divided by `γ`,
      `u = m·u + (r/γ)·g̃`, with `r` the local rate: `γ·λ`; `γ` for a
      variable excluded from adaptation (`u = m·u + g̃`); `min(λ, γ)` with
      `larc_clip`, so `min(λ/γ, 1)`, apex's LARC, taken as 1 at `γ = 0` (its
      limit: the buffer takes `g̃`, and `w` does not move). With a constant
      `γ` the two forms are the same rule (`v = γ·u`); they differ whenever
      `γ` changes, i.e. every step of a warm-up or decay. The rate-outside
      form is the paper's form with *momentum correction* (Goyal et al.
      2017, §2.2; NVIDIA's MLPerf LARS), which rescales `v` by `γ_t/γ_{t−1}`
      before each step, but it never divides by `γ_{t−1}`: at the start of a
      warm-up from `γ_0 = 0` that rescale is `γ_1/0`, while here the buffer
      holds the gradients of the steps taken at `γ = 0` (the paper's form
      holds zero there). Without momentum the two forms coincide. The
      momentum slot holds `u` instead of `v`, so a saved state must be resumed
      with the form it was saved with.

    Exclusions: two independent masks, one for weight decay (excluded
    variables use `β = 0` in the update and the ratio) and one for layer
    adaptation (excluded variables use `λ = 1`: plain momentum SGD at the
    global rate). A variable is excluded when its `path` matches one of the
    `*_exclude_patterns`, when its rank is at most `*_exclude_max_rank`, or
    when it was excluded by object with `exclude_from_weight_decay(var_list=)`
    or `exclude_from_layer_adaptation(var_list=)`. The default patterns
    (`DEFAULT_EXCLUDE_PATTERNS`) exclude the biases and normalisation scales
    and offsets of every Keras layer from both, as the TF and MLPerf
    reference code does; `*_exclude_max_rank=1` covers custom layers too,
    whatever their variables are called (timm's and big_vision's rule).
    `exclusions()` shows the result once the optimizer is built.
    Exclusions by object are saved by position in the variable list the
    optimizer was built with (`*_exclude_indices` in `get_config`), which,
    unlike a variable's path, survives `keras.models.load_model`. Each
    position's path is saved beside it (`*_exclude_index_paths`), and a build
    refuses (ValueError) a position whose variable has another path, e.g. a
    config reused with a model that has one more layer in front. Two paths
    agree when one ends the other, since `load_model` drops the names of the
    models around a layer (`net/dense/kernel` loads as `dense/kernel`). A
    custom layer whose config does not keep its name (its `__init__` takes
    neither `name` nor `**kwargs`) may be renamed on loading, and positions
    inside it are refused: give such layers `**kwargs`.

    The trade-off: excluded variables move with the raw global rate, which in
    LARS recipes is 10 to 30; the authors' own Caffe code adapted every
    variable. Adapting biases is not free either: a zero-initialised bias has
    ‖w‖ = 0, so λ = 1 and it moves with the full global rate on its first step.
    To adapt biases but still skip their decay, pass
    `adaptation_exclude_patterns=()`.

    Gradient accumulation. With `gradient_accumulation_steps=k`, a learning
    rate schedule is evaluated at the number of *updates*, `iterations // k`,
    not at Keras's micro-step counter: large-batch users accumulate to
    emulate a k-times larger batch, whose warm-up and decay are counted in
    updates. (Keras's own optimizers pass the micro-step counter.)

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
        weight_decay: `β`, the coupled L2 weight decay, a float >= 0 (`None`
            means 0). It enters both the update and the trust ratio; the base
            class's decoupled decay is not applied. Defaults to `5e-4` (the
            paper's value).
        trust_coefficient: `η`, a float > 0. Defaults to `0.001`.
        epsilon: `ε`, a float >= 0 added to the ratio's denominator. Defaults to
            `0.0`, and 0 means 0.
        nesterov: Whether to use Nesterov momentum (needs `momentum > 0`).
            Defaults to `False`.
        trust_ratio_denominator: `"sum_of_norms"` (the paper's
            `‖g‖ + β‖w‖ + ε`) or `"norm_of_sum"` (`‖g + βw‖ + ε`). Defaults to
            `"sum_of_norms"`.
        larc_clip: Whether to cap the local rate at the global rate (LARC's clip
            mode). Defaults to `False`.
        learning_rate_outside_momentum: Whether the global rate `γ` multiplies
            the momentum buffer (`u = m·u + λ·g̃; w = w − γ·u`, PyTorch's and
            timm's form) instead of entering it (the paper's form). Defaults to
            `False`.
        weight_decay_exclude_patterns: Regular expressions; variables whose path
            matches one are not decayed. Defaults to `DEFAULT_EXCLUDE_PATTERNS`.
        adaptation_exclude_patterns: Regular expressions; variables whose path
            matches one get `λ = 1`. Defaults to `DEFAULT_EXCLUDE_PATTERNS`.
        weight_decay_exclude_max_rank: `None`, or an int; variables of at most
            this rank are not decayed. Defaults to `None`.
        adaptation_exclude_max_rank: `None`, or an int; variables of at most
            this rank get `λ = 1`. Defaults to `None`.
        weight_decay_exclude_indices: Positions, in the list of variables the
            optimizer is built with, of variables that are not decayed.
            `get_config` writes exclusions by object this way. Defaults to `()`.
        adaptation_exclude_indices: The same, for layer adaptation. Defaults to
            `()`.
        weight_decay_exclude_index_paths: The path of the variable at each of
            `weight_decay_exclude_indices`, in the same order, as `get_config`
            writes them; `build` refuses a position whose variable's path
            differs. Defaults to `()`.
        adaptation_exclude_index_paths: The same, for
            `adaptation_exclude_indices`. Defaults to `()`.
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

    # The decay is coupled into the gradient (and the trust ratio) instead.
    decoupled_weight_decay = False

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
        learning_rate_outside_momentum=False,
        weight_decay_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        adaptation_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        weight_decay_exclude_max_rank=None,
        adaptation_exclude_max_rank=None,
        weight_decay_exclude_indices=(),
        adaptation_exclude_indices=(),
        weight_decay_exclude_index_paths=(),
        adaptation_exclude_index_paths=(),
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
        weight_decay = 0.0 if weight_decay is None else weight_decay  # Keras's "off"
        check_number("momentum", momentum, low=0.0, high=1.0)
        check_number("weight_decay", weight_decay, low=0.0)
        check_number("epsilon", epsilon, low=0.0)
        check_number("trust_coefficient", trust_coefficient, low=0.0, low_inclusive=False)
        for arg, flag in (
            ("nesterov", nesterov),
            ("larc_clip", larc_clip),
            ("learning_rate_outside_momentum", learning_rate_outside_momentum),
            ("track_trust_ratios", track_trust_ratios),
        ):
            check_bool(arg, flag)
        if trust_ratio_denominator not in _DENOMINATORS:
            raise ValueError(
                f"`trust_ratio_denominator` must be one of {_DENOMINATORS}. "
                f"Received: trust_ratio_denominator={trust_ratio_denominator!r}"
            )
        if nesterov and momentum == 0:
            raise ValueError(
                "`nesterov` needs `momentum` > 0: Nesterov momentum without "
                "momentum is plain SGD. Received: nesterov=True, momentum=0"
            )
        for arg, rank in (
            ("weight_decay_exclude_max_rank", weight_decay_exclude_max_rank),
            ("adaptation_exclude_max_rank", adaptation_exclude_max_rank),
        ):
            if rank is not None:
                check_integer(arg, rank, low=0)
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
        self.nesterov = nesterov
        self.trust_ratio_denominator = trust_ratio_denominator
        self.larc_clip = larc_clip
        self.learning_rate_outside_momentum = learning_rate_outside_momentum
        self.track_trust_ratios = track_trust_ratios
        self._weight_decay_mask = _ExclusionRule(
            "weight_decay",
            weight_decay_exclude_patterns,
            weight_decay_exclude_max_rank,
            weight_decay_exclude_indices,
            weight_decay_exclude_index_paths,
        )
        self._adaptation_mask = _ExclusionRule(
            "adaptation",
            adaptation_exclude_patterns,
            adaptation_exclude_max_rank,
            adaptation_exclude_indices,
            adaptation_exclude_index_paths,
        )

    # --- Exclusions -------------------------------------------------------------

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Excludes variables from weight decay (adds to the exclusions); call
        before the optimizer is built.

        Args:
            var_list: Variables to exclude, by object. Saved by their position
                in the optimizer's variable list (see the class docstring).
            var_names: Regular expressions, searched in each variable's `path`
                (Keras's base optimizer searches them in `name`).
        """
        self._check_not_built("exclude_from_weight_decay")
        self._weight_decay_mask.add(self, var_list, var_names)

    def exclude_from_layer_adaptation(self, var_list=None, var_names=None):
        """Excludes variables from layer adaptation (they get `λ = 1`); call
        before the optimizer is built. Arguments as `exclude_from_weight_decay`.
        """
        self._check_not_built("exclude_from_layer_adaptation")
        self._adaptation_mask.add(self, var_list, var_names)

    def exclusions(self):
        """`{variable.path: {"weight_decay": bool, "adaptation": bool}}`, True
        where the variable is decayed / adapted, for the variables the
        optimizer was built with. (After `keras.models.load_model`, Keras can
        give two variables of nested models one path; the later one is then
        keyed "path#index".)"""
        if not self.built:
            raise ValueError(
                "`exclusions()` needs a built optimizer: call "
                "`optimizer.build(model.trainable_variables)` or train a step first."
            )
        return {
            key: {
                "weight_decay": index in self._decayed_indices,
                "adaptation": index in self._adapted_indices,
            }
            for index, key in enumerate(self._keys())
        }

    def _keys(self):
        """Variable paths, made unique with "#index" where Keras repeats one."""
        keys = []
        for index, path in enumerate(self._variable_paths):
            keys.append(path if path not in keys else f"{path}#{index}")
        return keys

    # --- Building and updating --------------------------------------------------

    def build(self, variables):
        if self.built:
            return
        # Treatment is decided here (before the base class marks the optimizer
        # built, so that a bad exclusion leaves it unbuilt): inside
        # `update_step` the TensorFlow backend passes raw (possibly
        # per-replica) tf.Variables without `path`. Frozensets, because TF's
        # tracking wraps lists and dicts.
        decay_excluded = self._weight_decay_mask.resolve(self, variables)
        adaptation_excluded = self._adaptation_mask.resolve(self, variables)
        super().build(variables)
        self._variable_paths = tuple(_variable_path(v) for v in variables)
        self._decayed_indices = frozenset(
            i for i in range(len(variables)) if self.weight_decay > 0 and i not in decay_excluded
        )
        self._adapted_indices = frozenset(
            i for i in range(len(variables)) if i not in adaptation_excluded
        )
        self.momentums = []
        if self.momentum > 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
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
        """The update of one variable, in `keras.ops`: the rule of the class
        docstring, with the scalars of `variable_rates`."""
        index = self.variable_index(variable)
        gradient = _densify(gradient, variable.shape)
        dtype = keras.backend.standardize_dtype(variable.dtype)
        if keras.backend.backend() == "tensorflow" and dtype in TENSORFLOW_KERNEL_DTYPES:
            return self._tensorflow_update_step(index, gradient, variable, learning_rate)
        compute = "float64" if dtype == "float64" else "float32"
        weights = ops.cast(variable, compute)
        gradient = ops.cast(gradient, compute)
        learning_rate = ops.cast(learning_rate, compute)

        def norms(c):  # ‖w‖ and ‖g + c·w‖
            return _norm(weights), _norm(gradient + c * weights if c else gradient)

        rates = self.variable_rates(
            learning_rate, self.is_decayed(index), self.is_adapted(index), norms
        )
        self._record_trust_ratio(index, rates.trust_ratio)
        decayed_gradient = gradient + rates.decay * weights if rates.decay else gradient
        increment = rates.buffer_rate * decayed_gradient  # ρ·g̃
        velocity = self.momentum_slot(index)
        if velocity is None:  # without momentum: w ← w − ρ·g̃
            self.assign(variable, ops.cast(weights - increment, dtype))
            return
        new_velocity = self.momentum * ops.cast(velocity, compute) + increment
        self.assign(velocity, ops.cast(new_velocity, velocity.dtype))
        update = self.momentum * new_velocity + increment if self.nesterov else new_velocity
        if rates.buffer_scale is not None:
            update = rates.buffer_scale * update
        self.assign(variable, ops.cast(weights - update, dtype))

    def variable_rates(self, learning_rate, decayed, adapted, norms):
        """The rule's scalars for one variable, or for several at once: every
        path of `update_step` (this class's, the TensorFlow kernel's and the
        PyTorch multi-tensor one) takes them from here.

        Args:
            learning_rate: `γ` of this update, a scalar tensor.
            decayed: whether the variable is decayed: a bool, or a boolean
                vector with one entry per variable.
            adapted: whether it is adapted, likewise.
            norms: a function of `c` (0, or the `decay` below) returning
                `(‖w‖, ‖g + c·w‖)` (scalars, or vectors like `decayed`); called
                unless `adapted` is False.

        Returns:
            A `Rates`: the variable's `decay` `β`; its `trust_ratio` `λ`
            (1 when excluded from adaptation or when a norm is zero); the
            `buffer_rate` `ρ`, with which `g̃ = g + β·w` enters the momentum
            buffer (`v ← m·v + ρ·g̃`), and the `buffer_scale` `s`, the factor
            `w` moves by times the buffer (`w ← w − s·v`; Nesterov:
            `w ← w − s·(m·v + ρ·g̃)`): `s = γ` with the rate outside the
            buffer, and `None` (1) otherwise. Without momentum `w ← w − ρ·g̃`.
            The local rate `r` is `γ·λ`, or `min(λ, γ)` with LARC's clip; `ρ`
            is `r`, or `r/γ` with the rate outside the buffer (1 at `γ = 0`,
            the limit).
        """
        decay = self.weight_decay * decayed  # β, or 0 where not decayed
        outside = self._rate_outside_buffer
        buffer_scale = learning_rate if outside else None
        unadapted_rate = ops.ones_like(learning_rate) if outside else learning_rate  # λ = 1
        if adapted is False:
            return Rates(decay, 1.0, unadapted_rate, buffer_scale)
        sum_of_norms = self.trust_ratio_denominator == SUM_OF_NORMS
        weight_norm, gradient_norm = norms(0.0 if sum_of_norms else decay)
        if sum_of_norms:
            denominator = gradient_norm + decay * weight_norm + self.epsilon
        else:
            denominator = gradient_norm + self.epsilon
        usable = ops.logical_and(weight_norm > 0, gradient_norm > 0)
        if adapted is not True:
            usable = ops.logical_and(usable, adapted)
        # Each inner `where` keeps 0/0 out of the branch the outer one discards.
        trust_ratio = ops.where(
            usable,
            self.trust_coefficient * weight_norm / ops.where(usable, denominator, 1.0),
            1.0,
        )
        if not self.larc_clip:  # r = γ·λ
            buffer_rate = trust_ratio if outside else learning_rate * trust_ratio
            return Rates(decay, trust_ratio, buffer_rate, buffer_scale)
        clipped = ops.minimum(trust_ratio, learning_rate)  # r = min(λ, γ)
        if outside:
            # r/γ = min(λ/γ, 1) (apex's LARC), whose limit as γ → 0 is 1: at
            # γ = 0 the buffer takes g̃ and nothing moves.
            positive = learning_rate > 0
            clipped = ops.where(positive, clipped / ops.where(positive, learning_rate, 1.0), 1.0)
        return Rates(decay, trust_ratio, ops.where(usable, clipped, unadapted_rate), buffer_scale)

    @property
    def _rate_outside_buffer(self):
        """Whether `γ` multiplies the buffer rather than entering it. Without
        momentum both forms are one rule, run as the paper's."""
        return self.learning_rate_outside_momentum and self.momentum > 0

    # --- Per-variable state, as every update path reads it ----------------------

    def variable_index(self, variable):
        """`variable`'s position in the list the optimizer was built with."""
        return _keras_internals.variable_index(self, variable)

    def is_decayed(self, index):
        """Whether the variable at `index` is decayed (`β > 0` and not excluded)."""
        return index in self._decayed_indices

    def is_adapted(self, index):
        """Whether the variable at `index` is adapted (not excluded)."""
        return index in self._adapted_indices

    def momentum_slot(self, index):
        """The momentum buffer of the variable at `index`; None without momentum."""
        return self.momentums[index] if self.momentums else None

    def trust_ratio_slot(self, index):
        """The float32 variable holding the last `λ` of the variable at
        `index`; None unless `track_trust_ratios`."""
        return self._trust_ratios[index] if self._trust_ratios else None

    def _record_trust_ratio(self, index, trust_ratio):
        slot = self.trust_ratio_slot(index)
        if slot is not None:
            self.assign(slot, ops.cast(trust_ratio, "float32"))

    # --- Backend fast paths: the same rule with fused kernels --------------------

    def _tensorflow_update_step(self, index, gradient, variable, learning_rate):
        """`update_step` for float32 variables on TensorFlow, where every op is
        dispatched and every intermediate tensor materialised: norms by
        `tf.nn.l2_loss` (‖x‖ = √(2·l2_loss(x)), no squared copy), and the
        momentum update by one `ResourceApplyMomentum` kernel,
        `v ← m·v + increment; w ← w − lr·v` (Nesterov:
        `w ← w − lr·(m·v + increment)`), with `increment = ρ·g̃` and
        `lr = s` (1 when `s` is None)."""
        import tensorflow as tf

        learning_rate = tf.cast(learning_rate, tf.float32)

        def norms(c):  # ‖w‖ and ‖g + c·w‖
            return _l2_norm(variable), _l2_norm(gradient + c * variable if c else gradient)

        rates = self.variable_rates(
            learning_rate, self.is_decayed(index), self.is_adapted(index), norms
        )
        self._record_trust_ratio(index, rates.trust_ratio)
        decayed_gradient = gradient + rates.decay * variable if rates.decay else gradient
        increment = rates.buffer_rate * decayed_gradient
        velocity = self.momentum_slot(index)
        if velocity is None:
            variable.assign_sub(increment)
            return
        velocity = velocity.value if isinstance(velocity, keras.Variable) else velocity
        tf.raw_ops.ResourceApplyMomentum(
            var=variable.handle,
            accum=velocity.handle,
            lr=tf.constant(1.0) if rates.buffer_scale is None else rates.buffer_scale,
            grad=increment,
            momentum=tf.constant(self.momentum),
            use_nesterov=self.nesterov,
        )

    def _update_all(self, grads, variables, learning_rate):
        if keras.backend.backend() == "torch":
            from keras_lars import _torch_lars  # imports torch: only on that backend

            if _torch_lars.handles(variables):
                return _torch_lars.update_all(self, grads, variables, learning_rate)
        return super()._update_all(grads, variables, learning_rate)

    def _current_learning_rate(self):
        # A schedule counts updates, not Keras's micro-steps (class docstring):
        # the public `iterations` is `micro-steps // gradient_accumulation_steps`.
        schedule = _keras_internals.given_learning_rate(self)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return schedule(self.iterations)
        return super()._current_learning_rate()

    def trust_ratios(self, paths=None):
        """`{variable.path: λ}` of each variable's last update, as floats; 1.0
        for variables excluded from adaptation, 0.0 before the first update
        (keys as in `exclusions()`). With `paths`, only those are read from
        the devices (one read each).

        Needs `track_trust_ratios=True` and a built optimizer.
        """
        if not self.track_trust_ratios:
            raise ValueError("`trust_ratios()` needs `LARS(..., track_trust_ratios=True)`.")
        if not self.built:
            raise ValueError("`trust_ratios()` needs a built optimizer (after the first step).")
        ratios = dict(zip(self._keys(), self._trust_ratios))
        if paths is not None:
            unknown = [path for path in paths if path not in ratios]
            if unknown:
                raise ValueError(
                    f"`paths` names no variable of this optimizer: {unknown}. "
                    f"Received: paths={paths}"
                )
            ratios = {path: ratios[path] for path in paths}
        return {key: float(ops.convert_to_numpy(ratio)) for key, ratio in ratios.items()}

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
                "learning_rate_outside_momentum": self.learning_rate_outside_momentum,
                "track_trust_ratios": self.track_trust_ratios,
                **self._weight_decay_mask.config(self),
                **self._adaptation_mask.config(self),
            }
        )
        return config


_EXCLUSION_METHODS = {
    "weight_decay": "exclude_from_weight_decay",
    "adaptation": "exclude_from_layer_adaptation",
}


class _ExclusionRule:
    """Which variables one mask (weight decay or adaptation) leaves out: path
    patterns, a maximum rank, positions (with the paths they had when saved),
    and variables given by object."""

    def __init__(self, mask, patterns, max_rank, indices, index_paths):
        self.mask = mask
        self.patterns = _check_patterns(f"{mask}_exclude_patterns", patterns)
        self.max_rank = max_rank
        self.indices = _check_indices(f"{mask}_exclude_indices", indices)
        # position -> the path its variable had when the config was written
        self.index_paths = _check_index_paths(
            f"{mask}_exclude_index_paths", index_paths, self.indices
        )
        self.object_keys = set()  # variables given by object, until built
        self.resolved = frozenset()  # their positions, once built
        self.built_paths = None  # every position's path, once built

    def add(self, optimizer, var_list, var_names):
        self.object_keys.update(_keras_internals.var_key(optimizer, v) for v in var_list or ())
        self.patterns += _check_patterns("var_names", var_names)

    def resolve(self, optimizer, variables):
        """The positions in `variables` this rule excludes."""
        keys = [_keras_internals.var_key(optimizer, v) for v in variables]
        unknown = self.object_keys - set(keys)
        if unknown:
            warnings.warn(
                f"LARS: {len(unknown)} variable(s) excluded from {self.mask} by object are "
                "not among the variables the optimizer is built with; the exclusion "
                "does nothing for them.",
                stacklevel=3,
            )
        out_of_range = [i for i in self.indices if i >= len(variables)]
        if out_of_range:
            raise ValueError(
                f"`{self.mask}_exclude_indices` has positions {out_of_range} beyond the "
                f"{len(variables)} variables the optimizer is built with."
            )
        paths = [_variable_path(v) for v in variables]
        self._check_positions_hold_their_variables(paths)
        self.resolved = frozenset(i for i, key in enumerate(keys) if key in self.object_keys)
        self.built_paths = paths
        return frozenset(
            i
            for i, variable in enumerate(variables)
            if i in self.indices
            or i in self.resolved
            or (self.max_rank is not None and len(variable.shape) <= self.max_rank)
            or any(re.search(p, paths[i]) for p in self.patterns)
        )

    def _check_positions_hold_their_variables(self, paths):
        # Refused, not warned about: a shifted position silently decays or
        # adapts the wrong variables, and a warning scrolls past in a log.
        moved = [
            f"position {i}: saved for '{saved}', now '{paths[i]}'"
            for i, saved in sorted(self.index_paths.items())
            if not _same_variable_path(saved, paths[i])
        ]
        if moved:
            raise ValueError(
                f"`{self.mask}_exclude_indices` name other variables than the ones they "
                f"were saved for ({'; '.join(moved)}). The model differs from the one the "
                "exclusion was made for (a layer added or removed before them?). Exclude "
                f"by pattern, or by object with `{_EXCLUSION_METHODS[self.mask]}(var_list=...)` "
                "on this model. If the variables are the same and only renamed (a layer "
                "whose config does not keep its name is renamed by `load_model`), give "
                "that layer's `__init__` `**kwargs`, or correct the paths in "
                f"`{self.mask}_exclude_index_paths`."
            )

    def config(self, optimizer):
        if self.object_keys and not optimizer.built:
            warnings.warn(
                f"LARS.get_config(): {len(self.object_keys)} variable(s) excluded from "
                f"{self.mask} by object are not in this config, because the optimizer is not "
                "built yet and their positions are unknown. Build it first "
                "(`optimizer.build(model.trainable_variables)`), or exclude by pattern.",
                stacklevel=4,
            )
        indices = sorted(set(self.indices) | self.resolved)
        known = self.index_paths if self.built_paths is None else self.built_paths
        paths = [known[i] for i in indices]
        return {
            f"{self.mask}_exclude_patterns": list(self.patterns),
            f"{self.mask}_exclude_max_rank": self.max_rank,
            f"{self.mask}_exclude_indices": indices,
            f"{self.mask}_exclude_index_paths": paths,
        }


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


def _l2_norm(x):
    """‖x‖ on TensorFlow in one pass: l2_loss is Σx²/2, an exact float32
    reduction without a squared copy of x."""
    import tensorflow as tf

    return tf.sqrt(2.0 * tf.nn.l2_loss(x))


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


def _same_variable_path(saved, current):
    """Whether two paths name the same variable, allowing for the rename Keras
    makes: `load_model` drops the names of the models around a layer (a
    Sequential's `net/dense/kernel` and a nested model's
    `outer/inner/dense/kernel` load as `dense/kernel`), and a model built in
    code has them. So one path's components must end the other's."""
    shorter, longer = sorted((saved.split("/"), current.split("/")), key=len)
    return longer[len(longer) - len(shorter) :] == shorter


def _check_index_paths(name, paths, indices):
    """`{position: path}` from the `*_exclude_index_paths` argument."""
    if paths is None or isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
        raise ValueError(
            f"`{name}` must be a list of variable paths (strings). Received: {name}={paths!r}"
        )
    paths = list(paths)
    if len(paths) != len(indices):
        raise ValueError(
            f"`{name}` must hold one path per excluded position: {len(indices)} "
            f"position(s), {len(paths)} path(s). Received: {name}={paths!r}"
        )
    return dict(zip(indices, paths))


def _check_indices(name, indices):
    indices = tuple(indices or ())
    for index in indices:
        check_integer(name, index, low=0)
    return indices
