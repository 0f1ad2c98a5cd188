"""One custom training loop for every tf.distribute strategy.

`model.fit` is not used: under MirroredStrategy with several replicas it fails
with `steps_per_execution > 1` (keras #19246) and under
MultiWorkerMirroredStrategy it fails outright (keras #20585). Like the MLPerf
TF2 reference, `Trainer.train(iterator, steps)` runs `steps` steps in one
`tf.function` call (a `tf.range` loop of `strategy.run`), which is what keeps
TPUs busy, and the host reads the loop's results once, after it:

- nothing in the loop depends on a value read back from the devices: each
  replica sums its loss and accuracy counts into variables of its own
  (synchronised on read), and the first step whose loss is not finite is
  found on the devices (the loss is all-reduced, so every replica agrees);
- with `jit_compile=True`, each replica's forward and backward pass (every
  micro-batch of it) is one XLA computation, as in the MLPerf TF2 reference
  on GPUs; the all-reduce runs outside it (TensorFlow cannot compile the
  cross-replica part on GPUs and CPUs; a TPUStrategy compiles all of it
  anyway);
- with `compile_optimizer=True`, the update after the all-reduce (LARS's
  norms, rates and momentum step for every variable, the learning-rate
  schedule, the loss-scale bookkeeping of float16) is one XLA computation on
  each replica, instead of a few small kernels per variable. The loop then
  all-reduces the gradients itself and hands each replica's copy of the sum
  to that computation, inside the update context of the replica's device
  (`strategy.extended.update`), so that it reads and writes only that
  replica's variables: XLA never sees a mirrored variable from another
  device (the failure of keras #19005 in a compiled `strategy.run`);
- with `allreduce_dtype=tf.bfloat16`, the gradients cross the replicas in
  bfloat16 (half of float32's bytes) and are cast back to their variables'
  dtype before the update, as Google's MLPerf TPU code does
  (`use_bf16_allreduce`).

The loss is the sum of the per-example cross-entropies divided by the global
batch, so the all-reduced (summed) gradient is the global batch's mean
gradient whatever the number of replicas. There is no L2 term: LARS decays
inside its update. With `accumulation_steps=k`, each replica splits its batch
into k micro-batches and sums their gradients before the single update, so the
optimizer (and its schedule) counts updates, not micro-batches.

After a loop's last update the state it leaves is checked on the devices:
every variable finite, and the loss it gives on the loop's last micro-batch
finite (training mode, nothing updated). A state that fails is never
checkpointed.

float16. Keras's LossScaleOptimizer decides whether to skip a step from
replica 0's local gradients (`loss_scale_optimizer.py`: it assumes they are
all-reduced already). Here an overflow on any replica makes every replica's
gradients non-finite first, so the step is skipped and the scale lowered
everywhere. (When the loop all-reduces the gradients itself, the check
follows the all-reduce, whose sum is non-finite on every replica if any
replica's gradients are.)
"""

import keras
import tensorflow as tf

import keras_lars

from .. import optimization
from . import batching
from .runner import Evaluation
from .runner import LoopResult

SUM = tf.distribute.ReduceOp.SUM
ON_READ = tf.VariableSynchronization.ON_READ


class Trainer:
    """Compiled training and evaluation loops for a model under a strategy.

    Create it, like the model and optimizer, inside `strategy.scope()`.
    `synthetic=(image_size, num_classes)` makes each replica draw random
    batches on its device instead of reading an iterator.
    `compile_optimizer` compiles each replica's update after the all-reduce
    with XLA; `allreduce_dtype` ("float32" or "bfloat16") is the dtype the
    gradients are all-reduced in. Either makes the loop all-reduce and
    update itself rather than through `optimizer.apply_gradients` (see
    `_check_explicit_update` for the optimizer features that path supports).
    """

    def __init__(
        self,
        strategy,
        model,
        optimizer,
        *,
        global_batch_size,
        label_smoothing=0.0,
        accumulation_steps=1,
        jit_compile=False,
        synthetic=None,
        compile_optimizer=False,
        allreduce_dtype="float32",
    ):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.global_batch_size = global_batch_size
        self.label_smoothing = label_smoothing
        self.accumulation_steps = accumulation_steps
        self.synthetic = synthetic
        self.num_classes = model.output.shape[-1]
        self.per_replica_batch = global_batch_size // strategy.num_replicas_in_sync
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if not optimizer.built:  # its variables must not be created inside the loop
            optimizer.build(model.trainable_variables)
        # Keras 3 creates BN moving statistics with aggregation "none": each
        # replica updates its own copy (tests/test_tensorflow.py pins this).
        # Averaging them after every loop is what a "mean" aggregation would
        # give (the moving averages are linear in the batch statistics). They
        # are the model's float non-trainable variables (Dropout's seed
        # state is an integer, and the same on every replica).
        self._float_non_trainables = [
            v for v in model.non_trainable_variables if "float" in str(v.dtype)
        ]
        self._checked_state = [
            v
            for v in [*model.variables, *optimizer.variables]
            if "float" in str(v.dtype) and "seed" not in v.path
        ]
        # Each replica's own running sums for the current loop; reading one
        # outside the replicas sums it over all of them. [loss, top-1 hits,
        # top-5 hits, examples] and [the last batch's loss under the final
        # state, non-finite variables].
        self._totals = _replica_sums([4])
        self._final_state = _replica_sums([2])
        # The loop's first step whose (all-reduced) loss is not finite, or
        # -1: the same on every replica, read from the first.
        self._first_non_finite = tf.Variable(
            -1,
            trainable=False,
            synchronization=ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        # Set (from any thread) to end the loop after the step under way.
        with tf.init_scope(), tf.device("/cpu:0"):
            self._stop = tf.Variable(False, trainable=False, name="stop_requested")
        self._several_workers = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self._gradients = tf.function(self._gradients, jit_compile=jit_compile)
        self._final_loss = tf.function(self._final_loss, jit_compile=jit_compile)
        self._eval_counts = tf.function(self._eval_counts, jit_compile=jit_compile)
        self.compile_optimizer = compile_optimizer
        self.allreduce_dtype = tf.as_dtype(allreduce_dtype)
        if self.allreduce_dtype not in (tf.float32, tf.bfloat16):
            raise ValueError(
                f"`allreduce_dtype` must be float32 or bfloat16. Received: {allreduce_dtype!r}"
            )
        # Keras's apply_gradients (all-reduce in float32, then each variable's
        # update op by op) unless asked otherwise.
        self._explicit_update = compile_optimizer or self.allreduce_dtype != tf.float32
        if self._explicit_update:
            _check_explicit_update(optimizer)
        # The update function of each replica's device (compiled: one XLA
        # computation each), made when the loop is traced.
        self._replica_updates = {}

    # --- Inside one replica --------------------------------------------------

    def _loss_and_counts(self, logits, labels):
        """Summed cross-entropy (/ global batch) and top-1 / top-5 hits."""
        one_hot = tf.one_hot(labels, self.num_classes)
        per_example = keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=self.label_smoothing
        )
        loss = tf.reduce_sum(per_example) / self.global_batch_size
        top1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
        top5 = tf.cast(tf.math.in_top_k(labels, logits, min(5, self.num_classes)), tf.float32)
        return loss, top1, top5

    def _micro_batch_gradients(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss, top1, top5 = self._loss_and_counts(logits, labels)
            scaled = self.optimizer.scale_loss(loss)  # float16: loss scaling
        gradients = tape.gradient(scaled, variables)
        return gradients, tf.stack([loss, tf.reduce_sum(top1), tf.reduce_sum(top5)])

    def _gradients(self, images, labels):
        """The replica's gradients and [loss, top-1 hits, top-5 hits] over its
        batch, micro-batch by micro-batch: with `jit_compile`, one XLA
        computation."""
        k = self.accumulation_steps
        if k == 1:
            return self._micro_batch_gradients(images, labels)
        micro = self.per_replica_batch // k
        images = tf.reshape(images, [k, micro, *images.shape[1:]])
        labels = tf.reshape(labels, [k, micro])
        gradients = [tf.zeros_like(v) for v in self.model.trainable_variables]
        counts = tf.zeros([3])
        for i in tf.range(k):
            micro_gradients, micro_counts = self._micro_batch_gradients(images[i], labels[i])
            gradients = [a + b for a, b in zip(gradients, micro_gradients)]
            counts += micro_counts
        return gradients, counts

    def _final_loss(self, images, labels):
        """The loss the current variables give on a batch, in training mode
        (batch statistics, dropout), with nothing updated."""
        logits, _ = self.model.stateless_call(
            [v.value for v in self.model.trainable_variables],
            [v.value for v in self.model.non_trainable_variables],
            images,
            training=True,
        )
        return self._loss_and_counts(logits, labels)[0]

    def _non_finite_variables(self):
        return tf.add_n(
            [
                tf.reduce_sum(tf.cast(~tf.math.is_finite(v.value), tf.float32))
                for v in self._checked_state
            ]
        )

    def _finite_everywhere(self, gradients):
        """The gradients, or, if any replica's are not finite, non-finite
        gradients on every replica (so that the LossScaleOptimizer, which
        looks at one replica's, skips the step everywhere)."""
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
        replica = tf.distribute.get_replica_context()
        any_non_finite = replica.all_reduce(SUM, 1.0 - tf.cast(finite, tf.float32)) > 0
        return tf.cond(
            any_non_finite,
            lambda: [g * tf.constant(float("nan"), g.dtype) for g in gradients],
            lambda: list(gradients),
        )

    def _replica_train_step(self, step, last, images=None, labels=None):
        if self.synthetic:
            size, classes = self.synthetic
            images, labels = batching.synthetic_batch(self.per_replica_batch, size, classes)
        gradients, counts = self._gradients(images, labels)
        if self._explicit_update:
            self._apply_all_reduced(self._all_reduce(gradients))
        else:
            if self.loss_scaled and self.strategy.num_replicas_in_sync > 1:
                gradients = self._finite_everywhere(gradients)
            self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        loss = tf.distribute.get_replica_context().all_reduce(SUM, counts[0])
        first = self._first_non_finite.read_value()
        self._first_non_finite.assign(
            tf.where(tf.logical_and(first < 0, ~tf.math.is_finite(loss)), step, first)
        )
        examples = tf.cast(self.per_replica_batch, tf.float32)
        self._totals.assign_add(tf.concat([counts, [examples]], 0))

        def check_final_state():
            # On the last micro-batch alone: a forward pass over the whole
            # replica batch could need k times the memory training needs.
            micro_images, micro_labels = self._last_micro_batch(images, labels)
            self._final_state.assign(
                tf.stack(
                    [self._final_loss(micro_images, micro_labels), self._non_finite_variables()]
                )
            )
            return tf.constant(True)

        tf.cond(last, check_final_state, lambda: tf.constant(False))

    def _all_reduce(self, gradients):
        """The sum of every replica's gradients, in `allreduce_dtype` (cast
        back by the update). One replica sends nothing and casts nothing."""
        if self.strategy.num_replicas_in_sync == 1:
            return list(gradients)
        wire = self.allreduce_dtype
        sent = [tf.cast(g, wire) if g.dtype.is_floating else g for g in gradients]
        return tf.distribute.get_replica_context().all_reduce(SUM, sent)

    def _apply_all_reduced(self, gradients):
        """Runs `_update_replica` on every replica's variables with its copy
        of the all-reduced gradients: from the cross-replica context, once
        per device, inside `strategy.extended.update`'s update context (the
        one Keras's own update runs in), where a mirrored variable means
        that device's copy of it."""
        anchor = self.optimizer.iterations.value  # any optimizer variable: names the devices

        def update_each_device(strategy, gradients):
            strategy.extended.update(anchor, self._update_on, args=(gradients,), group=False)

        tf.distribute.get_replica_context().merge_call(update_each_device, args=(gradients,))

    def _update_on(self, anchor, gradients):
        """`_update_replica` on the device of `anchor` (a replica's copy):
        one function per device, so that each is traced (and compiled) with
        its own replica's variables."""
        update = self._replica_updates.get(anchor.device)
        if update is None:
            update = tf.function(self._update_replica, jit_compile=self.compile_optimizer)
            self._replica_updates[anchor.device] = update
        return update(gradients)

    def _update_replica(self, gradients):
        """One replica's update from the all-reduced `gradients`: what
        `apply_gradients` does after its all-reduce, for the optimizers
        `_check_explicit_update` accepts. With a LossScaleOptimizer, the step
        is skipped and the scale halved if any gradient is not finite, else
        the gradients are unscaled, applied, and the scale doubled after
        `dynamic_growth_steps` finite steps (`loss_scale_optimizer.py`)."""
        variables = self.model.trainable_variables
        gradients = [tf.cast(g, v.dtype) for g, v in zip(gradients, variables)]
        if not self.loss_scaled:
            _apply_update(self.optimizer, gradients, variables)
            return tf.constant(True)
        scaled = self.optimizer
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])

        def finite_step():
            scale = scaled.dynamic_scale.value
            _apply_update(scaled.inner_optimizer, [g / scale for g in gradients], variables)
            counter = scaled.step_counter.value
            grow = tf.equal(counter, scaled.dynamic_growth_steps - 1)
            scaled.step_counter.assign(tf.where(grow, tf.zeros_like(counter), counter + 1))
            scaled.dynamic_scale.assign(tf.where(grow, scale * 2.0, scale))
            return tf.constant(True)

        def skipped_step():
            scaled.step_counter.assign(tf.zeros_like(scaled.step_counter.value))
            scaled.dynamic_scale.assign(scaled.dynamic_scale.value * 0.5)
            return tf.constant(False)

        return tf.cond(finite, finite_step, skipped_step)

    def _last_micro_batch(self, images, labels):
        micro = self.per_replica_batch // self.accumulation_steps
        return images[-micro:], labels[-micro:]

    def _reset_loop_state(self):
        self._totals.assign(tf.zeros([4]))
        self._final_state.assign(tf.zeros([2]))
        self._first_non_finite.assign(-1)

    def _replica_eval_step(self, images, labels, mask):
        # The compiled part is called from the replica's function, not handed
        # to strategy.run: XLA there would read other replicas' variables
        # from the wrong device (keras #19005's failure).
        return self._eval_counts(images, labels, mask)

    def _eval_counts(self, images, labels, mask):
        logits = self.model(images, training=False)
        _, top1, top5 = self._loss_and_counts(logits, labels)
        return tf.stack(
            [tf.reduce_sum(top1 * mask), tf.reduce_sum(top5 * mask), tf.reduce_sum(mask)]
        )

    # --- Host loops ------------------------------------------------------------

    @tf.function
    def _train_loop(self, iterator, steps):
        """Runs `steps` steps, or fewer if a stop is requested (every worker
        then stops after the same step); returns how many ran."""
        self.strategy.run(self._reset_loop_state)
        ran = tf.constant(0)
        for i in tf.range(steps):
            stop = self._stop_requested()
            inputs = next(iterator) if iterator is not None else ()
            last = tf.logical_or(tf.equal(i, steps - 1), stop)  # checks the state it leaves
            self.strategy.run(self._replica_train_step, args=(i, last, *inputs))
            ran = i + 1
            if stop:
                break
        return ran

    def _stop_requested(self):
        """Whether this or (several workers) any worker was asked to stop."""
        if not self._several_workers:
            return self._stop.read_value()
        flags = self.strategy.run(lambda: tf.cast(self._stop.read_value(), tf.float32))
        return self.strategy.reduce(SUM, flags, axis=None) > 0

    def request_stop(self):
        """Ends the running (or next) loop after its current step; from any thread."""
        self._stop.assign(True)

    @tf.function
    def _average_moving_statistics(self):
        """Sets every replica's BN moving statistics to their mean over replicas
        (one all-reduce of all of them, flattened)."""
        variables = self._float_non_trainables
        local = self.strategy.run(
            lambda: tf.concat([tf.reshape(v.value, [-1]) for v in variables], 0)
        )
        mean = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)
        sizes = [int(tf.size(v.value)) for v in variables]
        for variable, value in zip(variables, tf.split(mean, sizes)):
            variable.assign(tf.reshape(value, variable.shape))

    @tf.function
    def _eval_loop(self, iterator, steps):
        totals = tf.zeros([3])
        for _ in tf.range(steps):
            per_replica = self.strategy.run(self._replica_eval_step, args=next(iterator))
            totals += self.strategy.reduce(SUM, per_replica, axis=None)
        return totals

    def train(self, iterator, steps):
        """Runs `steps` updates (fewer after `request_stop`); returns a `LoopResult`."""
        ran = int(self._train_loop(iterator, tf.constant(steps)))
        loss, top1, top5, examples = self._totals.read_value().numpy()
        final_loss, non_finite_variables = self._final_state.read_value().numpy()
        first = int(self._first_non_finite.read_value())
        if self.strategy.num_replicas_in_sync > 1 and self._float_non_trainables:
            self._average_moving_statistics()
        return LoopResult(
            loss=float(loss * self.global_batch_size / examples),
            top1=float(top1 / examples),
            top5=float(top5 / examples),
            first_non_finite_step=None if first < 0 else first,
            state_finite=bool(tf.math.is_finite(final_loss)) and non_finite_variables == 0,
            micro_steps=optimization.micro_steps(self.optimizer),
            steps=ran,
        )

    def evaluate(self, iterator, steps):
        """Top-1 and top-5 over the masked examples of `steps` batches."""
        top1, top5, count = self._eval_loop(iterator, tf.constant(steps)).numpy()
        return Evaluation(top1=float(top1 / count), top5=float(top5 / count), examples=int(count))


def _check_explicit_update(optimizer):
    """`ValueError` unless the loop's own update (`compile_optimizer`,
    `allreduce_dtype`) does all that `optimizer.apply_gradients` would: it
    runs the optimizer's `update_step`, gradient clipping, constraints and
    `loss_scale_factor`, but not an exponential moving average, Keras's
    gradient accumulation (the Trainer accumulates itself), decoupled weight
    decay (LARS couples its decay inside `update_step`) or variables
    overwritten by their gradients."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    unsupported = [
        name
        for name, used in (
            ("use_ema", inner.use_ema),
            ("gradient_accumulation_steps", inner.gradient_accumulation_steps),
            (
                "weight_decay",
                inner.weight_decay and not isinstance(inner, keras_lars.LARS),
            ),
        )
        if used
    ]
    if unsupported:
        raise ValueError(
            "The compiled optimizer update and the bfloat16 all-reduce run an optimizer's "
            f"update_step without {', '.join(unsupported)}: use --nocompile_optimizer and "
            f"--allreduce_dtype=float32 with {type(inner).__name__}({', '.join(unsupported)})"
        )


def _apply_update(optimizer, gradients, variables):
    """`optimizer.apply` after its all-reduce, in the update context of one
    replica (every variable read or written is that replica's copy): the
    current rate, clipping, each variable's `update_step`, constraints, and
    one more iteration."""
    if optimizer.loss_scale_factor is not None:
        gradients = [g / optimizer.loss_scale_factor for g in gradients]
    learning_rate = optimizer.learning_rate
    gradients = optimizer._clip_gradients(gradients)
    for gradient, variable in zip(gradients, variables):
        optimizer.update_step(gradient, variable.value, learning_rate)
    for variable in variables:
        if variable.constraint is not None:
            variable.assign(variable.constraint(variable))
    optimizer.iterations.assign_add(1)


def _replica_sums(shape):
    """A float variable each replica adds to, summed over replicas on read."""
    return tf.Variable(
        tf.zeros(shape),
        trainable=False,
        synchronization=ON_READ,
        aggregation=tf.VariableAggregation.SUM,
    )
