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
that made `recipes/train_loop.py` necessary). Each loop is one `fit` call on a
persistent input stream; `steps_per_execution` is the largest step count that
divides every loop, so Keras returns to Python once per loop's worth of
executions rather than once per step. Gradient accumulation is Keras's
(`gradient_accumulation_steps`), whose schedule LARS counts in updates.

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

from recipes import imagenet_input
from recipes import models
from recipes import optimization
from recipes import strategies

CHECKPOINTS_KEPT = 3
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.npz$")


class Runner:
    """Sets up the devices: `--logical_cpus` forced host devices, the
    multi-process cluster, and DataParallel (`--strategy=data_parallel`) or
    one device (`--strategy=default`)."""

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

    def build(self, plan, train_source, eval_source):
        config = self.config
        self.plan, self.train_source, self.eval_source = plan, train_source, eval_source
        self._previous_distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(self.distribution)
        self.model = models.build_for(config, plan.num_classes)
        k = config.accumulation_steps
        self.optimizer, self.lars = optimization.optimizer(
            config, plan, gradient_accumulation_steps=k if k > 1 else None
        )
        self.optimizer.build(self.model.trainable_variables)  # before a restore

    def restore(self):
        """Loads the latest checkpoint, if any; returns its step."""
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

    def start(self, start_step):
        """Compiles for the loops ahead and opens the input at `start_step`."""
        config, plan = self.config, self.plan
        k = config.accumulation_steps
        loop_gcd = math.gcd(plan.steps_per_loop, plan.eval_every_steps, plan.train_steps)
        self.model.compile(
            optimizer=self.optimizer,
            loss=_cross_entropy(plan.num_classes, config.label_smoothing),
            # Weighted: in evaluation the padding's mask is the sample weight.
            weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(
                    k=min(5, plan.num_classes), name="top5"
                ),
                _WeightSum(name="examples"),
            ],
            steps_per_execution=math.gcd(loop_gcd, start_step) * k,
        )
        if self.train_source is None:  # synthetic: one random batch, again and again
            batch = imagenet_input.synthetic_batch(
                config.global_batch_size // (k * self.processes),
                config.image_size,
                plan.num_classes,
                config.dtype,
            )
            self.batches = _repeat(tuple(x.numpy() for x in batch))
            return
        context = self._input_context()
        seed, skip = imagenet_input.resume_position(
            config.seed,
            config.deterministic,
            start_step,
            config.global_batch_size // self.processes,
        )
        self.batches = imagenet_input.batches(
            self.train_source,
            training=True,
            global_batch_size=config.global_batch_size // k,  # a micro-batch a step
            input_context=context,
            image_size=config.image_size,
            dtype=config.dtype,
            deterministic=config.deterministic,
            seed=seed,
            skip=skip,
            num_classes=self.train_source.num_classes,
        ).as_numpy_iterator()

    def train(self, steps):
        k = self.config.accumulation_steps
        stop = _StopOnNonFiniteLoss(k)
        naming = self.train_source.naming_bad_files() if self.train_source else None
        with naming or contextlib.nullcontext():
            history = self.model.fit(
                _stream(self.batches),
                steps_per_epoch=steps * k,
                epochs=1,
                shuffle=False,  # the stream is shuffled already
                verbose=0,
                callbacks=[stop],
            ).history
        return dict(
            loss=history["loss"][-1],
            top1=history["top1"][-1],
            top5=history["top5"][-1],
            non_finite_in_loop=stop.step,
        )

    def evaluate(self):
        """Top-1 and top-5 over every validation image exactly once: the
        padding's mask is the sample weight."""
        config, plan, source = self.config, self.plan, self.eval_source
        dataset = imagenet_input.evaluation_batches(
            source,
            global_batch_size=config.global_batch_size,
            num_examples=plan.eval_images,
            input_context=self._input_context(),
            image_size=config.image_size,
            dtype=config.dtype,
            num_classes=source.num_classes,
        )
        with source.naming_bad_files(), warnings.catch_warnings():
            # The evaluation steps need not fill the last execution of
            # `steps_per_execution` steps; Keras then runs the rest and warns.
            warnings.filterwarnings("ignore", "Your input ran out of data")
            result = self.model.evaluate(
                _stream(dataset.as_numpy_iterator()), verbose=0, return_dict=True
            )
        return dict(top1=result["top1"], top5=result["top5"], examples=round(result["examples"]))

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
        return getattr(self, "latest", None)

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


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` once the (running) loss is not finite; `step` is then the
    loop's last update (0-based) of the execution where it happened, else None."""

    def __init__(self, accumulation_steps):
        super().__init__()
        self.accumulation_steps = accumulation_steps
        self.step = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.step is None and loss is not None and not math.isfinite(float(loss)):
            self.step = batch // self.accumulation_steps
            self.model.stop_training = True


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


def _stream(iterator):
    """A fresh generator over a shared iterator: each `fit` call takes the
    next batches, none is read twice or skipped. (A `for` loop, not `yield
    from`, so that Keras closing this generator leaves `iterator` open.)"""
    for batch in iterator:  # noqa: UP028
        yield batch


def _repeat(batch):
    while True:
        yield batch
