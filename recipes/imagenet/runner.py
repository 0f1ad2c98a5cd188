"""What an ImageNet run asks of a Keras backend: the `Runner` contract and
the results it returns.

`recipes/imagenet/job.py` sets a runner up and `controller.py` drives it:

    runner = TensorFlowRunner(config)     # or JaxRunner: the devices, nothing built
    with runner.scope():                  # where the job creates the model and optimizer
        model, optimizer = ...
    runner.build(model, optimizer, plan)  # compiled loops; optimizer variables exist
    progress = runner.restore()           # the latest checkpoint's Progress, or Progress()
    runner.check_resumed(progress.step)   # every process holds the same state
    runner.start(step, training_input, loop_lengths)  # training input opened at `step`
    result = runner.train(steps)          # a LoopResult
    if runner.agree(wants_to_save):       # the chief's decision, on every process
        runner.save(progress)             # only a state the loop found finite
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

import numpy as np


@dataclasses.dataclass(frozen=True)
class Input:
    """One stream of batches: `dataset_fn(input_context)` gives an input
    pipeline's `tf.data.Dataset` of per-replica batches (TensorFlow) or
    per-process batches (JAX), as `context.get_per_replica_batch_size`
    says; `steps(num_input_pipelines)` is how many steps it holds (None:
    endless). Reading it inside `naming_bad_files()` turns tf.data's read
    and decode errors into ones that name the file, and a label outside the
    classes into a `bad_data.LabelOutOfRange`."""

    dataset_fn: Callable
    steps: Callable[[int], int | None] = lambda num_input_pipelines: None
    naming_bad_files: Callable = contextlib.nullcontext


@dataclasses.dataclass(frozen=True)
class Progress:
    """What a checkpoint records of the run besides its variables."""

    step: int = 0  # updates done
    train_seconds: float = 0.0  # time spent training, over every start of the run


class ProcessesDisagree(RuntimeError):
    """The processes of a run do not hold the same state after a restore."""


def state_checksum(step, arrays):
    """[step, sum, sum of squares] of a process's own copies of its
    variables (NumPy arrays), in float64: what `check_agreement` compares."""
    arrays = [np.asarray(a, np.float64) for a in arrays]
    return [step, sum(float(np.sum(a)) for a in arrays), sum(float(np.sum(a * a)) for a in arrays)]


def check_agreement(rows, directory):
    """`ProcessesDisagree` unless every row of `state_checksum`s (one per
    process or replica, gathered on every process) is the same."""
    rows = np.asarray(rows)
    if not np.all(rows == rows[0]):
        steps = ", ".join(str(int(s)) for s in rows[:, 0])
        raise ProcessesDisagree(
            f"The processes hold different states after resuming (steps {steps}, or weights "
            f"that differ): each must restore from {directory}, which all of them must "
            "reach; stopped before training"
        )


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
    # The optimizer's own count of the micro-steps it has run, read from the
    # devices after the loop (updates x `micro_steps_per_update`).
    micro_steps: int
    # The updates the loop ran: those asked for, or fewer after `request_stop`.
    steps: int


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
        bn_span: the images each batch-norm statistic covers, as the
            layers see the batch (`GhostBatchNormalization`'s `span`; a
            layer given exactly that many images normalises them whole).
            The runner reads `config.bn_span` (0: a replica's micro-batch)
            for its devices, and refuses a span they cannot take.
        optimizer_accumulation_steps: the optimizer's
            `gradient_accumulation_steps`, as the runner decides it: the
            accumulation steps where the optimizer accumulates (JAX's
            `model.fit`), None where the runner's loop splits each batch
            itself (TensorFlow) or there is one micro-batch an update.
        micro_steps_per_update: how many micro-steps the optimizer counts
            per update (`optimizer_accumulation_steps`, or 1).
        skips_overflowing_steps: whether an update may be skipped uncounted
            (float16's loss scaling, after an overflow).
        default_dtype: the precision when none is asked for: "bfloat16" on
            TPUs, else "float32".
    """

    backend: str
    description: str
    replicas: int
    chief: bool
    bn_span: int
    optimizer_accumulation_steps: int | None
    micro_steps_per_update: int
    skips_overflowing_steps: bool
    default_dtype: str

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
        """Restores the newest checkpoint of the run (the chief's, on every
        process) that is intact and returns its `Progress` (`Progress()` if
        there is none); skips damaged ones, saying which and why, and raises
        `checkpoints.NoIntactCheckpoint` if none of several is intact."""

    @abc.abstractmethod
    def check_resumed(self, step):
        """Returns if every process restored `step` and holds the same
        variables (a checksum of them); else raises `ProcessesDisagree` on
        every process, naming the steps."""

    @abc.abstractmethod
    def start(self, start_step, training, loop_lengths):
        """Opens the training `Input` (None: synthetic data made on the
        devices) for the steps from `start_step` on; every loop ahead is
        one of `loop_lengths` long."""

    @abc.abstractmethod
    def train(self, steps):
        """Runs `steps` updates; returns a `LoopResult`. After
        `request_stop` it may stop early, after a whole update, every
        process after the same one."""

    @abc.abstractmethod
    def profile_start(self, logdir):
        """Starts tracing this process's host and devices into `logdir`
        (TensorBoard's profile plugin reads it)."""

    @abc.abstractmethod
    def profile_stop(self):
        """Stops the trace `profile_start` began and writes it."""

    @abc.abstractmethod
    def request_stop(self):
        """Asks the running (or next) loop to end early; safe from any thread."""

    @abc.abstractmethod
    def any_process(self, flag):
        """Whether `flag` (a bool) is true on any process: a collective,
        called by every process at the same point."""

    @abc.abstractmethod
    def evaluate(self, evaluation):
        """Top-1 and top-5 over the evaluation `Input`'s masked examples; an
        `Evaluation`."""

    @abc.abstractmethod
    def agree(self, decision):
        """The chief's `decision` (a bool), on every process: a collective,
        called by every process at the same point."""

    @abc.abstractmethod
    def save(self, progress):
        """Checkpoints the model, the optimizer, the random states and
        `progress` (a `Progress`) at `progress.step`, perhaps in the
        background, keeping the newest few; every process calls it, only
        the chief keeps the files. Raises `checkpoints.CheckpointNotSaved` if
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
