"""One ImageNet training run, from a resolved `TrainConfig` to `summary.json`.

    run(config)

1. Sets up the devices through the runner of the Keras backend in use
   (`tf_runner.py`: a tf.distribute strategy; `jax_runner.py`:
   keras.distribution) and checks everything that can be checked before any
   file is written: the batch split over replicas and accumulation steps, the
   data, and, on a rerun, that `model_dir` holds this same run
   (`model_dir.py`).
2. Builds the model, `keras_lars.LARS` and its `PolynomialWarmup` schedule,
   and resumes from the newest intact checkpoint if there is one
   (`checkpoints.py`); then writes `model_dir/config.json`, once.
3. Hands the loops to the loop controller (`controller.py`: when loops end,
   evaluate, checkpoint and stop, and the checks after each loop);
   TensorBoard scalars in `model_dir/train` and `model_dir/eval`, a progress
   bar, and `summary.json`.

Resuming. The optimizer's `iterations` is saved with the weights, so the
schedule continues where it was, and the input stream is reopened where it
stopped (`batching.resume_position`): exactly, with `deterministic=True`.
"""

import contextlib
import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf

import keras_lars

from .. import faults
from .. import optimization
from . import batching
from . import config as config_lib
from . import controller
from . import data_service
from . import mlperf_log
from . import model_dir
from . import models
from . import plan as plan_lib
from . import preprocessing as preprocessing_lib
from . import run_lock
from . import sources
from .runner import Input

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
TRACKED_LAYERS = 4  # kernels whose trust ratio goes to TensorBoard


def run(config):
    """Trains as `config` says; returns the summary dict (also in summary.json)."""
    started_ms = int(time.time() * 1000)  # MLPerf's init_start
    backend = keras.backend.backend()
    config_lib.check_backend(config, backend)
    runner = _runner(config, backend)
    if config.dtype is None:  # the devices decide: bfloat16 on TPUs
        config = dataclasses.replace(config, dtype=runner.default_dtype)
    try:
        # The chief alone writes the run's files: one writer per run.
        with run_lock.RunLock(config.model_dir) if runner.chief else contextlib.nullcontext():
            return _run(config, backend, runner, started_ms)
    finally:
        runner.close()


def _run(config, backend, runner, started_ms):
    train_source, eval_source = _sources(config)
    _say_if_no_bounding_boxes(config, train_source)
    plan = plan_lib.compute(config, runner.replicas, train_source, eval_source)
    plan = model_dir.plan_to_run(config, plan, backend, runner.chief)
    print(f"{runner.description}; {_describe(plan)}")
    with _precision(config.dtype):
        keras.utils.set_random_seed(config.seed)  # initialisation and dropout
        model, lars = _build(config, plan, runner)
        progress = runner.restore()
        runner.check_resumed(progress.step)
        if runner.chief:
            model_dir.write_once(config, plan, backend)
        print("Settings:", json.dumps(config.to_dict(), sort_keys=True))
        finished = model_dir.finished_summary(config, plan, progress.step)
        if runner.agree(finished is not None):  # the chief's reading, on every process
            print(
                f"This run is over (step {progress.step}"
                f"{', target reached' if finished and finished['target_reached'] else ''}): "
                f"nothing to do; its summary is {model_dir.summary_path(config)}"
            )
            return finished
        mlperf = _mlperf_log(config, runner)
        resumed = progress.step > 0
        mlperf.initialising(config, plan, _submission(config, runner), resumed, started_ms)
        summary = _train(
            config, plan, runner, model, lars, progress, train_source, eval_source, mlperf
        )
        runner.wait()
        return summary


def _runner(config, backend):
    """The runner of `backend` (config_lib.check_backend has checked that
    the strategy belongs to it)."""
    if backend == "jax":
        from .jax_runner import JaxRunner

        return JaxRunner(config)
    from .tf_runner import TensorFlowRunner

    return TensorFlowRunner(config)


@contextlib.contextmanager
def _precision(dtype):
    """Keras's global mixed-precision policy for `dtype`, restored afterwards."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[dtype])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _sources(config):
    if config.synthetic:
        return None, None
    if config.tfds_data_dir:
        return (
            sources.TFDSSource(config.tfds_data_dir, "train"),
            sources.TFDSSource(config.tfds_data_dir, "validation"),
        )
    for split in ("train", "validation"):
        pattern = os.path.join(config.data_dir, f"{split}-*")
        if not tf.io.gfile.glob(pattern):
            raise FileNotFoundError(
                f"--data_dir={config.data_dir} has no {split}-* TFRecord files "
                "(write them with tools/imagenet_to_tfrecords.py)"
            )
    return (
        sources.TFRecordSource(os.path.join(config.data_dir, "train-*")),
        sources.TFRecordSource(os.path.join(config.data_dir, "validation-*")),
    )


def _say_if_no_bounding_boxes(config, train_source):
    preprocessing = preprocessing_lib.PREPROCESSING[config.preprocessing]
    if preprocessing.bounding_boxes and train_source and not train_source.has_bounding_boxes():
        print(
            f"Note: --preprocessing={config.preprocessing} crops around ImageNet's bounding "
            "boxes, and the training records hold none: its crops use the whole image "
            "(the converter's --bounding_boxes stores them)"
        )


def _describe(plan):
    return (
        f"{plan.train_steps} steps ({plan.steps_per_epoch} an epoch, {plan.warmup_steps} of "
        f"warm-up), {plan.steps_per_loop} per loop, {plan.num_classes} classes"
    )


def training_input(config, source, start_step):
    """The training stream from `start_step` on: each input pipeline's share,
    reopened where the steps before consumed it (see
    `batching.resume_position`); with --data_service, made by the
    service's workers (`data_service.py` says what a resume gets there)."""

    def dataset_fn(context):
        per_pipeline_step = config.global_batch_size // context.num_input_pipelines
        seed, skip = batching.resume_position(
            config.seed, config.deterministic, start_step, per_pipeline_step
        )
        settings = dict(
            global_batch_size=config.global_batch_size,
            input_context=context,
            image_size=config.image_size,
            preprocessing=config.preprocessing,
            deterministic=config.deterministic,
            seed=seed,
            skip=skip,
            num_classes=source.num_classes,
        )
        if config.data_service:
            return data_service.training_batches(
                source,
                address=config.data_service,
                job=data_service.job_name(config.model_dir, start_step),
                **settings,
            )
        return batching.batches(source, training=True, **settings)

    return Input(dataset_fn, naming_bad_files=source.naming_bad_files)


def evaluation_input(config, plan, source):
    """Every validation image once, padded with masked ones to whole batches."""

    batch = plan_lib.evaluation_batch_size(config)

    def dataset_fn(context):
        return batching.evaluation_batches(
            source,
            global_batch_size=batch,
            input_context=context,
            image_size=config.image_size,
            preprocessing=config.preprocessing,
            num_classes=source.num_classes,
        )

    def steps(num_input_pipelines):
        return batching.evaluation_steps(source, batch, num_input_pipelines)

    return Input(dataset_fn, steps, source.naming_bad_files)


def _build(config, plan, runner):
    """The model and LARS (in a LossScaleOptimizer for float16), built by the
    runner; returns (model, lars)."""
    with runner.scope():
        model = models.build_for(config, plan.num_classes, runner.bn_span)
        lars = optimization.lars(
            config.learning_rate,
            train_steps=plan.train_steps,
            warmup_steps=plan.warmup_steps,
            end_learning_rate=config.end_learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            trust_coefficient=config.trust_coefficient,
            adaptation_exclude_patterns=optimization.ADAPT_ALL
            if config.adapt_biases
            else keras_lars.DEFAULT_EXCLUDE_PATTERNS,
            track_trust_ratios=True,
            gradient_accumulation_steps=runner.optimizer_accumulation_steps,
        )
        optimizer = lars
        if config.dtype == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(lars)
    runner.build(model, optimizer, plan)
    print(_describe_exclusions(lars.exclusions()))
    return model, lars


def _mlperf_log(config, runner):
    """ResNet-50's MLPerf log, written by the chief of a run on real data."""
    if config.model == "resnet50" and runner.chief and not config.synthetic:
        return mlperf_log.MLPerfLog(config.model_dir)
    return mlperf_log.NoLog()


def _submission(config, runner):
    return mlperf_log.Submission(
        org=config.mlperf_submission_org,
        platform=config.mlperf_submission_platform or runner.description,
        division=config.mlperf_submission_division,
        status=config.mlperf_submission_status,
    )


def _train(config, plan, runner, model, lars, progress, train_source, eval_source, mlperf):
    """Trains from `progress` through the loop controller; writes and returns
    the summary."""
    if progress.step:
        print(
            f"Resumed from step {progress.step} ({runner.latest_checkpoint()}); learning rate "
            f"{optimization.learning_rate(lars):.6g}"
        )
    log = _Log(config, runner.chief, [v.path for v in model.trainable_variables])
    started = time.time()
    try:
        outcome = controller.Controller(
            config, plan, runner, lars, log, faults.Faults.from_environment(), mlperf
        ).run(
            progress,
            train_source and training_input(config, train_source, progress.step),
            eval_source and evaluation_input(config, plan, eval_source),
        )
    except BaseException:
        # A stopped run's scalars too (the command line ends without
        # teardown); the stop, not a failed flush, is what the run reports.
        with contextlib.suppress(Exception):
            log.flush()
        raise
    log.flush()
    seconds = time.time() - started
    evaluation = outcome.evaluation
    summary = dict(
        model=config.model,
        preset=config.preset,
        backend=runner.backend,
        strategy=runner.description,
        steps=outcome.step,
        epochs=round(outcome.step / plan.steps_per_epoch, 3),
        resumed_from_step=progress.step,
        top1=evaluation and evaluation.top1,
        top5=evaluation and evaluation.top5,
        eval_images=evaluation and evaluation.examples,
        target_accuracy=config.target_accuracy,
        target_reached=outcome.target_reached,
        # As MLPerf counts a run: training only (compiling the first loop of
        # each start included), summed over every start of a resumed run.
        train_seconds=round(outcome.train_seconds, 1),
        # This process alone, set-up, checkpoints and evaluation included.
        wall_seconds=round(seconds, 1),
        # Training alone, after this start's first loop (which compiles).
        images_per_second=outcome.images_per_second and round(outcome.images_per_second, 1),
        wall_images_per_second=round(
            (outcome.step - progress.step) * config.global_batch_size / seconds, 1
        ),
    )
    summary = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()
    }  # strict JSON
    if runner.chief:
        model_dir.write_summary(config, summary)
    print("Summary:", json.dumps(summary))
    return summary


def _describe_exclusions(table):
    """ "LARS: 54 variables decayed and adapted (conv1/kernel, ...); ..." """
    groups = {}
    for path, treatment in table.items():
        groups.setdefault((treatment["weight_decay"], treatment["adaptation"]), []).append(path)
    names = {
        (True, True): "decayed and adapted",
        (False, True): "adapted, not decayed",
        (True, False): "decayed, not adapted",
        (False, False): "neither decayed nor adapted",
    }
    parts = [
        f"{len(paths)} {names[key]} ({', '.join(paths[:2])}{', ...' if len(paths) > 2 else ''})"
        for key, paths in sorted(groups.items(), reverse=True)
    ]
    return "LARS variables: " + "; ".join(parts)


class _Log:
    """TensorBoard scalars (model_dir/train, model_dir/eval), chief only."""

    def __init__(self, config, chief, variable_paths):
        self.writers = {
            name: tf.summary.create_file_writer(os.path.join(config.model_dir, name))
            if chief
            else tf.summary.create_noop_writer()
            for name in ("train", "eval")
        }
        self.tracked = _tracked_kernels(variable_paths)

    def training(self, step, result, lars, images_per_second):
        ratios = lars.trust_ratios(self.tracked)
        scalars = {
            "loss": result.loss,
            "top1": result.top1,
            "top5": result.top5,
            "learning_rate": optimization.learning_rate(lars),
            "images_per_second": images_per_second,
            **{f"trust_ratio/{path}": ratios[path] for path in self.tracked},
        }
        self._write("train", step, scalars)

    def evaluation(self, step, evaluation):
        self._write("eval", step, {"top1": evaluation.top1, "top5": evaluation.top5})

    def _write(self, name, step, scalars):
        with self.writers[name].as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value)

    def flush(self):
        for writer in self.writers.values():
            writer.flush()


def _tracked_kernels(paths):
    """A few kernels spread from the first layer to the last."""
    kernels = [p for p in paths if p.endswith("kernel")]
    if len(kernels) <= TRACKED_LAYERS:
        return kernels
    last = len(kernels) - 1
    return [kernels[round(i * last / (TRACKED_LAYERS - 1))] for i in range(TRACKED_LAYERS)]
