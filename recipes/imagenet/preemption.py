"""SIGTERM and SIGINT (what schedulers, preemptible VMs and Ctrl-C send),
turned into a request to stop at the next step boundary.

    with StopRequests(on_request=runner.request_stop) as requests:
        ...                      # the training loops
        if requests.requested:   # checkpoint, then stop

The first signal asks the run to stop: the loop ends after the step under way
(TensorFlow reads a flag between steps; JAX between executions), the state
is checked and saved like any checkpoint, and the run exits with
`PREEMPTED_STATUS`. A second signal exits at once.

Python runs its own signal handlers only when the main thread gets back to
the interpreter, which a compiled loop of many steps does not do until it
ends; the signal's number is therefore also written to a pipe
(`signal.set_wakeup_fd`) that a thread of this module reads, so that the
loop is told at once.
"""

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# EX_TEMPFAIL: stopped on request with its state saved; run again to resume.
PREEMPTED_STATUS = 75


class Preempted(Exception):
    """The run stopped on a signal after saving its state."""


class StopRequests:
    """While open, the first SIGTERM or SIGINT sets `requested` and calls
    `on_request()` (from a thread); a second ends the process at once.
    Outside the main thread it does nothing (signals go to the main thread)."""

    def __init__(self, on_request=lambda: None):
        self.on_request = on_request
        self.requested = None  # the name of the first signal received
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipe = (read, write)
        self._previous = {s: signal.signal(s, _ignore) for s in SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._reader = threading.Thread(target=self._read, daemon=True, name="stop-requests")
        self._reader.start()
        return self

    def __exit__(self, *exc):
        if self._previous is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        os.close(self._pipe[1])  # ends the reader
        self._reader.join()
        os.close(self._pipe[0])
        self._previous = None

    def _read(self):
        while True:
            try:
                data = os.read(self._pipe[0], 1)
            except OSError:
                return
            if not data:
                return
            name = signal.Signals(data[0]).name
            if self.requested is None:
                self.requested = name
                print(
                    f"\n{name}: stopping after the current step, once its state is saved "
                    "(again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )
                self.on_request()
            else:
                print(f"\n{name} again: stopped at once, unsaved", file=sys.stderr, flush=True)
                os._exit(128 + data[0])


def _ignore(signum, frame):
    """Python's own handler: the work is done by the reader thread."""
