"""Training input made on other machines: TensorFlow's tf.data service.

A host decodes a few hundred JPEGs a second per core, and eight modern GPUs
need tens of cores of decoding. With `--data_service=grpc://HOST:PORT` the
training input (read, decode, crop, batch) runs on the service's workers and
the trainers read finished batches through its dispatcher:

    keras-lars-data-service --role=dispatcher --port=5050 \
        --worker_addresses=worker-0:5051,worker-1:5051         # one host
    keras-lars-data-service --role=worker --port=5051 \
        --dispatcher_address=dispatcher-host:5050              # each worker host
    keras-lars-train ... --data_service=grpc://dispatcher-host:5050

How the data is shared (`SHARDING`): by files. The dispatcher knows its
workers from the start, and each worker reads its own files, every one of its
images once per pass over them; all the run's input pipelines (one per
trainer host, or per JAX process) read one job (`job_name`), and each batch
goes to one of them. So every training image is read once per pass of its
worker, wherever the batches go; workers of unequal speed can be a part of a
pass apart. Each worker needs a training file at least (one without makes
nothing), and every worker must reach `--data_dir` at the same path (a shared file
system, or gs://).

Resuming. Each start of a run reads a job of its own (named after the run's
`model_dir` and the step it starts at), reshuffled from there as a local
non-deterministic stream is (`batching.resume_position`): a resumed run
restarts the input at the step it resumed from, at a fresh pass of every
worker, not at the sample it stopped at. `--deterministic` is refused: the
order in which the workers' batches arrive is not repeatable.

Faults. A worker that stops is survived: the trainers read from the others,
and its files are missing from the input until it restarts at the same
address, when it begins its files again.

Evaluation stays local: it must see every validation image exactly once,
which `batching.evaluation_batches` guarantees.
"""

import hashlib
import signal
import socket
import threading

import tensorflow as tf

from . import batching

# Static sharding where the input pipeline says: its files are dealt to the
# workers as to input pipelines (`WORKERS_SHARE`). (FILE sharding would refuse
# the pipeline: the counter that seeds each image's augmentation is a source
# of its own, not a file.)
SHARDING = tf.data.experimental.service.ShardingPolicy.HINT
# An input context whose pipelines are the service's workers: tf.data's
# placeholder, which each worker replaces with (workers, its index).
WORKERS_SHARE = tf.distribute.InputContext(
    num_input_pipelines=tf.data.experimental.SHARD_HINT,
    input_pipeline_id=tf.data.experimental.SHARD_HINT,
)
# The trainers read from every worker. (The default, for file sharding, is a
# worker on the trainer's own host only: a service on other machines would
# leave the trainers nothing to read.)
TARGET_WORKERS = "ANY"
# A worker's address as the dispatcher and the trainers reach it, by default:
# TensorFlow puts the port it binds in place of %port%.
DEFAULT_WORKER_HOST = socket.getfqdn()


def job_name(model_dir, start_step):
    """The job every input pipeline of one start of a run reads: the same on
    each trainer, another for each start (a job left by an earlier start
    would hand out that start's stream)."""
    run = hashlib.sha256(model_dir.encode()).hexdigest()[:16]
    return f"keras-lars-{run}-from-step-{start_step}"


def training_batches(source, *, address, job, global_batch_size, input_context=None, **batches):
    """`batching.batches` of `source` made by the service at `address`
    and read from its `job`: each of this pipeline's batches is one
    replica's (TensorFlow) or one process's (JAX), as the input context
    says. `batches`: `batching.batches`'s other arguments."""
    batch_size = (
        input_context.get_per_replica_batch_size(global_batch_size)
        if input_context
        else global_batch_size
    )
    # Each worker makes whole batches of its own files.
    made_by_workers = batching.batches(
        source,
        training=True,
        global_batch_size=batch_size,
        input_context=WORKERS_SHARE,
        **batches,
    )
    return read(made_by_workers, address, job)


def read(dataset, address, job):
    """`dataset`, made by the service's workers and read from its `job`."""
    return dataset.apply(
        tf.data.experimental.service.distribute(
            processing_mode=SHARDING,
            service=address,
            job_name=job,
            target_workers=TARGET_WORKERS,
        )
    )


def start_dispatcher(port, worker_addresses):
    """A dispatcher on `port` (0: any free one) for the workers at
    `worker_addresses` ("host:port" or "host:%port%"), whom file sharding
    must know before the first job."""
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, worker_addresses=list(worker_addresses)
    )
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(port, dispatcher_address, worker_address=None):
    """A worker on `port` (0: any free one), registered with the dispatcher
    at `dispatcher_address` ("host:port"); `worker_address` is how the
    trainers reach it (default: this host's name and the bound port)."""
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=_without_protocol(dispatcher_address),
        worker_address=worker_address or f"{DEFAULT_WORKER_HOST}:%port%",
        port=port,
    )
    return tf.data.experimental.service.WorkerServer(config)


def address(server):
    """'host:port' that `server` (a dispatcher or a worker) serves on."""
    return server._address  # noqa: SLF001 - TensorFlow's only way to read a bound port


def serve_until_stopped(server, ready):
    """Serves until SIGTERM or SIGINT, then stops `server`; returns the
    signal's name. `ready()` is called once the signals are caught, so that
    whoever it tells may stop the server at once."""
    stopped = threading.Event()
    received = []

    def stop(signal_number, frame):
        received.append(signal.Signals(signal_number).name)
        stopped.set()

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    previous = {s: signal.signal(s, stop) for s in stop_signals}
    # A process inherits its parent's blocked signals (a test runner's, or
    # a parent whose libraries block them in the forking thread): blocked,
    # a SIGTERM would never arrive and the server would serve forever.
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    try:
        ready()
        stopped.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for s, handler in previous.items():
            signal.signal(s, handler)
    server.stop()
    return received[0]


def _without_protocol(address):
    return address.split("://", 1)[-1]
