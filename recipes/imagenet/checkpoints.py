"""Choosing the checkpoint to resume from, whichever library wrote it.

A run's checkpoints are found from the files themselves (never from an index
file that can go stale or be damaged on its own). The newest one that restores
whole is used; each newer one that does not is skipped with one line saying
which and why. If checkpoint files exist but none restores, the run stops with
one line naming the directory: it never silently starts again from step 0
over someone's progress.
"""

import os

import tensorflow as tf


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be restored whole; the message says why."""


class NoIntactCheckpoint(RuntimeError):
    """Checkpoint files exist, but none of them restores."""


class CheckpointNotSaved(RuntimeError):
    """A checkpoint could not be written (a full disk, a lost bucket, ...)."""


def restore_newest_intact(directory, steps, restore, nothing=None):
    """Restores the newest of the checkpoints numbered `steps` in `directory`
    with `restore(step)`, which raises `DamagedCheckpoint` for one that
    cannot be restored; returns what `restore` returned, or `nothing` if
    `steps` is empty."""
    skipped = []
    for step in sorted(steps, reverse=True):
        try:
            restored = restore(step)
        except DamagedCheckpoint as error:
            print(f"Skipping checkpoint {step} in {directory}: {error}")
            skipped.append(step)
            continue
        return restored
    if skipped:
        raise NoIntactCheckpoint(
            f"{directory} holds checkpoint files (steps {', '.join(map(str, skipped))}) but "
            "none restores (each is named above with what is wrong): move them away to "
            "start again from step 0, or use a new --model_dir"
        )
    return nothing


def remove_temporary(directory, is_temporary):
    """Removes what interrupted saves left in `directory` (entries for which
    `is_temporary(name)` is true); returns their names."""
    if not tf.io.gfile.isdir(directory):
        return []
    removed = []
    for name in sorted(tf.io.gfile.listdir(directory)):
        name = name.rstrip("/")
        if is_temporary(name):
            path = os.path.join(directory, name)
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
            removed.append(name)
    return removed
