"""`model_dir/mlperf.log`: a ResNet-50 run's MLPerf log, written with
MLCommons' `mllog` so that MLPerf's own compliance checker reads it:

    python -m mlperf_logging.compliance_checker --usage training \\
        --ruleset 3.1.0 /runs/r50-8k/mlperf.log

(3.1.0 is the last training ruleset with ResNet-50.) The chief writes it. A
run logs, in the order the rules ask: the submission's description and
`cache_clear`, `init_start`, every hyper-parameter the ResNet LARS rules
check, `init_stop` and `run_start` when training starts (after the model,
checkpoint and input are set up: `controller.py`), a block per stretch of
training between two evaluations, `eval_start`, `eval_accuracy` and
`eval_stop` at each evaluation, and `run_stop` with `status` success (the
target reached) or aborted (the steps ran out, or the run failed).

A resumed run appends to the log what it trains after its checkpoint: a
log over a resume is readable, but its timestamps include the time the run
was down, so it is no MLPerf result (MLPerf times one uninterrupted run).
A run stopped by SIGTERM logs no `run_stop`: it is not over.
"""

import dataclasses
import logging
import os

import tensorflow as tf

from .plan import configured_warmup_steps

FILE = "mlperf.log"
BENCHMARK = "resnet"
# The rules MLPerf's checker applies (closed_resnet_lars.yaml): the LARS
# schedule's decay power, epsilon, and the end rate the rules fix.
POLY_POWER = 2
LARS_EPSILON = 0.0


@dataclasses.dataclass(frozen=True)
class Submission:
    """The `submission_*` keys (flags `--mlperf_submission_*`)."""

    org: str = "keras_lars"
    platform: str = ""  # default: the devices the run found
    division: str = "closed"
    status: str = "research"


class MLPerfLog:
    """The log of one ResNet-50 run's chief; a `NoLog` elsewhere."""

    def __init__(self, model_dir):
        from mlperf_logging import mllog
        from mlperf_logging.mllog.mllog import MLLogger

        self.constants = mllog.constants
        self.path = os.path.join(model_dir, FILE)
        self.lines = []
        logger = logging.Logger(f"keras_lars.mlperf.{id(self)}")  # not in the global registry
        logger.propagate = False
        logger.addHandler(_Lines(self.lines))
        self.mllogger = MLLogger(logger=logger, default_stack_offset=2)
        self._block = None  # the first epoch of the block under way

    # --- Before training -----------------------------------------------------

    def initialising(self, config, plan, submission, resumed, started_ms):
        """init_start (at `started_ms`, when the process started), the
        submission and every hyper-parameter; on resume nothing (the log holds
        them already), else a log begun by a start that never trained is
        begun again."""
        if resumed:
            return
        if tf.io.gfile.exists(self.path):
            tf.io.gfile.remove(self.path)
        c, event = self.constants, self.mllogger.event
        self.mllogger.start(key=c.INIT_START, time_ms=started_ms)
        event(key=c.SUBMISSION_BENCHMARK, value=BENCHMARK)
        event(key=c.SUBMISSION_ORG, value=submission.org)
        event(key=c.SUBMISSION_DIVISION, value=submission.division)
        event(key=c.SUBMISSION_STATUS, value=submission.status)
        event(key=c.SUBMISSION_PLATFORM, value=submission.platform)
        # The recipe does not drop the host's file caches: a submission does so
        # before the run, as MLPerf's rules ask, and says so here.
        event(key=c.CACHE_CLEAR, value=False)
        event(key=c.SEED, value=config.seed)
        event(key=c.GLOBAL_BATCH_SIZE, value=config.global_batch_size)
        event(key=c.GRADIENT_ACCUMULATION_STEPS, value=config.accumulation_steps)
        event(key=c.TRAIN_SAMPLES, value=plan.train_images)
        event(key=c.EVAL_SAMPLES, value=plan.eval_images)
        event(key=c.OPT_NAME, value="lars")
        event(key=c.LARS_OPT_BASE_LEARNING_RATE, value=config.learning_rate)
        event(key=c.LARS_OPT_END_LR, value=config.end_learning_rate)
        event(key=c.LARS_OPT_LR_DECAY_POLY_POWER, value=POLY_POWER)
        event(key=c.LARS_OPT_LR_DECAY_STEPS, value=plan.train_steps - plan.warmup_steps + 1)
        event(key=c.LARS_EPSILON, value=LARS_EPSILON)
        warmup_epochs = config.warmup_epochs
        if plan.warmup_steps != configured_warmup_steps(config, plan.steps_per_epoch):  # cut
            warmup_epochs = plan.warmup_steps / plan.steps_per_epoch
        event(key=c.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, value=warmup_epochs)
        event(key=c.LARS_OPT_MOMENTUM, value=config.momentum)
        event(key=c.LARS_OPT_WEIGHT_DECAY, value=config.weight_decay)
        micro_batch = config.global_batch_size // (plan.replicas * config.accumulation_steps)
        event(key=c.MODEL_BN_SPAN, value=config.bn_span or micro_batch)
        self.flush()

    def training_starts(self, resumed):
        """init_stop and run_start (once: a resumed run is the same run)."""
        if not resumed:
            self.mllogger.end(key=self.constants.INIT_STOP)
            self.mllogger.start(key=self.constants.RUN_START)
            self.flush()

    # --- While training -------------------------------------------------------

    def block_starts(self, epoch, epochs):
        """A stretch of `epochs` epochs of training from `epoch` on."""
        self._block = epoch
        self.mllogger.start(
            key=self.constants.BLOCK_START,
            metadata={"first_epoch_num": epoch, "epoch_count": epochs},
        )

    def evaluated(self, epoch, top1):
        """The block ends at `epoch` with an evaluation of top-1 `top1`."""
        c = self.constants
        if self._block is not None:
            self.mllogger.end(key=c.BLOCK_STOP, metadata={"first_epoch_num": self._block})
            self._block = None
        self.mllogger.start(key=c.EVAL_START, metadata={"epoch_num": epoch})
        self.mllogger.event(key=c.EVAL_ACCURACY, value=top1, metadata={"epoch_num": epoch})
        self.mllogger.end(key=c.EVAL_STOP, metadata={"epoch_num": epoch})
        self.flush()

    def run_stops(self, success):
        c = self.constants
        status = c.SUCCESS if success else c.ABORTED
        self.mllogger.end(key=c.RUN_STOP, metadata={"status": status})
        self.flush()

    def flush(self):
        """Appends the new lines to the file (rewritten whole, then renamed:
        object stores cannot append)."""
        if not self.lines:
            return
        old = ""
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                old = f.read()
        with tf.io.gfile.GFile(self.path + ".partial", "w") as f:
            f.write(old + "".join(line + "\n" for line in self.lines))
        tf.io.gfile.rename(self.path + ".partial", self.path, overwrite=True)
        self.lines.clear()


class NoLog:
    """What runs without an MLPerf log (AlexNet, the other processes) call."""

    def initialising(self, config, plan, submission, resumed, started_ms):
        pass

    def training_starts(self, resumed):
        pass

    def block_starts(self, epoch, epochs):
        pass

    def evaluated(self, epoch, top1):
        pass

    def run_stops(self, success):
        pass

    def flush(self):
        pass


class _Lines(logging.Handler):
    def __init__(self, lines):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())
