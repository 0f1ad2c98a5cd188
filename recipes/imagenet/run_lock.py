"""One writer per run: `model_dir/lock.json`, held by the chief from before
it reads anything in `--model_dir` until it exits.

    with RunLock(model_dir):
        ...  # the run

The file names its holder (host, process id, start time) and is rewritten
every `REFRESH_SECONDS` while the run lives. A second trainer started on the
same `--model_dir` (by mistake, or by a scheduler's retry while the first
still runs) stops with one line naming the holder. A lock whose holder is
gone is taken over, with one line saying so: a process of this host that no
longer exists, or a lock not refreshed for `STALE_SECONDS` (a holder on
another host that died).

What it can promise. On a local or network file system the lock is created
exclusively (`O_CREAT | O_EXCL`): of two trainers starting at once, one wins.
On object stores (`gs://` and other paths TensorFlow's file system opens)
creation cannot be exclusive: a second trainer started later is still refused,
but two started within the same moment may both take it. A holder that is
alive but stalled for longer than `STALE_SECONDS` (its refreshing thread
stopped) loses its lock.
"""

import datetime
import json
import os
import socket
import threading
import time

import tensorflow as tf

FILE = "lock.json"
REFRESH_SECONDS = 60
STALE_SECONDS = 15 * 60  # a quarter of an hour without a refresh: the holder is gone


class RunLocked(RuntimeError):
    """Another live trainer holds the run's lock."""


class RunLock:
    def __init__(self, model_dir, clock=time.time):
        self.path = os.path.join(model_dir, FILE)
        self.model_dir = model_dir
        self.clock = clock
        self.holder = dict(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        self._stop = threading.Event()
        self._refresher = None

    def __enter__(self):
        self._created_dir = not tf.io.gfile.exists(self.model_dir)
        tf.io.gfile.makedirs(self.model_dir)
        if not self._create():
            current = _read(self.path)
            reason = self._gone(current)
            if reason is None:
                raise RunLocked(
                    f"--model_dir={self.model_dir} is in use by process {current.get('pid')} "
                    f"on {current.get('host')}, started {current.get('started')} (its lock "
                    f"{self.path} was refreshed {self._age(current):.0f} s ago): wait for it, "
                    "stop it, or use another --model_dir"
                )
            print(f"Taking over {self.path}: {reason}")
            self._write()
        self._refresher = threading.Thread(target=self._refresh, daemon=True, name="run-lock")
        self._refresher.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
        if self._is_ours(_read(self.path)):
            try:
                tf.io.gfile.remove(self.path)
                if self._created_dir and not tf.io.gfile.listdir(self.model_dir):
                    tf.io.gfile.rmtree(self.model_dir)  # a run refused before it wrote anything
            except (OSError, tf.errors.OpError):
                pass  # gone already: nothing to release

    def _is_ours(self, current):
        return (current.get("host"), current.get("pid")) == (self.holder["host"], os.getpid())

    def _create(self):
        """Writes the lock if there is none; False if one exists."""
        if "://" in self.path:  # no exclusive creation on object stores
            if tf.io.gfile.exists(self.path):
                return False
            self._write()
            return True
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as f:
            json.dump({**self.holder, "refreshed": self.clock()}, f)
        return True

    def _write(self):
        partial = f"{self.path}.{self.holder['host']}.{os.getpid()}.partial"
        with tf.io.gfile.GFile(partial, "w") as f:
            json.dump({**self.holder, "refreshed": self.clock()}, f)
        tf.io.gfile.rename(partial, self.path, overwrite=True)

    def _refresh(self):
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                self._write()
            except (OSError, tf.errors.OpError):
                pass  # tried again at the next refresh

    def _age(self, current):
        refreshed = current.get("refreshed")
        return self.clock() - refreshed if isinstance(refreshed, (int, float)) else float("inf")

    def _gone(self, current):
        """Why the lock's holder is gone, or None if it may be alive."""
        if not current:
            return "it does not name a holder (damaged)"
        if self._is_ours(current):
            return "an earlier run of this process left it"
        if current.get("host") == self.holder["host"] and isinstance(current.get("pid"), int):
            if not _alive(current["pid"]):
                return f"its holder, process {current['pid']} of this host, has ended"
            return None
        age = self._age(current)
        if age > STALE_SECONDS:
            return (
                f"its holder, process {current.get('pid')} on {current.get('host')}, has not "
                f"refreshed it for {age / 60:.0f} minutes"
            )
        return None


def _read(path):
    try:
        with tf.io.gfile.GFile(path) as f:
            content = json.load(f)
    except (OSError, ValueError, tf.errors.OpError):
        return {}
    return content if isinstance(content, dict) else {}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
