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
persistent input stream, and runs exactly the updates it is asked for:

- Keras's JAX trainer runs whole executions of `steps_per_execution` steps,
  so that is the largest count dividing every loop of the run
  (`controller.loop_lengths`);
- each `fit` call is given a stream of exactly its loop's micro-batches:
  Keras's one-batch look-ahead (taken without a distribution on GPUs and
  TPUs) then reads the stream's end instead of a batch of the next loop,
  which it would drop.

Gradient accumulation is Keras's (`gradient_accumulation_steps`, which LARS's
schedule counts in updates): each process's batch of a step is fed as that
many micro-batches.

Checkpoints: Orbax's `CheckpointManager` (what JAX and TPU users restore
from), `checkpoints/<step>/`: every model variable (dropout's random state
included) and every optimizer variable, sharded as they are, written in the
background while training goes on, by every process together, committed
atomically; the newest three kept.

After each loop the state it leaves is checked before it may be saved, in
one compiled call: every variable finite, and the loss it gives on the
loop's last micro-batch (training mode, nothing updated) finite.

Several processes: the chief's decisions (`agree`) are broadcast to the
others, and after a restore the processes compare the step and a checksum of
their own copies of the variables (`check_resumed`).
"""

import contextlib
import logging
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from .. import optimization
from . import batching
from . import checkpoints
from . import controller
from . import runner
from . import strategies
from .runner import Evaluation
from .runner import LoopResult
from .runner import Progress
from .runner import Runner

CHECKPOINTS_KEPT = 3


class JaxRunner(Runner):
    """Sets up the devices: `--logical_cpus` forced host devices, the
    multi-process cluster, and DataParallel (`--strategy=data_parallel`) or
    one device (`--strategy=default`), which it makes Keras's distribution
    until `close()`."""

    backend = "jax"

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
        # model.fit's micro-batches are accumulated by Keras's optimizer.
        k = config.accumulation_steps
        self.optimizer_accumulation_steps = k if k > 1 else None
        self.micro_steps_per_update = k
        self.skips_overflowing_steps = config.dtype == "float16"
        platform = devices[0].platform.upper()
        self.default_dtype = "bfloat16" if platform == "TPU" else "float32"
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
        self.bn_span = self._layer_bn_span(len(devices))
        self.directory = os.path.join(config.model_dir, "checkpoints")
        if "://" not in self.directory:  # Orbax wants local paths absolute
            self.directory = os.path.abspath(self.directory)
        self._previous_distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(self.distribution)
        # When a background write fails (a full disk), Orbax logs the error
        # with a traceback and asyncio logs each of its unfinished writes; the
        # error is re-raised when waited on (`wait`, the next `save`), where
        # the run says what went wrong in one line. Those logs are left out
        # while this runner is open. (TensorStore also prints its late
        # callbacks into Orbax's closed event loop; no hook reaches those.)
        self._quiet = _OrbaxTracebacks()
        for logger in ("absl", "asyncio"):
            logging.getLogger(logger).addFilter(self._quiet)
        self.model = None
        self.optimizer = None
        self.plan = None
        self.manager = None
        self.feed = None
        self.training = None
        self.latest = None
        self._non_finite = None
        self._loss = None
        self._state_check = None
        self._stop_requested = False
        # Steps whose folders did not restore: neither kept nor counted.
        self._damaged = set()

    def _layer_bn_span(self, devices):
        """`config.bn_span` as the layers read it: they see an update's whole
        micro-batch, split over the devices (0: each device's share). A span
        must divide a device's share (each device its own groups) or be a
        whole number of shares (whole devices combined): anything else would
        make XLA move activations between devices."""
        config = self.config
        micro = config.global_batch_size // config.accumulation_steps
        share = micro // devices
        span = config.bn_span or share
        if micro % devices or micro % span or (share % span and span % share):
            raise ValueError(
                f"--bn_span={config.bn_span}: each of the {devices} devices holds "
                f"{micro / devices:g} images of an update's micro-batch of {micro}, and a "
                "span must divide a device's share or be a whole number of shares; "
                "--bn_span=0 normalises over each device's share"
            )
        return span

    def scope(self):
        # The distribution is Keras's from __init__ to close(): fit needs it too.
        return contextlib.nullcontext()

    def build(self, model, optimizer, plan):
        import jax
        import orbax.checkpoint as ocp

        self.model, self.optimizer, self.plan = model, optimizer, plan
        self.optimizer.build(model.trainable_variables)  # before a restore
        self._loss = _cross_entropy(plan.num_classes, self.config.label_smoothing)

        def state_check(checked, trainable, non_trainable, images, labels):
            """(non-finite values among `checked`, the loss the state gives)."""
            non_finite = sum(jax.numpy.sum(~jax.numpy.isfinite(value)) for value in checked)
            logits, _ = model.stateless_call(trainable, non_trainable, images, training=True)
            return non_finite, keras.ops.mean(self._loss(labels, logits))

        self._state_check = jax.jit(state_check)
        self.manager = ocp.CheckpointManager(
            self.directory,
            # One unnamed item, declared: left to guess, Orbax takes the mode
            # from the first step it restores, and a junk step folder (no
            # `default/`) would lock it into the multi-item mode, in which
            # every intact checkpoint fails to restore.
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                # Kept by `_keep_newest`, which counts intact checkpoints only
                # (Orbax would count a junk step folder too).
                max_to_keep=None,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,  # what interrupted saves left
            ),
        )

    def restore(self):
        return checkpoints.restore_newest_intact(
            self.directory, self.manager.all_steps(read=True), self._restore, nothing=Progress()
        )

    def _restore(self, step):
        try:
            with _quiet_orbax():  # one line a skip, however Orbax reports it
                return self._restore_step(step)
        except checkpoints.DamagedCheckpoint:
            self._damaged.add(step)
            raise

    def _restore_step(self, step):
        import jax
        import orbax.checkpoint as ocp

        variables = self._state()
        target = {
            "variables": [
                jax.ShapeDtypeStruct(v.shape, v.value.dtype, sharding=v.value.sharding)
                for v in variables
            ],
            "step": jax.ShapeDtypeStruct((), np.int64),
            "train_seconds": jax.ShapeDtypeStruct((), np.float64),
        }
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds
            raise checkpoints.DamagedCheckpoint(_first_line(error)) from None
        if int(restored["step"]) != step:
            raise checkpoints.DamagedCheckpoint(f"it holds step {int(restored['step'])}")
        for variable, value in zip(variables, restored["variables"]):
            variable.assign(value)
        self.latest = os.path.join(self.directory, str(step))
        return Progress(step=step, train_seconds=float(restored["train_seconds"]))

    def check_resumed(self, step):
        if self.processes == 1:
            return
        from jax.experimental import multihost_utils

        # This process's own copy of each variable (its first local shard):
        # a computation over the global arrays would assume they agree.
        local = [
            v.value.addressable_shards[0].data
            for v in self._state()
            if "float" in str(v.value.dtype) and "seed" not in v.path
        ]
        mine = np.array(runner.state_checksum(step, local))
        runner.check_agreement(multihost_utils.process_allgather(mine), self.directory)

    def agree(self, decision):
        if self.processes == 1:
            return decision
        from jax.experimental import multihost_utils

        return bool(multihost_utils.broadcast_one_to_all(np.int32(decision)))

    def any_process(self, flag):
        if self.processes == 1:
            return flag
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))

    def profile_start(self, logdir):
        import jax

        jax.profiler.start_trace(logdir)

    def profile_stop(self):
        import jax

        jax.profiler.stop_trace()

    def request_stop(self):
        """Ends the loop after the execution under way, with one process; with
        several, at the loop's end (stopping inside a loop would need a
        collective after every execution, stalling the devices)."""
        self._stop_requested = self.processes == 1

    def start(self, start_step, training, loop_lengths):
        """Compiles for the loops ahead and opens the input at `start_step`."""
        config, plan = self.config, self.plan
        k = config.accumulation_steps
        self._non_finite = _FirstNonFiniteLoss(self._loss, k)
        self.model.compile(
            optimizer=self.optimizer,
            loss=self._loss,
            metrics=[self._non_finite],
            # Weighted: in evaluation the padding's mask is the sample weight.
            weighted_metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="top1"),
                keras.metrics.SparseTopKCategoricalAccuracy(
                    k=min(5, plan.num_classes), name="top5"
                ),
                _WeightSum(name="examples"),
            ],
            # Keras runs whole executions of this many micro-batches.
            steps_per_execution=controller.steps_per_execution(loop_lengths) * k,
        )
        self.training = training
        per_process = config.global_batch_size // self.processes
        if training is None:  # synthetic: one random batch, again and again
            batch = batching.synthetic_batch(per_process, config.image_size, plan.num_classes)
            batches = _repeat(tuple(x.numpy() for x in batch))
        else:
            batches = training.dataset_fn(self._input_context()).as_numpy_iterator()
        self.feed = _MicroBatches(batches, k)

    def train(self, steps):
        k = self.config.accumulation_steps
        before = optimization.micro_steps(self.optimizer)
        with self.training.naming_bad_files() if self.training else contextlib.nullcontext():
            history = self.model.fit(
                self.feed.stream(steps * k),
                steps_per_epoch=steps * k,
                epochs=1,
                shuffle=False,  # the stream is shuffled already
                verbose=0,
                callbacks=[_StopWhenRequested(self)],
            ).history
        micro_steps = optimization.micro_steps(self.optimizer)
        # Stopped early on request: after whole executions, whole updates.
        ran = steps if not self._stop_requested else (micro_steps - before) // k
        return LoopResult(
            loss=history["loss"][-1],
            top1=history["top1"][-1],
            top5=history["top5"][-1],
            first_non_finite_step=self._non_finite.first_step(),
            state_finite=self._state_finite(),
            micro_steps=micro_steps,
            steps=ran,
        )

    def _state_finite(self):
        """Whether every variable is finite and so is the loss they give on
        the last micro-batch trained on (training mode, nothing updated)."""
        checked = [
            v.value for v in self._state() if "float" in str(v.value.dtype) and "seed" not in v.path
        ]
        images, labels = (self._global(x) for x in self.feed.last)
        non_finite, loss = self._state_check(
            checked,
            [v.value for v in self.model.trainable_variables],
            [v.value for v in self.model.non_trainable_variables],
            images,
            labels,
        )
        return int(non_finite) == 0 and bool(np.isfinite(loss))

    def _global(self, local):
        """This process's part of a batch as the global array the devices
        hold (with DataParallel, sharded over them)."""
        import jax

        if self.distribution is None:
            return jax.numpy.asarray(local)
        shape = (local.shape[0] * self.processes, *local.shape[1:])
        sharding = self.distribution.get_data_layout(shape).backend_layout
        return jax.make_array_from_process_local_data(sharding, local, shape)

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

    def save(self, progress):
        """Starts writing checkpoint `progress.step` in the background (after
        the previous one is written); `CheckpointNotSaved` if this one or the
        previous cannot be."""
        import orbax.checkpoint as ocp

        step = progress.step
        state = {
            "variables": [v.value for v in self._state()],
            "step": np.int64(step),
            "train_seconds": np.float64(progress.train_seconds),
        }
        try:
            self.manager.wait_until_finished()  # the previous one: intact now
            self._keep_newest(CHECKPOINTS_KEPT - 1)
            if step in self.manager.all_steps():
                # A damaged one, skipped by `restore` (an intact one this far
                # would have been resumed from): Orbax would not replace it.
                self.manager.delete(step)
            # Forced: a damaged step folder past this step would make Orbax
            # skip the save (it saves only steps after its latest).
            self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
            self._damaged.discard(step)
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds
            raise checkpoints.CheckpointNotSaved(
                f"Could not save checkpoint {step} (or the one before it, written in the "
                f"background) in {self.directory}: {_first_line(error)}"
            ) from None
        self.latest = os.path.join(self.directory, str(step))

    def wait(self):
        """Blocks until every checkpoint saved so far is written."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - Orbax and TensorStore raise many kinds
            raise checkpoints.CheckpointNotSaved(
                f"Could not write checkpoint {self.latest}: {_first_line(error)}"
            ) from None
        self._keep_newest(CHECKPOINTS_KEPT)

    def _keep_newest(self, count):
        """Deletes intact checkpoints beyond the newest `count`, once every
        save is written; damaged step folders are left as they are. Every
        process calls it (Orbax's delete is a collective; the primary host
        deletes)."""
        intact = sorted(set(self.manager.all_steps()) - self._damaged)
        for step in intact[: max(len(intact) - count, 0)]:
            self.manager.delete(step)

    def latest_checkpoint(self):
        return self.latest

    def close(self):
        keras.distribution.set_distribution(self._previous_distribution)
        for logger in ("absl", "asyncio"):
            logging.getLogger(logger).removeFilter(self._quiet)
        if self.manager is not None:
            try:
                self.wait()
            finally:
                self.manager.close()

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


class _StopWhenRequested(keras.callbacks.Callback):
    """Ends `fit` after the execution under way once the runner is asked to stop."""

    def __init__(self, runner):
        super().__init__()
        self.runner = runner

    def on_train_batch_end(self, batch, logs=None):
        if self.runner._stop_requested:
            self.model.stop_training = True


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


class _MicroBatches:
    """The training stream as `fit` takes it: each batch of a shared
    iterator as `k` consecutive micro-batches (one `fit` step each),
    remembering the last one given."""

    def __init__(self, batches, k):
        self.batches, self.k = batches, k
        self.last = None

    def stream(self, count):
        """A fresh generator per `fit` call of exactly `count` micro-batches
        (whole batches), so that each call takes the next ones: none is read
        twice, and none is read ahead and dropped."""
        for _ in range(count // self.k):
            batch = next(self.batches)
            size = len(batch[0]) // self.k
            for i in range(self.k):
                self.last = tuple(x[i * size : (i + 1) * size] for x in batch)
                yield self.last


def _first_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class _OrbaxTracebacks(logging.Filter):
    """Leaves out log records whose traceback passes through Orbax."""

    def filter(self, record):
        if not record.exc_info:
            return True
        traceback = record.exc_info[2]
        while traceback is not None:
            if f"{os.sep}orbax{os.sep}" in traceback.tb_frame.f_code.co_filename:
                return False
            traceback = traceback.tb_next
        return True


@contextlib.contextmanager
def _quiet_orbax():
    """Leaves out Orbax's own log records (a checkpoint of another model
    makes it log thousands of lines) while a restore is tried: the run says
    in one line why a checkpoint is skipped."""

    def not_orbax(record):
        return f"{os.sep}orbax{os.sep}" not in record.pathname

    logger = logging.getLogger("absl")
    logger.addFilter(not_orbax)
    try:
        yield
    finally:
        logger.removeFilter(not_orbax)


def _stream(iterator):
    """A fresh generator over a shared iterator (a `for` loop, not `yield
    from`, so that Keras closing this generator leaves `iterator` open)."""
    for batch in iterator:  # noqa: UP028
        yield batch


def _repeat(batch):
    while True:
        yield batch
