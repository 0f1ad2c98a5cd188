"""The JAX side of an ImageNet run: `keras.distribution.DataParallel` over
every local device (GPUs, or the cores of a TPU VM), `model.fit` one loop at
a time, and checkpoints of every variable.

    KERAS_BACKEND=jax python -m recipes.imagenet_train --strategy=data_parallel ...

This is the route Keras's own TPU CI takes (Keras 3 runs its TPU tests on the
JAX backend only, and `keras.distribution` is JAX-only in 3.15). tf.data stays
the input library: each process reads its own share of the files
(`auto_shard_dataset=False`), and Keras assembles the global batch from the
processes' parts. Several hosts (a TPU pod slice, a GPU cluster): run the same
command on every host with `--multi_process`, which calls
`keras.distribution.initialize()` first (on a TPU pod it finds the other hosts
itself; elsewhere set KERAS_DISTRIBUTION_JOB_ADDRESSES,
KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID).

`model.fit` works here (it does not have the TensorFlow multi-replica limits
that made `train_loop.py` necessary). Each loop is one `fit` call on a
persistent input stream; `steps_per_execution` is the largest step count that
divides every loop, so Keras returns to Python once per loop's worth of
executions rather than once per step. Gradient accumulation is Keras's
(`gradient_accumulation_steps`, which LARS's schedule counts in updates): each
process's batch of a step is fed as that many micro-batches.

Checkpoints: every model variable (dropout's random state included) and
every optimizer variable, in order, in `checkpoints/ckpt-<step>.npz`, written
to a temporary name and renamed, the last three kept.
"""

import contextlib
import io
import math
import os
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

from . import input_pipeline
from . import strategies
from .runner import Evaluation
from .runner import LoopResult
from .runner import Runner

CHECKPOINTS_KEPT = 3
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.npz$")


class JaxRunner(Runner):
    """Sets up the devices: `--logical_cpus` forced host devices, the
    multi-process cluster, and DataParallel (`--strategy=data_parallel`) or
    one device (`--strategy=default`), which it makes Keras's distribution
    until `close()`."""

    backend = "jax"
    accumulates_in_optimizer = True  # model.fit: Keras's gradient accumulation

    def __init__(self, config):
        import jax

        self.config = config
        if config.logical_cpus:
            try:
                jax.config.update("jax_num_cpu_devices", config.logical_cpus)
            except RuntimeError as error:
                raise strategies.StrategyError(
                    f"--logical_cpus={config.logical_cpus}: {error}"
                ) from None
        if config.multi_process:
            try:
                keras.distribution.initialize()
            except (RuntimeError, ValueError) as error:
                raise strategies.StrategyError(
                    f"--multi_process: keras.distribution.initialize() failed: {error}"
                ) from None
        devices = jax.devices()
        self.processes, self.process = jax.process_count(), jax.process_index()
        self.chief = self.process == 0
        platform = devices[0].platform.upper()
        self.distribution = None
        self.replicas = 1
        self.description = f"one {platform} device"
        if config.strategy == "data_parallel":
            self.distribution = keras.distribution.DataParallel(
                devices=devices, auto_shard_dataset=False
            )
            self.replicas = len(devices)
            self.description = (
                f"DataParallel on {len(devices)} {platform} device(s), {self.processes} process(es)"
            )
        self._previous_distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(self.distribution)
        self.model = None
        self.optimizer = None
        self.plan = None
        self.batches = None
        self.training = None
        self.latest = None
        self._non_finite = None

    def scope(self):
        # The distribution is Keras's from __init__ to close(): fit needs it too.
        return contextlib.nullcontext()

    def build(self, model, optimizer, plan):
        self.model, self.optimizer, self.plan = model, optimizer, plan
        self.optimizer.build(model.trainable_variables)  # before a restore

    def restore(self):
        directory = os.path.join(self.config.model_dir, "checkpoints")
        steps = _checkpoint_steps(directory)
        if not steps:
            return 0
        path = os.path.join(directory, f"ckpt-{steps[-1]}.npz")
        with tf.io.gfile.GFile(path, "rb") as f:
            saved = np.load(io.BytesIO(f.read()))
            values = [saved[f"v{i}"] for i in range(len(saved.files))]
        variables = self._state()
        if len(values) != len(variables) or any(
            tuple(v.shape) != tuple(x.shape) for v, x in zip(variables, values)
        ):
            raise ValueError(f"{path} does not hold this model's and optimizer's variables")
        for variable, value in zip(variables, values):
            variable.assign(value)
        self.latest = path
        return steps[-1]

    def start(self, start_step, training):
        """Compiles for the loops ahead and opens the input at `start_step`."""
        config, plan = self.config, self.plan
        k = config.accumulation_steps
        loop_gcd = math.gcd(plan.steps_per_loop, plan.eval_every_steps, plan.train_steps)
        loss = _cross_entropy(plan.num_classes, config.label_smoothing)
        self._non_finite = _FirstNonFiniteLoss(loss, k)
        self.model.compile(
            optimizer=self.optimizer,
            loss=loss,
            metrics=[self._non_finite],
            # Weighted: in evaluation the padding's mask is the sample weight.
            weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(
                    k=min(5, plan.num_classes), name="top5"
                ),
                _WeightSum(name="examples"),
            ],
            # Keras returns to Python once per this many micro-batches.
            steps_per_execution=math.gcd(loop_gcd, start_step) * k,
        )
        self.training = training
        per_process = config.global_batch_size // self.processes
        if training is None:  # synthetic: one random batch, again and again
            batch = input_pipeline.synthetic_batch(
                per_process, config.image_size, plan.num_classes, config.dtype
            )
            self.batches = _repeat(tuple(x.numpy() for x in batch))
        else:
            dataset = training.dataset_fn(self._input_context())
            self.batches = dataset.as_numpy_iterator()

    def train(self, steps):
        k = self.config.accumulation_steps
        with self.training.naming_bad_files() if self.training else contextlib.nullcontext():
            history = self.model.fit(
                _micro_batches(self.batches, k),
                steps_per_epoch=steps * k,
                epochs=1,
                shuffle=False,  # the stream is shuffled already
                verbose=0,
            ).history
        first = self._non_finite.first_step()
        return LoopResult(
            loss=history["loss"][-1],
            top1=history["top1"][-1],
            top5=history["top5"][-1],
            first_non_finite_step=first,
        )

    def evaluate(self, evaluation):
        """Top-1 and top-5 over every validation image exactly once: the
        padding's mask is the sample weight."""
        dataset = evaluation.dataset_fn(self._input_context())
        with evaluation.naming_bad_files(), warnings.catch_warnings():
            # The evaluation steps need not fill the last execution of
            # `steps_per_execution` steps; Keras then runs the rest and warns.
            warnings.filterwarnings("ignore", "Your input ran out of data")
            result = self.model.evaluate(
                _stream(dataset.as_numpy_iterator()), verbose=0, return_dict=True
            )
        return Evaluation(
            top1=result["top1"], top5=result["top5"], examples=round(result["examples"])
        )

    def save(self, step):
        """ckpt-<step>.npz (chief only), then the oldest beyond three go."""
        if not self.chief:
            return
        directory = os.path.join(self.config.model_dir, "checkpoints")
        tf.io.gfile.makedirs(directory)
        buffer = io.BytesIO()
        values = {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self._state())}
        np.savez(buffer, **values)
        path = os.path.join(directory, f"ckpt-{step}.npz")
        with tf.io.gfile.GFile(path + ".partial", "wb") as f:
            f.write(buffer.getvalue())
        tf.io.gfile.rename(path + ".partial", path, overwrite=True)
        self.latest = path
        for old in _checkpoint_steps(directory)[:-CHECKPOINTS_KEPT]:
            tf.io.gfile.remove(os.path.join(directory, f"ckpt-{old}.npz"))

    def latest_checkpoint(self):
        return self.latest

    def close(self):
        keras.distribution.set_distribution(self._previous_distribution)

    def _state(self):
        """Every variable a resumed run needs, in a fixed order."""
        return list(self.model.variables) + list(self.optimizer.variables)

    def _input_context(self):
        """This process's share of the input: one pipeline per process."""
        return tf.distribute.InputContext(
            num_input_pipelines=self.processes,
            input_pipeline_id=self.process,
            num_replicas_in_sync=self.processes,
        )


class _WeightSum(keras.metrics.Metric):
    """The sum of the sample weights seen: in evaluation, the number of real
    (unpadded) images."""

    def __init__(self, name="examples", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is None:
            weight = keras.ops.cast(keras.ops.shape(y_true)[0], self.dtype)
        else:
            weight = keras.ops.sum(keras.ops.cast(sample_weight, self.dtype))
        self.total.assign_add(weight)

    def result(self):
        return keras.ops.cast(self.total, self.dtype)

    def reset_state(self):
        self.total.assign(0.0)


class _FirstNonFiniteLoss(keras.metrics.Metric):
    """The first update (0-based, since the last reset) whose loss is not
    finite, or -1: the loss recomputed from the step's labels and logits,
    counted on the device, so no step waits for the host. `fit` resets it at
    each loop."""

    def __init__(self, loss, accumulation_steps, name="first_non_finite", **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss, self.accumulation_steps = loss, accumulation_steps
        self.micro_steps = self.add_variable(shape=(), initializer="zeros", name="micro_steps")
        self.first = self.add_variable(shape=(), initializer="zeros", name="first")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        loss = ops.mean(self.loss(y_true, y_pred))
        first, micro_steps = self.first.value, self.micro_steps.value
        bad = ops.logical_and(ops.logical_not(ops.isfinite(loss)), ops.equal(first, 0.0))
        # `first` holds the micro-step plus one, so that 0 means "none yet".
        self.first.assign(ops.where(bad, micro_steps + 1.0, first))
        self.micro_steps.assign(micro_steps + 1.0)

    def result(self):
        return keras.ops.convert_to_tensor(self.first)

    def reset_state(self):
        self.micro_steps.assign(0.0)
        self.first.assign(0.0)

    def first_step(self):
        """The update whose loss was first non-finite in the last loop, or None."""
        first = int(keras.ops.convert_to_numpy(self.first))
        return (first - 1) // self.accumulation_steps if first else None


def _cross_entropy(num_classes, label_smoothing):
    """Cross-entropy of integer labels, with label smoothing (which Keras's
    sparse cross-entropy does not offer)."""

    def cross_entropy(labels, logits):
        one_hot = keras.ops.one_hot(keras.ops.cast(labels, "int32"), num_classes)
        return keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=label_smoothing
        )

    return cross_entropy


def _checkpoint_steps(directory):
    if not tf.io.gfile.isdir(directory):
        return []
    names = (CHECKPOINT_NAME.match(n) for n in tf.io.gfile.listdir(directory))
    return sorted(int(m[1]) for m in names if m)


def _micro_batches(iterator, k):
    """Each batch of a shared iterator, as `k` consecutive micro-batches (one
    `fit` step each). A fresh generator per `fit` call, so that each call takes
    the next batches: none is read twice or skipped."""
    for batch in iterator:
        if k == 1:
            yield batch
            continue
        size = len(batch[0]) // k
        for i in range(k):
            yield tuple(x[i * size : (i + 1) * size] for x in batch)


def _stream(iterator):
    """A fresh generator over a shared iterator (a `for` loop, not `yield
    from`, so that Keras closing this generator leaves `iterator` open)."""
    for batch in iterator:  # noqa: UP028
        yield batch


def _repeat(batch):
    while True:
        yield batch
