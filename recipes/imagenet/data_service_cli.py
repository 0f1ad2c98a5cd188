r"""Starts a tf.data service dispatcher or worker for `--data_service`, and
serves until SIGTERM or SIGINT (Ctrl-C).

    # One host: the dispatcher, told the workers (file sharding needs them).
    keras-lars-data-service --role=dispatcher --port=5050 \
        --worker_addresses=worker-0:5051,worker-1:5051
    # Each worker host: decodes, crops and batches for the trainers.
    keras-lars-data-service --role=worker --port=5051 \
        --dispatcher_address=dispatcher-host:5050
    # Each trainer host.
    keras-lars-train ... --data_dir=gs://... --data_service=grpc://dispatcher-host:5050

recipes/imagenet/data_service.py says how the data is shared, and what a
resumed run and a lost worker get.
"""

import sys

from absl import flags

FLAGS = flags.FLAGS
PROGRAM = "keras-lars-data-service"
ROLES = ("dispatcher", "worker")


def define_flags():
    flags.DEFINE_enum("role", None, ROLES, "What this process serves.")
    flags.DEFINE_integer("port", None, "The port to serve on (0: any free one, printed).")
    flags.DEFINE_list(
        "worker_addresses",
        None,
        "Dispatcher: every worker, host:port (host:%port% for any port), as the workers' "
        "--worker_address give them.",
    )
    flags.DEFINE_string(
        "dispatcher_address", None, "Worker: the dispatcher, host:port or grpc://host:port."
    )
    flags.DEFINE_string(
        "worker_address",
        None,
        "Worker: how the dispatcher and the trainers reach it (default: this host's name "
        "and --port).",
    )


def main(argv):
    """Checks the flags (a mistake is one line and exit status 1), serves,
    and says in one line what it served when stopped."""
    problem = _problem(argv)
    if problem:
        print(f"{PROGRAM}: error: {problem} (see --help)", file=sys.stderr)
        return 1

    from . import data_service

    if FLAGS.role == "dispatcher":
        server = data_service.start_dispatcher(FLAGS.port, FLAGS.worker_addresses)
    else:
        server = data_service.start_worker(
            FLAGS.port, FLAGS.dispatcher_address, FLAGS.worker_address
        )
    serving = f"{FLAGS.role} at {data_service.address(server)}"
    signal_name = data_service.serve_until_stopped(
        server, ready=lambda: print(f"{PROGRAM}: {serving}", flush=True)
    )
    print(f"{PROGRAM}: {serving} stopped by {signal_name}", flush=True)
    return 0


def _problem(argv):
    if len(argv) > 1:
        return f"unexpected arguments: {' '.join(argv[1:])}"
    if FLAGS.role is None:
        return f"--role is required: one of {', '.join(ROLES)}"
    if FLAGS.port is None or not 0 <= FLAGS.port < 65536:
        return f"--port is required, 0..65535 (0: any free one). Received: --port={FLAGS.port}"
    if FLAGS.role == "dispatcher" and not FLAGS.worker_addresses:
        return "--role=dispatcher needs --worker_addresses (file sharding needs every worker)"
    if FLAGS.role == "worker" and not FLAGS.dispatcher_address:
        return "--role=worker needs --dispatcher_address"
    return None
