"""The TensorFlow side of an ImageNet run: a tf.distribute strategy, the
compiled loop of `train_loop.Trainer`, and `tf.train.Checkpoint`.

Checkpoints are `checkpoints/ckpt-<step>.index` and `.data-*` files, written
with `tf.train.Checkpoint.write` (no `checkpoint` index file: the files
themselves say which checkpoints exist, see `checkpoints.py`), the newest
three kept.

Under MultiWorkerMirroredStrategy every worker takes part in a save, but only
the chief's files are kept: the others write to a temporary folder of their
own and remove it (as Keras's `BackupAndRestore` does), and every worker
restores from the chief's checkpoints. After a restore the workers compare
the step and a checksum of their variables (one all-gather) and stop, each
with the same line, if they differ: a run whose workers resumed apart would
hang in mismatched collectives or train on different weights.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf

from . import checkpoints
from . import runner
from . import strategies
from .runner import Progress
from .runner import Runner
from .train_loop import Trainer

CHECKPOINTS_KEPT = 3
CHECKPOINT_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d+-of-\d+)$")
# What an interrupted `Checkpoint.write` leaves: its shards' temporary folder.
TEMPORARY = re.compile(r"^ckpt-\d+_temp")


class TensorFlowRunner(Runner):
    """Creates the strategy named by `config.strategy` (after splitting the
    CPU if asked); `StrategyError` if it cannot. XLA compiles each replica's
    forward and backward pass by default where there are GPUs or TPUs."""

    backend = "tensorflow"
    # The loop splits each replica's batch and all-reduces once an update.
    optimizer_accumulation_steps = None

    def __init__(self, config):
        if config.logical_cpus:
            strategies.split_cpu(config.logical_cpus)
        self.config = config
        self.strategy = strategies.create(config.strategy, config.tpu)
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = _is_chief(self.strategy)
        # Several processes (workers) to agree with.
        self.multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.micro_steps_per_update = 1
        self.skips_overflowing_steps = config.dtype == "float16"
        self.default_dtype = "bfloat16" if config.strategy == "tpu" else "float32"
        gpus = bool(tf.config.list_logical_devices("GPU"))
        accelerators = gpus or config.strategy == "tpu"
        self.jit_compile = accelerators if config.jit_compile is None else config.jit_compile
        # The update as one XLA computation: by default with GPUs, where
        # LARS's ~10 small kernels a variable cost launches; not on CPUs,
        # where no reliable gain was measured (benchmarks/RESULTS.md), nor on
        # TPUs, which compile the whole step anyway.
        self.compile_optimizer = (
            gpus if config.compile_optimizer is None else config.compile_optimizer
        )
        self.description = (
            strategies.describe(self.strategy)
            + (", XLA per replica" if self.jit_compile else "")
            + (", XLA optimizer update" if self.compile_optimizer else "")
            + (
                f", {config.allreduce_dtype} all-reduce"
                if config.allreduce_dtype != "float32" and self.replicas > 1
                else ""
            )
        )
        self.bn_span = self._layer_bn_span()
        self.directory = os.path.join(config.model_dir, "checkpoints")
        self.trainer = None
        self.checkpoint = None
        self.step = None
        self.train_seconds = None
        self._gather = None
        # Steps whose files did not restore: neither kept nor counted as checkpoints.
        self._damaged = set()
        self.latest = None
        self.training = None
        self.iterator = None

    def _layer_bn_span(self):
        """`config.bn_span` as the layers read it: each replica normalises its
        own micro-batch, in groups of the span."""
        config = self.config
        micro = config.global_batch_size // (self.replicas * config.accumulation_steps)
        span = config.bn_span or micro
        if micro % span:
            raise ValueError(
                f"--bn_span={config.bn_span}: on TensorFlow each replica normalises its own "
                f"micro-batch, here {micro} images, and the span must divide it (combining "
                "statistics over replicas needs KERAS_BACKEND=jax, whose device mesh does "
                "it); --bn_span=0 normalises over each replica's whole micro-batch"
            )
        return span

    def scope(self):
        return self.strategy.scope()

    def build(self, model, optimizer, plan):
        config = self.config
        with self.strategy.scope():
            # Trainer builds the optimizer: its slots exist before a restore.
            self.trainer = Trainer(
                self.strategy,
                model,
                optimizer,
                global_batch_size=config.global_batch_size,
                label_smoothing=config.label_smoothing,
                accumulation_steps=config.accumulation_steps,
                jit_compile=self.jit_compile,
                compile_optimizer=self.compile_optimizer,
                allreduce_dtype=config.allreduce_dtype,
                synthetic=(config.image_size, plan.num_classes) if config.synthetic else None,
            )
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.train_seconds = tf.Variable(
                0.0, dtype=tf.float64, trainable=False, name="train_seconds"
            )
        self.model, self.optimizer = model, optimizer
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            # Dropout's random state, which tf.train.Checkpoint does not reach
            # through the model (tests/test_tensorflow.py pins this).
            random_states=[v for v in model.non_trainable_variables if "seed_generator" in v.path],
            step=self.step,
            train_seconds=self.train_seconds,
        )
        # Created now, so that `write` saves it: a restore creates it and
        # would find it unmatched.
        self.checkpoint.save_counter  # noqa: B018

    def restore(self):
        if self.chief:
            removed = checkpoints.remove_temporary(self.directory, TEMPORARY.match)
            if removed:
                print(
                    f"Removed what interrupted saves left in {self.directory}: {', '.join(removed)}"
                )
        return checkpoints.restore_newest_intact(
            self.directory, self._steps(), self._restore, nothing=Progress()
        )

    def _restore(self, step):
        try:
            return self._restore_step(step)
        except checkpoints.DamagedCheckpoint:
            self._damaged.add(step)
            raise

    def _restore_step(self, step):
        prefix = self._prefix(step)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise checkpoints.DamagedCheckpoint("its .index file is missing")
        try:
            reader = tf.train.load_checkpoint(prefix)
            for name in reader.get_variable_to_shape_map():  # reads every value: checksums
                reader.get_tensor(name)
            saved_step = reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")
        except (tf.errors.OpError, ValueError, IndexError, KeyError) as error:
            raise checkpoints.DamagedCheckpoint(_first_line(error)) from None
        if saved_step != step:
            raise checkpoints.DamagedCheckpoint(f"it holds step {saved_step}, not {step}")
        try:
            self.checkpoint.restore(prefix).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise checkpoints.DamagedCheckpoint(
                f"it does not hold this model's variables ({_first_line(error)})"
            ) from None
        self.latest = prefix
        return Progress(step=step, train_seconds=float(self.train_seconds.numpy()))

    def check_resumed(self, step):
        if not self.multi_worker:
            return
        state = [
            v.numpy()
            for v in [*self.model.variables, *self.optimizer.variables]
            if "float" in str(v.dtype) and "seed" not in v.path
        ]
        rows = self._gather_rows(runner.state_checksum(step, state))
        runner.check_agreement(rows, self.directory)

    def start(self, start_step, training, loop_lengths):
        self.training = training
        self.iterator = None  # synthetic: each replica makes its own batches
        if training is not None:
            datasets = self.strategy.distribute_datasets_from_function(training.dataset_fn)
            self.iterator = iter(datasets)

    def train(self, steps):
        if self.training is None:
            return self.trainer.train(self.iterator, steps)
        with self.training.naming_bad_files():
            return self.trainer.train(self.iterator, steps)

    def evaluate(self, evaluation):
        contexts = []

        def dataset_fn(context):
            contexts.append(context)
            return evaluation.dataset_fn(context)

        iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        steps = evaluation.steps(contexts[0].num_input_pipelines)
        with evaluation.naming_bad_files():
            return self.trainer.evaluate(iterator, steps)

    def profile_start(self, logdir):
        tf.profiler.experimental.start(logdir)

    def profile_stop(self):
        tf.profiler.experimental.stop()

    def request_stop(self):
        self.trainer.request_stop()

    def agree(self, decision):
        if not self.multi_worker:
            return decision
        return bool(self._gather_rows([float(decision)])[0, 0])  # replica 0: the chief's

    def any_process(self, flag):
        if not self.multi_worker:
            return flag
        return bool(self._gather_rows([float(flag)]).any())

    def save(self, progress):
        """Writes checkpoint `progress.step`, then removes those beyond the
        newest three; `CheckpointNotSaved` (after removing its remains) if it
        cannot. A worker other than the chief writes its part to a
        temporary folder of its own and removes it."""
        step = progress.step
        self.step.assign(step)
        self.train_seconds.assign(progress.train_seconds)
        if not self.chief:
            scratch = tempfile.mkdtemp(prefix="keras_lars_worker_checkpoint_")
            try:
                self.checkpoint.write(os.path.join(scratch, f"ckpt-{step}"))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            self.latest = self._prefix(step)
            return
        prefix = self._prefix(step)
        # Files of this step can only be a damaged checkpoint's (an intact one
        # this far would have been resumed from): removed, not written
        # through (they may be links to another run's files).
        self._remove(step)
        try:
            self.checkpoint.write(prefix)
        except (tf.errors.OpError, OSError) as error:
            self._remove(step)
            checkpoints.remove_temporary(self.directory, TEMPORARY.match)
            kept = f"; {self.latest} is intact" if self.latest else ""
            raise checkpoints.CheckpointNotSaved(
                f"Could not save checkpoint {step} in {self.directory}: {_first_line(error)}{kept}"
            ) from None
        self.latest = prefix
        self._damaged.discard(step)  # written anew
        # The newest intact ones are kept; damaged files are left as they are.
        for old in sorted(self._steps() - self._damaged)[:-CHECKPOINTS_KEPT]:
            self._remove(old)

    def wait(self):
        """Nothing to wait for: `save` writes synchronously."""

    def latest_checkpoint(self):
        return self.latest

    def close(self):
        """Nothing to undo: the strategy stays the process's (see strategies.py)."""

    def _steps(self):
        if not tf.io.gfile.isdir(self.directory):
            return set()
        names = (CHECKPOINT_FILE.match(n) for n in tf.io.gfile.listdir(self.directory))
        return {int(m[1]) for m in names if m}

    def _prefix(self, step):
        return os.path.join(self.directory, f"ckpt-{step}")

    def _remove(self, step):
        for path in tf.io.gfile.glob(self._prefix(step) + ".*"):
            tf.io.gfile.remove(path)

    def _gather_rows(self, values):
        """Every replica's `values` (its process's), one row per replica in
        replica order, on every process: one all-gather. Replica 0 is the
        chief's."""
        if self._gather is None:

            @tf.function
            def gather(row):
                def replica_fn():
                    return tf.distribute.get_replica_context().all_gather(row[None], axis=0)

                return self.strategy.run(replica_fn)

            self._gather = gather
        rows = self._gather(tf.constant(values, tf.float64))
        return self.strategy.experimental_local_results(rows)[0].numpy()


def _first_line(error):
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0]


def _is_chief(strategy):
    """Whether this process writes the run's files (the only one except under
    MultiWorkerMirroredStrategy, where worker 0 does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )
