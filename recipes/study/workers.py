"""Trains the study's runs in worker processes, several at a time.

One TensorFlow process training the study's small CNN keeps only part of two
cores busy (the step has single-threaded stretches), so the study trains
`workers` runs at once, each process with its share of the cores' threads.
The workers only compute: the study saves each result as it comes back, so a
killed study loses only the runs that were in flight, and a worker whose
study is gone stops.
"""

import concurrent.futures
import multiprocessing
import os
import queue
import threading
import time

# How often the study collects the workers' progress.
PROGRESS_SECONDS = 0.2

_worker = {}  # in a worker process: what its initializer was given


class Pool:
    """`workers` processes that train runs, started at the first run to
    train and kept for the next (a context manager)."""

    def __init__(self, data, config, workers):
        self.data, self.config, self.workers = data, config, workers
        self._pool = self._progress = None

    def __enter__(self):
        return self

    def __exit__(self, *error):
        if self._pool:
            self._pool.shutdown(cancel_futures=True)

    def trained(self, runs, bar):
        """Yields (run, (row, trust-ratio record)) for each of `runs` as it
        finishes; `bar` (tqdm) counts their epochs."""
        if not runs:
            return
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # no copy of this process's TensorFlow
            self._progress = context.Queue()
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(self.data, self.config, threads, self._progress, os.getpid()),
            )
        futures = {self._pool.submit(_train, run): run for run in runs}
        pending = set(futures)
        try:
            while pending:
                finished, pending = concurrent.futures.wait(
                    pending, PROGRESS_SECONDS, concurrent.futures.FIRST_COMPLETED
                )
                _show(self._progress, bar)
                for future in finished:
                    yield futures[future], future.result()
        finally:
            for future in pending:
                future.cancel()
        _show(self._progress, bar)


def _show(progress, bar):
    while True:
        try:
            kind, value = progress.get_nowait()
        except queue.Empty:
            return
        if kind == "update":
            bar.update(value)
        else:
            bar.set_postfix_str(value)


class _ProgressSender:
    """What `training.train` needs of a tqdm bar, sent to the study."""

    def __init__(self, progress):
        self.progress = progress

    def update(self, n=1):
        self.progress.put(("update", n))

    def set_postfix_str(self, text):
        self.progress.put(("postfix", text))


def _start_worker(data, config, threads, progress, study_pid):
    import tensorflow as tf  # the study runs on TensorFlow (make study)

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    _worker.update(data=data, config=config, progress=progress)
    threading.Thread(target=_stop_without, args=(study_pid,), daemon=True).start()


def _stop_without(study_pid):
    """Ends this worker once the study that started it is gone (killed, its
    pool could not tell the worker)."""
    while os.getppid() == study_pid:
        time.sleep(1)
    os._exit(1)


def _train(run):
    from . import training

    bar = _ProgressSender(_worker["progress"])
    return training.train(run, _worker["data"], _worker["config"], bar, run.seed == 0)
