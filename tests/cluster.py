"""Localhost clusters for multi-worker tests: reserved ports and TF_CONFIG.

A port picked by binding to port 0 and closing the socket can be taken by
another process before the worker binds it (TensorFlow's gRPC server refuses
SO_REUSEPORT, so the test cannot keep holding it). `reserved_ports` instead
takes ports below the kernel's ephemeral range, which the kernel never hands
out by itself, and holds a lock file per port for as long as the test runs,
so that concurrent tests (Bazel runs test files in parallel) never share one.
"""

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile

LOCK_DIR = os.path.join(tempfile.gettempdir(), "keras_lars_test_ports")
PORTS_BELOW = 32768  # Linux's default ephemeral range starts here


def _ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return PORTS_BELOW


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("localhost", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def reserved_ports(count):
    """`count` free localhost ports, each locked for this test until exit."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    high = min(_ephemeral_start(), PORTS_BELOW)
    candidates = list(range(high // 2, high))
    random.shuffle(candidates)
    with contextlib.ExitStack() as stack:
        ports = []
        for port in candidates:
            lock = open(os.path.join(LOCK_DIR, f"{port}.lock"), "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another test holds it
                lock.close()
                continue
            stack.enter_context(lock)  # unlocked when closed, at exit
            if _bindable(port):
                ports.append(port)
                if len(ports) == count:
                    yield ports
                    return
        raise RuntimeError(f"no {count} free ports below {high}")


def tf_config(ports, index):
    """TF_CONFIG for worker `index` of a cluster of localhost workers."""
    workers = [f"localhost:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
