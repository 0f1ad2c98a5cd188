"""Two processes of one run on one host, as two hosts of a cluster would run
it: TensorFlow's MultiWorkerMirroredStrategy (two workers, TF_CONFIG) and
JAX's multi-process DataParallel (`--multi_process`, two processes of two
host devices each).

What only several hosts exercise is forced here: one process's wall clock
runs a million times fast (`KERAS_LARS_TEST_CLOCK_RATE`, recipes/faults.py),
so left to itself it would decide to checkpoint after every loop while the
other never would. The chief decides for both; both finish with one set of
checkpoints, and after both are killed right after a checkpoint, both resume
from it and end equal to the uninterrupted run."""

import json
import os
import signal

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("tensorflow", "jax"),
    reason="the recipe runs on TensorFlow or JAX",
)
pytest.importorskip("tensorflow")

import commands  # noqa: E402
from cluster import reserved_ports  # noqa: E402
from cluster import tf_config  # noqa: E402
from imagenet_runs import CLASSES  # noqa: E402
from imagenet_runs import LEARNS  # noqa: E402
from imagenet_runs import SMALL_FLAGS  # noqa: E402
from imagenet_runs import VALIDATION_PER_CLASS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import checkpoint_arrays  # noqa: E402
from imagenet_runs import checkpoint_steps  # noqa: E402
from imagenet_runs import losses  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from recipes import faults  # noqa: E402

JAX = keras.backend.backend() == "jax"
PROCESSES = 2
FLAGS = [
    *(f"--{name}={value}" for name, value in LEARNS.items()),
    *SMALL_FLAGS,
    "--global_batch_size=16",  # 4 images a device on JAX's 2 x 2
    "--train_steps=8",
    "--deterministic",
    "--checkpoint_every_minutes=60",  # only a fast clock sees an hour pass in a loop
]
FAST = "1000000"  # an hour in 3.6 ms


def cluster_run(model_dir, data_dir, log_name, ports, envs):
    """Runs the two processes of one run side by side; [(status, output)]."""
    if JAX:
        flags = ["--strategy=data_parallel", "--multi_process"]
        base = [
            dict(
                KERAS_BACKEND="jax",
                XLA_FLAGS="--xla_force_host_platform_device_count=2",
                KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{ports[0]}",
                KERAS_DISTRIBUTION_NUM_PROCESSES=str(PROCESSES),
                KERAS_DISTRIBUTION_PROCESS_ID=str(i),
            )
            for i in range(PROCESSES)
        ]
    else:
        flags = ["--strategy=multi_worker", "--jit_compile"]  # each worker's step under XLA
        base = [dict(TF_CONFIG=tf_config(ports, i)) for i in range(PROCESSES)]
    return commands.run_all(
        [train_command(model_dir, data_dir, *FLAGS, *flags)] * PROCESSES,
        [model_dir.parent / f"{log_name}{i}.log" for i in range(PROCESSES)],
        [commands.environment(**base[i], **envs[i]) for i in range(PROCESSES)],
    )


def assert_succeeded(results):
    assert [code for code, _ in results] == [0] * PROCESSES, "\n".join(
        output[-3000:] for _, output in results
    )


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    """The run with the second process's clock fast: without the chief's
    decision it would save after every loop, alone."""
    model_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    with reserved_ports(PROCESSES) as ports:
        results = cluster_run(
            model_dir, data_dir, "uninterrupted", ports, [{}, {faults.CLOCK_RATE: FAST}]
        )
    assert_succeeded(results)
    return model_dir, [output for _, output in results]


def test_the_chiefs_clock_decides_every_save(uninterrupted):
    model_dir, outputs = uninterrupted
    if JAX:
        assert "DataParallel on 4 CPU device(s), 2 process(es)" in outputs[0]
    else:
        assert "CollectiveAllReduceStrategy, 2 replica(s), XLA per replica" in outputs[0]
    values = losses(model_dir)  # 4 loops of 2 steps: the run learns
    assert len(values) == 4 and np.all(np.isfinite(values)) and values[-1] < values[0], values
    assert checkpoint_steps(model_dir) == [8]  # the end only: the chief's clock is true
    assert sorted(os.listdir(model_dir)) == [
        "checkpoints",
        "config.json",
        "eval",
        "summary.json",
        "train",
    ]
    with open(model_dir / "summary.json") as f:
        assert json.load(f)["eval_images"] == CLASSES * VALIDATION_PER_CLASS


def test_both_killed_after_a_checkpoint_resume_there_and_end_as_if_uninterrupted(
    data_dir, tmp_path, uninterrupted
):
    """The chief's clock is the fast one now: it saves after every loop, and
    the other process follows. The chief is killed once checkpoint 4 is
    written, the other as soon as its part of the save has started; both
    resume from the chief's checkpoint 4."""
    model_dir = tmp_path / "run"
    killed = [
        {faults.CLOCK_RATE: FAST, faults.KILL_AFTER: "4"},
        {faults.KILL_AFTER if JAX else faults.KILL_DURING: "4"},
    ]
    with reserved_ports(PROCESSES) as ports:
        results = cluster_run(model_dir, data_dir, "killed", ports, killed)
    assert results[0][0] == -signal.SIGKILL, results[0][1][-3000:]
    assert checkpoint_steps(model_dir) == [2, 4]

    with reserved_ports(PROCESSES) as ports:
        results = cluster_run(
            model_dir, data_dir, "resumed", ports, [{faults.CLOCK_RATE: FAST}, {}]
        )
    assert_succeeded(results)
    for _, output in results:
        assert "Resumed from step 4" in output, output[-3000:]
    assert checkpoint_steps(model_dir) == [4, 6, 8]
    assert_arrays_close(
        checkpoint_arrays(model_dir)[0], checkpoint_arrays(uninterrupted[0])[0], 1e-6, 1e-7
    )
