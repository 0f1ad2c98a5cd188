"""A run's plan: its step counts, derived from the settings and the data at
its first start, and what a resumed run may change.

    plan = compute(config, replicas, train_source, eval_source)  # a first start
    plan = resumed(config, plan, saved_config, saved_plan)       # a rerun

The plan is stored in the run's `config.json` (`model_dir.py`), its fields
under these names; a rerun keeps the saved plan but for the fields that may
change (`PLAN_MAY_CHANGE_ON_RESUME`), once its settings are found to be the
same run's (`SETTINGS_MAY_CHANGE_ON_RESUME` aside).
"""

import dataclasses
import math

from .sources import IMAGENET_CLASSES

IMAGENET_TRAIN_IMAGES = 1_281_167  # ImageNet's training split: a synthetic run's epochs

# What a resumed run may change: where and how it runs, or when it stops, not
# what it computes. Settings (TrainConfig's fields; the backend may not
# change: its checkpoints are its own, `model_dir.py` says) and the plan's
# fields that follow them (the devices, and how often the host looks). The
# data may move (its directory), but not change: the plan's DATA_FIELDS say.
SETTINGS_MAY_CHANGE_ON_RESUME = frozenset(
    {
        "strategy",
        "tpu",
        "logical_cpus",
        "multi_process",
        "jit_compile",
        "compile_optimizer",
        "allreduce_dtype",
        "steps_per_loop",
        "checkpoint_every_minutes",
        "eval_batch_size",
        "target_accuracy",
        "data_dir",
        "tfds_data_dir",
        "data_service",
        "model_dir",
        "profile_steps",
        "mlperf_submission_org",
        "mlperf_submission_platform",
        "mlperf_submission_division",
        "mlperf_submission_status",
    }
)
PLAN_MAY_CHANGE_ON_RESUME = ("replicas", "steps_per_loop")
# What the data decides; a rerun on other data is another run.
DATA_FIELDS = ("num_classes", "train_images", "eval_images", "data_fingerprint")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Step counts derived from the config and the data, fixed at a run's
    first start."""

    replicas: int
    num_classes: int
    train_images: int
    eval_images: int  # 0 with synthetic data: no evaluation
    steps_per_epoch: int
    train_steps: int
    warmup_steps: int
    steps_per_loop: int
    eval_every_steps: int  # 0: only at the end
    eval_offset_steps: int  # the first evaluation (with eval_every_steps)
    # The data's identity (its files' names, sizes and first bytes), so that a
    # resume on other images of the same counts is refused.
    data_fingerprint: str = "synthetic"


def compute(config, replicas, train_source, eval_source):
    """The plan of `config` over `replicas` on the data of the sources (None
    and None with synthetic data: ImageNet's counts, no evaluation).
    `ValueError` naming the flag when the batches do not divide or the
    validation split is empty."""
    split = replicas * config.accumulation_steps
    if config.global_batch_size % split:
        raise ValueError(
            f"--global_batch_size={config.global_batch_size} does not divide into "
            f"{replicas} replica(s) x --accumulation_steps={config.accumulation_steps}"
        )
    if config.synthetic:
        num_classes = IMAGENET_CLASSES
        train_images, eval_images = IMAGENET_TRAIN_IMAGES, 0
    else:
        num_classes = train_source.num_classes
        if not config.train_images:
            print("Counting the training images (--train_images skips this)...")
        train_images = config.train_images or train_source.count()
        eval_images = eval_source.count()
        if not eval_images:  # every accuracy would be 0/0
            raise ValueError(
                f"{_data_flag(config)}: the validation split holds no images; evaluation needs some"
            )
    eval_batch = evaluation_batch_size(config)
    if eval_batch % replicas:
        raise ValueError(
            f"--eval_batch_size={eval_batch} does not divide into {replicas} replica(s)"
        )
    steps_per_epoch = math.ceil(train_images / config.global_batch_size)
    train_steps = config.train_steps or math.ceil(config.train_epochs * steps_per_epoch)
    warmup_steps = configured_warmup_steps(config, steps_per_epoch)
    if warmup_steps > train_steps:  # a short run of a long preset: a smoke or speed test
        print(
            f"Note: the warm-up (--warmup_epochs={config.warmup_epochs:g}) is {warmup_steps} "
            f"steps, longer than the run's {train_steps}: the whole run warms up."
        )
        warmup_steps = train_steps
    eval_every_steps = config.eval_every_steps
    if eval_every_steps is None:
        eval_every_steps = round(config.eval_every_epochs * steps_per_epoch)
    fingerprint = "synthetic"
    if not config.synthetic:
        fingerprint = f"{train_source.fingerprint()}/{eval_source.fingerprint()}"
    return Plan(
        data_fingerprint=fingerprint,
        replicas=replicas,
        num_classes=num_classes,
        train_images=train_images,
        eval_images=eval_images,
        steps_per_epoch=steps_per_epoch,
        train_steps=train_steps,
        warmup_steps=warmup_steps,
        steps_per_loop=config.steps_per_loop or min(steps_per_epoch, train_steps),
        eval_every_steps=eval_every_steps,
        eval_offset_steps=round(config.eval_offset_epochs * steps_per_epoch),
    )


def configured_warmup_steps(config, steps_per_epoch):
    """The warm-up the settings ask for, in steps (before a short run cuts it)."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return round(config.warmup_epochs * steps_per_epoch)


def evaluation_batch_size(config):
    """`--eval_batch_size`, by default an update's micro-batch: no replica then
    holds more images in evaluation than in training."""
    return config.eval_batch_size or config.global_batch_size // config.accumulation_steps


def resumed(config, plan, saved_config, saved_plan):
    """The plan a rerun goes on with: the saved one (a dict, as config.json
    holds it), with this start's `plan` for the fields that may change.
    `ValueError` naming what differs when `config` is not the saved run's
    settings (`saved_config`, a dict) or `plan` not its data."""
    changed = {
        name: (saved_config.get(name), value)
        for name, value in config.to_dict().items()
        if saved_config.get(name) != value and name not in SETTINGS_MAY_CHANGE_ON_RESUME
    }
    if changed:
        detail = ", ".join(f"--{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(
            f"--model_dir={config.model_dir} holds a run with other settings ({detail}); "
            "use a new --model_dir"
        )
    new_plan = dataclasses.asdict(plan)
    differs = {
        name: (saved_plan[name], new_plan[name])
        for name in new_plan
        if name not in PLAN_MAY_CHANGE_ON_RESUME and saved_plan[name] != new_plan[name]
    }
    if differs:
        detail = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(differs.items()))
        what = "data" if set(differs) & set(DATA_FIELDS) else "plan"
        raise ValueError(
            f"--model_dir={config.model_dir} holds a run on other {what} ({detail}); "
            "point --data_dir at the run's data, or use a new --model_dir"
        )
    return dataclasses.replace(
        Plan(**saved_plan), **{name: new_plan[name] for name in PLAN_MAY_CHANGE_ON_RESUME}
    )


def _data_flag(config):
    if config.tfds_data_dir:
        return f"--tfds_data_dir={config.tfds_data_dir}"
    return f"--data_dir={config.data_dir}"
