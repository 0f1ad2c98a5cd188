"""The Keras backend a process will use, read as Keras reads it, without
importing Keras (the standard library only: the commands decide what to
check and load before Keras starts)."""

import json
import os

DEFAULT = "tensorflow"  # Keras's, when neither the environment nor keras.json names one


def keras_backend():
    """`KERAS_BACKEND`, else the "backend" of keras.json in Keras's home
    (`KERAS_HOME`, else ~/.keras, or /tmp/.keras where the home directory is
    not writable), else TensorFlow."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    try:
        with open(os.path.join(_keras_home(), "keras.json")) as f:
            settings = json.load(f)
    except (OSError, ValueError):
        return DEFAULT
    name = settings.get("backend") if isinstance(settings, dict) else None
    return name or DEFAULT


def _keras_home():
    if "KERAS_HOME" in os.environ:
        return os.path.expanduser(os.environ["KERAS_HOME"])
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return os.path.join(base, ".keras")
