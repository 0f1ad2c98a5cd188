"""What an ImageNet run asks of a Keras backend: the `Runner` contract and
the results it returns.

`recipes/imagenet/job.py` drives one runner through a run:

    runner = TensorFlowRunner(config)     # or JaxRunner: the devices, nothing built
    with runner.scope():                  # where the job creates the model and optimizer
        model, optimizer = ...
    runner.build(model, optimizer, plan)  # compiled loops; optimizer variables exist
    step = runner.restore()               # the latest checkpoint's step, or 0
    runner.start(step, training_input)    # training input opened at `step`
    result = runner.train(steps)          # a LoopResult
    runner.save(step)                     # only a state the loop found finite
    evaluation = runner.evaluate(evaluation_input)  # an Evaluation
    runner.wait()                         # every checkpoint written
    runner.close()

The job builds the input streams (`Input`) once for both backends; a runner
only says how it splits them (its `tf.distribute.InputContext`s) and feeds
them to its devices.
"""

import abc
import contextlib
import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Input:
    """One stream of batches: `dataset_fn(input_context)` gives an input
    pipeline's `tf.data.Dataset` of per-replica batches (TensorFlow) or
    per-process batches (JAX), as `context.get_per_replica_batch_size`
    says; `steps(num_input_pipelines)` is how many steps it holds (None:
    endless). Reading it inside `naming_bad_files()` turns tf.data's read
    and decode errors into ones that name the file."""

    dataset_fn: Callable
    steps: Callable[[int], int | None] = lambda num_input_pipelines: None
    naming_bad_files: Callable = contextlib.nullcontext


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """What one training loop of `steps` updates did."""

    loss: float  # mean training loss over the loop's steps
    top1: float  # training-mode accuracy over the loop's examples
    top5: float
    # The first step of the loop (0-based) whose loss was not finite, or None.
    first_non_finite_step: int | None
    # Whether the state after the loop's last update is fit to checkpoint:
    # every variable finite, and the loss it gives on the loop's last batch.
    state_finite: bool


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Accuracy over every validation image, each seen exactly once."""

    top1: float
    top5: float
    examples: int


class Runner(abc.ABC):
    """One backend's side of a run: devices, compiled loops, checkpoints.

    Attributes, set when it is created:
        backend: the Keras backend it runs on, "tensorflow" or "jax".
        description: the devices, for the start-up line and summary.json.
        replicas: how many devices the global batch is split over.
        chief: whether this process writes the run's files.
        accumulates_in_optimizer: whether gradient accumulation is the
            optimizer's (`gradient_accumulation_steps`, JAX's `model.fit`)
            rather than the runner's loop's (TensorFlow).
    """

    backend: str
    description: str
    replicas: int
    chief: bool
    accumulates_in_optimizer: bool

    @abc.abstractmethod
    def scope(self):
        """A context manager under which the model and optimizer are created."""

    @abc.abstractmethod
    def build(self, model, optimizer, plan):
        """Prepares training `model` with `optimizer` (a `keras_lars.LARS`, or
        a `LossScaleOptimizer` around one) as `plan` says; the optimizer's
        variables exist afterwards, so a checkpoint can be restored into them."""

    @abc.abstractmethod
    def restore(self):
        """Restores the newest checkpoint that is intact and returns its step
        (0 if there is none); skips damaged ones, saying which and why, and
        raises `checkpoints.NoIntactCheckpoint` if none of several is intact."""

    @abc.abstractmethod
    def start(self, start_step, training):
        """Opens the training `Input` (None: synthetic data made on the
        devices) for the steps from `start_step` on."""

    @abc.abstractmethod
    def train(self, steps):
        """Runs `steps` updates; returns a `LoopResult`."""

    @abc.abstractmethod
    def evaluate(self, evaluation):
        """Top-1 and top-5 over the evaluation `Input`'s masked examples; an
        `Evaluation`."""

    @abc.abstractmethod
    def save(self, step):
        """Checkpoints the model, the optimizer and the random states at
        `step` (perhaps in the background), keeping the newest few; raises if
        it cannot, leaving the previous checkpoint intact."""

    @abc.abstractmethod
    def wait(self):
        """Returns once every checkpoint saved so far is written whole."""

    @abc.abstractmethod
    def latest_checkpoint(self):
        """The path of the checkpoint last saved or restored, or None."""

    @abc.abstractmethod
    def close(self):
        """Undoes what creating the runner changed in the process."""
