"""One ImageNet training run, from a resolved `TrainConfig` to `summary.json`.

    run(config)

1. Checks everything that can be checked before any file is written: the
   strategy (and its replicas), the batch split, the data.
2. Writes `model_dir/config.json` (the settings and the derived step counts);
   a rerun with different training settings in the same `model_dir` is refused.
3. Builds the model, `keras_lars.LARS` and its `PolynomialWarmup` schedule
   under the strategy, and resumes from the latest checkpoint if there is one.
4. Trains loop by loop (`steps_per_loop` steps per host call), checkpointing
   after each, evaluating every `eval_every_epochs` and at the end, with
   TensorBoard scalars in `model_dir/train` and `model_dir/eval` and a
   progress bar; writes `summary.json`.

A loop whose loss is not finite stops the run (`TrainingDiverged`, naming the
step) without saving: the last checkpoint is the last good state.

Resuming. The optimizer's `iterations` is saved with the weights, so the
schedule continues where it was. With `deterministic=True` the input stream
is rebuilt and the examples already consumed are skipped (read, not decoded),
so a killed and resumed run ends with exactly the weights of an uninterrupted
one. Otherwise the stream is reshuffled from the resume step on, as the MLPerf
and Model Garden loops do; skipping would cost a read of everything consumed.
"""

import contextlib
import dataclasses
import json
import math
import os
import time

import keras
import tensorflow as tf
from tqdm import tqdm

import keras_lars
from recipes import imagenet_input
from recipes import models
from recipes import strategies
from recipes import train_config
from recipes.train_loop import Trainer

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
CHECKPOINTS_KEPT = 3
TRACKED_LAYERS = 4  # kernels whose trust ratio goes to TensorBoard
RESEED_STRIDE = 1_000_003  # a resumed, non-deterministic stream's seed offset per step


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step counts derived from the config and the data."""

    replicas: int
    num_classes: int
    train_images: int
    eval_images: int  # 0 with synthetic data: no evaluation
    steps_per_epoch: int
    train_steps: int
    warmup_steps: int
    steps_per_loop: int
    eval_every_steps: int  # 0: only at the end


def run(config):
    """Trains as `config` says; returns the summary dict (also in summary.json)."""
    if config.logical_cpus:
        strategies.split_cpu(config.logical_cpus)
    strategy = strategies.create(config.strategy, config.tpu)
    train_source, eval_source = _sources(config)
    plan = _plan(config, strategy, train_source, eval_source)
    _write_config(config, plan, write=_is_chief(strategy))
    print(f"{strategies.describe(strategy)}; {_describe(plan)}")

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[config.dtype])
    try:
        return _train(config, plan, strategy, train_source, eval_source)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _sources(config):
    if config.synthetic:
        return None, None
    if config.tfds_data_dir:
        return (
            imagenet_input.TFDSSource(config.tfds_data_dir, "train"),
            imagenet_input.TFDSSource(config.tfds_data_dir, "validation"),
        )
    for split in ("train", "validation"):
        pattern = os.path.join(config.data_dir, f"{split}-*")
        if not tf.io.gfile.glob(pattern):
            raise FileNotFoundError(
                f"--data_dir={config.data_dir} has no {split}-* TFRecord files "
                "(write them with tools/imagenet_to_tfrecords.py)"
            )
    return (
        imagenet_input.TFRecordSource(os.path.join(config.data_dir, "train-*")),
        imagenet_input.TFRecordSource(os.path.join(config.data_dir, "validation-*")),
    )


def _plan(config, strategy, train_source, eval_source):
    replicas = strategy.num_replicas_in_sync
    split = replicas * config.accumulation_steps
    if config.global_batch_size % split:
        raise ValueError(
            f"--global_batch_size={config.global_batch_size} does not divide into "
            f"{replicas} replica(s) x --accumulation_steps={config.accumulation_steps}"
        )
    if config.jit_compile and replicas > 1 and config.strategy != "tpu":
        raise ValueError(
            "--jit_compile needs a single replica: XLA with several MirroredStrategy "
            f"replicas fails in Keras 3 (keras #19005); {replicas} replicas here"
        )
    if config.synthetic:
        num_classes = imagenet_input.IMAGENET_CLASSES
        train_images, eval_images = imagenet_input.IMAGENET_TRAIN_IMAGES, 0
    else:
        num_classes = train_source.num_classes
        train_images, eval_images = train_source.count(), eval_source.count()
    steps_per_epoch = math.ceil(train_images / config.global_batch_size)
    train_steps = config.train_steps or math.ceil(config.train_epochs * steps_per_epoch)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if warmup_steps > train_steps:  # a short run of a long preset: a smoke or speed test
        print(
            f"Note: --warmup_epochs={config.warmup_epochs:g} is {warmup_steps} steps, longer "
            f"than the run's {train_steps}: the whole run warms up."
        )
        warmup_steps = train_steps
    return Plan(
        replicas=replicas,
        num_classes=num_classes,
        train_images=train_images,
        eval_images=eval_images,
        steps_per_epoch=steps_per_epoch,
        train_steps=train_steps,
        warmup_steps=warmup_steps,
        steps_per_loop=config.steps_per_loop or min(steps_per_epoch, train_steps),
        eval_every_steps=round(config.eval_every_epochs * steps_per_epoch),
    )


def _describe(plan):
    return (
        f"{plan.train_steps} steps ({plan.steps_per_epoch} an epoch, {plan.warmup_steps} of "
        f"warm-up), {plan.steps_per_loop} per loop, {plan.num_classes} classes"
    )


def _write_config(config, plan, write):
    """config.json in model_dir (if `write`); refuses a model_dir holding a
    run with other training settings."""
    path = os.path.join(config.model_dir, "config.json")
    settings = {"config": config.to_dict(), "plan": dataclasses.asdict(plan)}
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)["config"]
        changed = {
            k: (saved.get(k), v)
            for k, v in config.to_dict().items()
            if saved.get(k) != v and k not in train_config.MAY_CHANGE_ON_RESUME
        }
        if changed:
            detail = ", ".join(f"--{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items()))
            raise ValueError(
                f"--model_dir={config.model_dir} holds a run with other settings ({detail}); "
                "use a new --model_dir"
            )
    print("Settings:", json.dumps(settings["config"], sort_keys=True))
    if write:
        tf.io.gfile.makedirs(config.model_dir)
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(settings, f, indent=1)


def _build(config, plan):
    """Model and optimizer; call inside the strategy's scope."""
    model = models.build(
        config.model,
        plan.num_classes,
        config.image_size,
        dropout=config.dropout,
        zero_init_residual=config.zero_init_residual,
        alexnet_groups=config.alexnet_groups,
        alexnet_bn_variant=config.alexnet_bn_variant,
    )
    schedule = keras_lars.PolynomialWarmup(
        config.learning_rate,
        decay_steps=plan.train_steps - plan.warmup_steps + 1,  # as MLPerf
        warmup_steps=plan.warmup_steps,
        end_learning_rate=config.end_learning_rate,
    )
    lars = keras_lars.LARS(
        schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        trust_coefficient=config.trust_coefficient,
        track_trust_ratios=True,
        # adapt_biases: biases and normalisation variables still skip the decay.
        adaptation_exclude_patterns=()
        if config.adapt_biases
        else keras_lars.DEFAULT_EXCLUDE_PATTERNS,
    )
    optimizer = keras.optimizers.LossScaleOptimizer(lars) if config.dtype == "float16" else lars
    optimizer.build(model.trainable_variables)  # before a checkpoint is restored into it
    return model, optimizer, lars


def _train(config, plan, strategy, train_source, eval_source):
    keras.utils.set_random_seed(config.seed)  # initialisation and dropout
    with strategy.scope():
        model, optimizer, lars = _build(config, plan)
        trainer = Trainer(
            strategy,
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
    checkpoint = tf.train.Checkpoint(
        model=model,
        optimizer=optimizer,
        # Dropout's random state, which tf.train.Checkpoint does not reach
        # through the model (tests/test_tensorflow.py pins this).
        random_states=[v for v in model.non_trainable_variables if "seed_generator" in v.path],
    )
    manager = tf.train.CheckpointManager(
        checkpoint, _checkpoint_dir(config, strategy), max_to_keep=CHECKPOINTS_KEPT
    )
    print(_describe_exclusions(lars.exclusions()))
    start_step = _restore(config, checkpoint, optimizer, lars)
    iterator = _training_iterator(config, strategy, train_source, start_step)
    log = _Log(config, strategy, [v.path for v in model.trainable_variables])
    naming = train_source.naming_bad_files if train_source else contextlib.nullcontext
    step, evaluation = start_step, None
    images, seconds = 0, 0.0  # after the first loop, which also compiles
    started = time.time()
    with tqdm(total=plan.train_steps, initial=step, unit="step", desc="training") as bar:
        while step < plan.train_steps:
            steps = _loop_length(step, plan)
            loop_started = time.time()
            with naming():
                result = trainer.train(iterator, steps)
            if result["non_finite_step"] is not None:
                raise TrainingDiverged(
                    f"The loss is not finite at step {result['non_finite_step']}; stopped "
                    f"without saving. The last good checkpoint: {manager.latest_checkpoint}"
                )
            loop_seconds = time.time() - loop_started
            if step > start_step:
                images += steps * config.global_batch_size
                seconds += loop_seconds
            step += steps
            manager.save(checkpoint_number=step)
            throughput = steps * config.global_batch_size / loop_seconds
            log.training(step, result, lars, throughput)
            bar.set_postfix(loss=f"{result['loss']:.3f}", img_s=f"{throughput:.0f}")
            bar.update(steps)
            if _evaluate_now(step, plan) and eval_source:
                evaluation = _evaluate(config, plan, strategy, trainer, eval_source)
                log.evaluation(step, evaluation)
                bar.write(
                    f"step {step}: top-1 {100 * evaluation['top1']:.2f}%, top-5 "
                    f"{100 * evaluation['top5']:.2f}% on {evaluation['examples']} images"
                )
    log.close()
    summary = dict(
        model=config.model,
        preset=config.preset,
        strategy=strategies.describe(strategy),
        steps=step,
        epochs=round(step / plan.steps_per_epoch, 3),
        resumed_from_step=start_step,
        top1=evaluation and evaluation["top1"],
        top5=evaluation and evaluation["top5"],
        eval_images=evaluation and evaluation["examples"],
        wall_seconds=round(time.time() - started, 1),
        images_per_second=round(images / seconds, 1) if seconds else None,
    )
    if _is_chief(strategy):
        with tf.io.gfile.GFile(os.path.join(config.model_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
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


def _is_chief(strategy):
    """Whether this process writes the run's files (the only one except under
    MultiWorkerMirroredStrategy, where worker 0 does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


def _checkpoint_dir(config, strategy):
    """model_dir/checkpoints; other workers save their copy aside, since
    saving is collective under MultiWorkerMirroredStrategy."""
    if _is_chief(strategy):
        return os.path.join(config.model_dir, "checkpoints")
    resolver = strategy.cluster_resolver
    return os.path.join(
        config.model_dir, "workers", f"{resolver.task_type}{resolver.task_id}", "checkpoints"
    )


def _restore(config, checkpoint, optimizer, lars):
    """Restores the chief's latest checkpoint, if any; returns its step."""
    latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints"))
    if not latest:
        return 0
    checkpoint.restore(latest).assert_existing_objects_matched()
    step = int(optimizer.iterations.numpy())
    print(
        f"Resumed from step {step} ({latest}); learning rate "
        f"{float(lars.learning_rate.numpy()):.6g}"
    )
    return step


class _Log:
    """TensorBoard scalars (model_dir/train, model_dir/eval), chief only."""

    def __init__(self, config, strategy, variable_paths):
        chief = _is_chief(strategy)
        self.writers = {
            name: tf.summary.create_file_writer(os.path.join(config.model_dir, name))
            if chief
            else tf.summary.create_noop_writer()
            for name in ("train", "eval")
        }
        self.tracked = _tracked_kernels(variable_paths)

    def training(self, step, result, lars, images_per_second):
        ratios = lars.trust_ratios()
        scalars = {
            "loss": result["loss"],
            "top1": result["top1"],
            "top5": result["top5"],
            "learning_rate": float(lars.learning_rate.numpy()),
            "images_per_second": images_per_second,
            **{f"trust_ratio/{path}": ratios[path] for path in self.tracked},
        }
        self._write("train", step, scalars)

    def evaluation(self, step, evaluation):
        self._write("eval", step, {"top1": evaluation["top1"], "top5": evaluation["top5"]})

    def _write(self, name, step, scalars):
        with self.writers[name].as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value)

    def close(self):
        for writer in self.writers.values():
            writer.flush()


def _training_iterator(config, strategy, source, start_step):
    if source is None:  # synthetic: each replica makes its own batches
        return None
    resumed = start_step > 0

    def dataset_fn(context):
        per_pipeline_step = config.global_batch_size // context.num_input_pipelines
        if resumed and config.deterministic:  # replay: skip what was consumed
            seed, skip = config.seed, start_step * per_pipeline_step
        elif resumed:  # reshuffle from here on
            seed, skip = config.seed + RESEED_STRIDE * start_step, 0
        else:
            seed, skip = config.seed, 0
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

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def _evaluate(config, plan, strategy, trainer, source):
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

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    steps = imagenet_input.evaluation_steps(
        plan.eval_images, config.global_batch_size, pipelines[0]
    )
    with source.naming_bad_files():
        return trainer.evaluate(iterator, steps)


def _loop_length(step, plan):
    """Steps until the next loop boundary: the loop size, an evaluation, the end."""
    stop = min(step + plan.steps_per_loop, plan.train_steps)
    if plan.eval_every_steps:
        stop = min(stop, (step // plan.eval_every_steps + 1) * plan.eval_every_steps)
    return stop - step


def _evaluate_now(step, plan):
    if step == plan.train_steps:
        return True
    return bool(plan.eval_every_steps) and step % plan.eval_every_steps == 0


def _tracked_kernels(paths):
    """A few kernels spread from the first layer to the last."""
    kernels = [p for p in paths if p.endswith("kernel")]
    if len(kernels) <= TRACKED_LAYERS:
        return kernels
    last = len(kernels) - 1
    return [kernels[round(i * last / (TRACKED_LAYERS - 1))] for i in range(TRACKED_LAYERS)]
