"""The TensorFlow side of an ImageNet run: a tf.distribute strategy, the
compiled loop of `train_loop.Trainer`, and `tf.train.Checkpoint`."""

import contextlib
import os

import tensorflow as tf

from . import strategies
from .runner import Runner
from .train_loop import Trainer

CHECKPOINTS_KEPT = 3


class TensorFlowRunner(Runner):
    """Creates the strategy named by `config.strategy` (after splitting the
    CPU if asked); `StrategyError` if it cannot."""

    backend = "tensorflow"
    accumulates_in_optimizer = False  # Trainer splits each replica's batch itself

    def __init__(self, config):
        if config.logical_cpus:
            strategies.split_cpu(config.logical_cpus)
        self.config = config
        self.strategy = strategies.create(config.strategy, config.tpu)
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = _is_chief(self.strategy)
        self.description = strategies.describe(self.strategy)
        if config.jit_compile and self.replicas > 1 and config.strategy != "tpu":
            raise ValueError(
                "--jit_compile needs a single replica: XLA with several MirroredStrategy "
                f"replicas fails in Keras 3 (keras #19005); {self.replicas} replicas here"
            )
        self.trainer = None
        self.checkpoint = None
        self.manager = None
        self.training = None
        self.iterator = None

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
                jit_compile=config.jit_compile,
                synthetic=(config.image_size, plan.num_classes, config.dtype)
                if config.synthetic
                else None,
            )
        self.checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            # Dropout's random state, which tf.train.Checkpoint does not reach
            # through the model (tests/test_tensorflow.py pins this).
            random_states=[v for v in model.non_trainable_variables if "seed_generator" in v.path],
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._checkpoint_dir(), max_to_keep=CHECKPOINTS_KEPT
        )

    def restore(self):
        latest = tf.train.latest_checkpoint(os.path.join(self.config.model_dir, "checkpoints"))
        if not latest:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        # The checkpoint's number is its step. (Under float16 the optimizer's
        # `iterations` is the inner LARS's, which skips overflowed steps.)
        return int(latest.rsplit("-", 1)[1])

    def start(self, start_step, training):
        self.training = training
        self.iterator = None  # synthetic: each replica makes its own batches
        if training is not None:
            datasets = self.strategy.distribute_datasets_from_function(training.dataset_fn)
            self.iterator = iter(datasets)

    def train(self, steps):
        with self.training.naming_bad_files() if self.training else contextlib.nullcontext():
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

    def save(self, step):
        self.manager.save(checkpoint_number=step)

    def latest_checkpoint(self):
        return self.manager.latest_checkpoint

    def close(self):
        """Nothing to undo: the strategy stays the process's (see strategies.py)."""

    def _checkpoint_dir(self):
        """model_dir/checkpoints; other workers save their copy aside, since
        saving is collective under MultiWorkerMirroredStrategy."""
        if self.chief:
            return os.path.join(self.config.model_dir, "checkpoints")
        resolver = self.strategy.cluster_resolver
        return os.path.join(
            self.config.model_dir,
            "workers",
            f"{resolver.task_type}{resolver.task_id}",
            "checkpoints",
        )


def _is_chief(strategy):
    """Whether this process writes the run's files (the only one except under
    MultiWorkerMirroredStrategy, where worker 0 does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )
