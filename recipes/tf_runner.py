"""The TensorFlow side of an ImageNet run: a tf.distribute strategy, the
compiled loop of `recipes.train_loop.Trainer`, and `tf.train.Checkpoint`.

`recipes/imagenet_job.py` drives it through the same methods as
`recipes/jax_runner.py`: `build`, `restore`, `start`, `train`, `evaluate`,
`save`.
"""

import contextlib
import os

import tensorflow as tf

from recipes import imagenet_input
from recipes import models
from recipes import optimization
from recipes import strategies
from recipes.train_loop import Trainer

CHECKPOINTS_KEPT = 3


class Runner:
    """Creates the strategy named by `config.strategy` (after splitting the
    CPU if asked); `StrategyError` if it cannot."""

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

    def build(self, plan, train_source, eval_source):
        """The model, LARS and the compiled loop, under the strategy."""
        config = self.config
        self.plan, self.train_source, self.eval_source = plan, train_source, eval_source
        with self.strategy.scope():
            self.model = models.build_for(config, plan.num_classes)
            self.optimizer, self.lars = optimization.optimizer(config, plan)
            # Trainer builds the optimizer: its slots exist before a restore.
            self.trainer = Trainer(
                self.strategy,
                self.model,
                self.optimizer,
                global_batch_size=config.global_batch_size,
                label_smoothing=config.label_smoothing,
                accumulation_steps=config.accumulation_steps,
                jit_compile=config.jit_compile,
                synthetic=(config.image_size, plan.num_classes, config.dtype)
                if config.synthetic
                else None,
            )
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            # Dropout's random state, which tf.train.Checkpoint does not reach
            # through the model (tests/test_tensorflow.py pins this).
            random_states=[
                v for v in self.model.non_trainable_variables if "seed_generator" in v.path
            ],
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._checkpoint_dir(), max_to_keep=CHECKPOINTS_KEPT
        )

    def restore(self):
        """Restores the chief's latest checkpoint, if any; returns its step."""
        latest = tf.train.latest_checkpoint(os.path.join(self.config.model_dir, "checkpoints"))
        if not latest:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        # The checkpoint's number is its step. (Under float16 the optimizer's
        # `iterations` is the inner LARS's, which skips overflowed steps.)
        return int(latest.rsplit("-", 1)[1])

    def start(self, start_step):
        """Opens the training input at `start_step` (see imagenet_job)."""
        self.iterator = None  # synthetic: each replica makes its own batches
        if self.train_source is None:
            return
        config, source = self.config, self.train_source

        def dataset_fn(context):
            per_pipeline_step = config.global_batch_size // context.num_input_pipelines
            seed, skip = imagenet_input.resume_position(
                config.seed, config.deterministic, start_step, per_pipeline_step
            )
            return imagenet_input.batches(
                source,
                training=True,
                global_batch_size=config.global_batch_size,
                input_context=context,
                image_size=config.image_size,
                dtype=config.dtype,
                deterministic=config.deterministic,
                seed=seed,
                skip=skip,
                num_classes=source.num_classes,
            )

        self.iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def train(self, steps):
        naming = self.train_source.naming_bad_files() if self.train_source else None
        with naming or contextlib.nullcontext():
            return self.trainer.train(self.iterator, steps)

    def evaluate(self):
        """Top-1 and top-5 over every validation image exactly once."""
        config, plan, source = self.config, self.plan, self.eval_source
        pipelines = []

        def dataset_fn(context):
            pipelines.append(context.num_input_pipelines)
            return imagenet_input.evaluation_batches(
                source,
                global_batch_size=config.global_batch_size,
                num_examples=plan.eval_images,
                input_context=context,
                image_size=config.image_size,
                dtype=config.dtype,
                num_classes=source.num_classes,
            )

        iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        steps = imagenet_input.evaluation_steps(
            plan.eval_images, config.global_batch_size, pipelines[0]
        )
        with source.naming_bad_files():
            return self.trainer.evaluate(iterator, steps)

    def save(self, step):
        self.manager.save(checkpoint_number=step)

    def latest_checkpoint(self):
        return self.manager.latest_checkpoint

    def close(self):
        """Nothing to undo (jax_runner's restores the global distribution)."""

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
