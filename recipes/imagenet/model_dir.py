"""`model_dir/config.json`: the settings, Keras backend and plan a run was
started with, written once, and what a rerun is checked against.

A rerun in the same `--model_dir` resumes only the same run: the same
backend (each backend's checkpoints are its own), the same training settings
(where and how it runs may change: `plan.SETTINGS_MAY_CHANGE_ON_RESUME`) and
the same data (image and class counts: the plan is fixed at the first start,
`plan.resumed`).
Anything else is refused with one line naming what differs. Checkpoints
without a readable config.json beside them are refused too: their settings
are unknown.
"""

import dataclasses
import json
import os

import tensorflow as tf

from . import plan as plan_lib

FILE = "config.json"
SUMMARY = "summary.json"


def path(config):
    return os.path.join(config.model_dir, FILE)


def summary_path(config):
    return os.path.join(config.model_dir, SUMMARY)


def write_summary(config, summary):
    """summary.json, whole (strict JSON), then renamed over the last one."""
    target = summary_path(config)
    with tf.io.gfile.GFile(target + ".partial", "w") as f:
        json.dump(summary, f, indent=1, allow_nan=False)
    tf.io.gfile.rename(target + ".partial", target, overwrite=True)


def finished_summary(config, plan, step):
    """The summary of a run that is over at `step` (it trained every step, or
    reached this config's target there), or None if it has more to do."""
    try:
        with tf.io.gfile.GFile(summary_path(config)) as f:
            summary = json.load(f)
    except (OSError, ValueError, tf.errors.OpError):
        return None
    if not isinstance(summary, dict) or summary.get("steps") != step or not step:
        return None
    top1 = summary.get("top1")
    reached = (
        config.target_accuracy is not None
        and isinstance(top1, (int, float))
        and top1 >= config.target_accuracy
    )
    return summary if step >= plan.train_steps or reached else None


def plan_to_run(config, plan, backend, chief=True):
    """`plan` on a first start; on a rerun the saved plan (with this run's
    replicas and loop length), once the rerun is found to be the same run.
    `ValueError` naming what differs, or the file that cannot be read."""
    record = path(config)
    checkpoints = os.path.join(config.model_dir, "checkpoints")
    trained = tf.io.gfile.isdir(checkpoints) and bool(tf.io.gfile.listdir(checkpoints))
    if not tf.io.gfile.exists(record):
        if trained:
            raise ValueError(
                f"{record} is missing, but {checkpoints} holds checkpoints: the settings "
                "they were trained with are unknown, so they are not resumed; put the "
                "run's config.json back, or use a new --model_dir"
            )
        return plan
    if not trained:  # its settings locked nothing: no step was kept
        if chief:
            print(f"{record} is of a run that saved no checkpoint: replacing it (these settings)")
            tf.io.gfile.remove(record)
        return plan
    saved = _read(record)
    if saved["backend"] != backend:
        raise ValueError(
            f"--model_dir={config.model_dir} holds a run of the {saved['backend']} backend; "
            f"this is {backend} (KERAS_BACKEND), whose checkpoints are not interchangeable: "
            f"rerun with KERAS_BACKEND={saved['backend']}, or use a new --model_dir"
        )
    return plan_lib.resumed(config, plan, saved["config"], saved["plan"])


def write_once(config, plan, backend):
    """Writes config.json unless it exists: whole, then renamed (other
    workers may be reading it)."""
    record = path(config)
    if tf.io.gfile.exists(record):
        return
    settings = {"backend": backend, "config": config.to_dict(), "plan": dataclasses.asdict(plan)}
    tf.io.gfile.makedirs(config.model_dir)
    with tf.io.gfile.GFile(record + ".partial", "w") as f:
        json.dump(settings, f, indent=1)
    tf.io.gfile.rename(record + ".partial", record, overwrite=True)


def _read(record):
    try:
        with tf.io.gfile.GFile(record) as f:
            saved = json.load(f)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f"{record} cannot be read ({_first_line(error)}); restore it, or use a new --model_dir"
        ) from None
    if (
        not isinstance(saved, dict)
        or not {"config", "plan", "backend"} <= saved.keys()
        or not isinstance(saved["config"], dict)
        or not isinstance(saved["plan"], dict)
    ):
        raise ValueError(
            f"{record} is not a run's config.json (it lacks its settings, plan or backend, or "
            "they are not objects); restore it, or use a new --model_dir"
        )
    if set(saved["plan"]) != {f.name for f in dataclasses.fields(plan_lib.Plan)}:
        raise ValueError(f"{record} holds a plan this version cannot read; use a new --model_dir")
    return saved


def _first_line(error):
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0]
