"""One custom training loop for every tf.distribute strategy.

`model.fit` is not used: under MirroredStrategy with several replicas it fails
with `steps_per_execution > 1` (keras #19246) and under
MultiWorkerMirroredStrategy it fails outright (keras #20585). Like the MLPerf
TF2 reference, `Trainer.train(iterator, steps)` runs `steps` steps in one
`tf.function` call (a `tf.range` loop of `strategy.run`), which is what keeps
TPUs busy. The replica step has static shapes, no Python branch on a tensor
and no summaries, so XLA compiles it (`jit_compile=True` on one device; a
TPUStrategy compiles it anyway).

The loss is the sum of the per-example cross-entropies divided by the global
batch, so the all-reduced (summed) gradient is the global batch's mean
gradient whatever the number of replicas. There is no L2 term: LARS decays
inside its update. With `accumulation_steps=k`, each replica splits its batch
into k micro-batches and sums their gradients before the single update, so the
optimizer (and its schedule) counts updates, not micro-batches.
"""

import keras
import tensorflow as tf

from . import input_pipeline
from .runner import Evaluation
from .runner import LoopResult


class Trainer:
    """Compiled training and evaluation loops for a model under a strategy.

    Create it, like the model and optimizer, inside `strategy.scope()`.
    `synthetic=(image_size, num_classes, dtype)` makes each replica draw
    random batches on its device instead of reading an iterator.
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
    ):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.global_batch_size = global_batch_size
        self.label_smoothing = label_smoothing
        self.accumulation_steps = accumulation_steps
        self.synthetic = synthetic
        self.num_classes = model.output.shape[-1]
        self.per_replica_batch = global_batch_size // strategy.num_replicas_in_sync
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
        self._replica_train_step = tf.function(self._replica_train_step, jit_compile=jit_compile)
        self._replica_eval_step = tf.function(self._replica_eval_step, jit_compile=jit_compile)

    # --- Inside one replica --------------------------------------------------

    def _loss_and_counts(self, images, labels, training):
        """Summed cross-entropy (/ global batch) and top-1 / top-5 hits."""
        logits = self.model(images, training=training)
        one_hot = tf.one_hot(labels, self.num_classes)
        per_example = keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=self.label_smoothing
        )
        loss = tf.reduce_sum(per_example) / self.global_batch_size
        top1 = tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)
        top5 = tf.cast(tf.math.in_top_k(labels, logits, min(5, self.num_classes)), tf.float32)
        return loss, top1, top5

    def _gradients(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss, top1, top5 = self._loss_and_counts(images, labels, training=True)
            scaled = self.optimizer.scale_loss(loss)  # float16: loss scaling
        gradients = tape.gradient(scaled, variables)
        counts = tf.stack([loss, tf.reduce_sum(top1), tf.reduce_sum(top5)])
        return gradients, counts

    def _replica_train_step(self, images=None, labels=None):
        if self.synthetic:
            size, classes, dtype = self.synthetic
            images, labels = input_pipeline.synthetic_batch(
                self.per_replica_batch, size, classes, dtype
            )
        k = self.accumulation_steps
        if k == 1:
            gradients, counts = self._gradients(images, labels)
        else:
            micro = self.per_replica_batch // k
            images = tf.reshape(images, [k, micro, *images.shape[1:]])
            labels = tf.reshape(labels, [k, micro])
            gradients = [tf.zeros_like(v) for v in self.model.trainable_variables]
            counts = tf.zeros([3])
            for i in tf.range(k):
                micro_gradients, micro_counts = self._gradients(images[i], labels[i])
                gradients = [a + b for a, b in zip(gradients, micro_gradients)]
                counts += micro_counts
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return tf.concat([counts, [tf.cast(self.per_replica_batch, tf.float32)]], 0)

    def _replica_eval_step(self, images, labels, mask):
        _, top1, top5 = self._loss_and_counts(images, labels, training=False)
        return tf.stack(
            [tf.reduce_sum(top1 * mask), tf.reduce_sum(top5 * mask), tf.reduce_sum(mask)]
        )

    # --- Host loops ------------------------------------------------------------

    @tf.function
    def _train_loop(self, iterator, steps):
        """[loss sum, top-1 hits, top-5 hits, examples, the loop's first step
        with a non-finite loss (counted from 0) or -1]."""
        totals = tf.zeros([4])
        first_non_finite = tf.constant(-1)
        for i in tf.range(steps):
            inputs = next(iterator) if iterator is not None else ()
            per_replica = self.strategy.run(self._replica_train_step, args=inputs)
            counts = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            totals += counts
            if not tf.math.is_finite(counts[0]):
                first_non_finite = i
                break
        return tf.concat([totals, [tf.cast(first_non_finite, tf.float32)]], 0)

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
            totals += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return totals

    def train(self, iterator, steps):
        """Runs `steps` updates; returns a `LoopResult` (the loop stops at a
        step whose loss is not finite)."""
        loss, top1, top5, examples, bad = self._train_loop(iterator, tf.constant(steps)).numpy()
        if self.strategy.num_replicas_in_sync > 1 and self._float_non_trainables:
            self._average_moving_statistics()
        steps_run = examples / self.global_batch_size
        return LoopResult(
            loss=float(loss / steps_run),
            top1=float(top1 / examples),
            top5=float(top5 / examples),
            first_non_finite_step=None if bad < 0 else int(bad),
        )

    def evaluate(self, iterator, steps):
        """Top-1 and top-5 over the masked examples of `steps` batches."""
        top1, top5, count = self._eval_loop(iterator, tf.constant(steps)).numpy()
        return Evaluation(top1=float(top1 / count), top5=float(top5 / count), examples=int(count))
