"""--data_service: the training input made by a tf.data service's workers
(recipes/imagenet/data_service.py), on one host: a dispatcher and two workers
in this process, their ports chosen by the servers."""

import collections
import signal
import subprocess

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the tf.data service is TensorFlow's"
)

if keras.backend.backend() == "tensorflow":
    import numpy as np
    import tensorflow as tf

    from commands import ROOT
    from commands import environment
    from commands import module
    from imagenet_runs import ALEXNET
    from imagenet_runs import SMALL
    from imagenet_runs import run
    from recipes.imagenet import batching
    from recipes.imagenet import data_service
    from recipes.imagenet import records

WORKERS = 2
ON_ANY_PORT = "localhost:%port%"  # the servers bind free ports and say which
STOP_TIMEOUT_SECONDS = 120  # to stop and exit, TensorFlow loaded, on a loaded host


@pytest.fixture
def service():
    """(dispatcher, workers), serving until the test ends."""
    dispatcher = data_service.start_dispatcher(0, [ON_ANY_PORT] * WORKERS)
    workers = [
        data_service.start_worker(0, data_service.address(dispatcher), ON_ANY_PORT)
        for _ in range(WORKERS)
    ]
    yield dispatcher, workers
    for server in [*workers, dispatcher]:
        server.stop()


def train(data_dir, model_dir, dispatcher):
    return run(
        **ALEXNET,
        **SMALL,
        strategy="mirrored",
        train_steps=4,
        data_dir=str(data_dir),
        model_dir=str(model_dir),
        data_service=dispatcher.target,
    )


def test_a_run_trains_on_the_services_batches(data_dir, tmp_path, service):
    dispatcher, _ = service
    summary = train(data_dir, tmp_path / "run", dispatcher)
    assert summary["steps"] == 4
    assert summary["eval_images"] == 20  # evaluation stays local: every image once


def test_every_training_image_of_a_pass_is_read_once_over_two_pipelines(data_dir, service):
    """Each worker reads its own files, and each batch of the job goes to one
    of the pipelines reading it: one pass of the workers, read to its end by
    two pipelines, holds every training image once."""
    dispatcher, _ = service
    files = records.list_files(str(data_dir / "train-*"))
    filename = {"image/filename": tf.io.FixedLenFeature([], tf.string)}

    def names(records):
        return records.map(lambda r: tf.io.parse_single_example(r, filename)["image/filename"])

    one_pass = names(
        records.read_records(files, training=True, input_context=data_service.WORKERS_SHARE)
    ).batch(3)
    pipelines = [iter(data_service.read(one_pass, dispatcher.target, "one-pass")) for _ in "ab"]
    seen, batches = collections.Counter(), [0, 0]
    while pipelines:  # one batch of each in turn, as replicas take them
        for i, pipeline in enumerate(list(pipelines)):
            batch = next(pipeline, None)
            if batch is None:
                pipelines.remove(pipeline)
            else:
                seen.update(batch.numpy())
                batches[i] += 1
    every_image = collections.Counter(names(tf.data.TFRecordDataset(files)).as_numpy_iterator())
    assert seen == every_image
    assert min(batches) > 0  # both pipelines read from the job


def test_two_workers_augment_their_nth_images_apart(data_dir, service):
    """A worker's pipeline is not told which worker it is (its input context
    holds tf.data's placeholder), so the position in its stream alone would
    seed the n-th image of every worker alike: the images' bytes tell them
    apart."""
    dispatcher, _ = service
    files = records.list_files(str(data_dir / "train-*"))
    made_by_workers = (
        records.read_records(files, training=True, input_context=data_service.WORKERS_SHARE)
        .enumerate()
        .map(
            lambda index, record: (
                index,
                batching.augmentation_seed(
                    0,
                    data_service.WORKERS_SHARE.input_pipeline_id,
                    index,
                    records.parse(record)[0],
                ),
            )
        )
    )
    seeds = collections.defaultdict(list)
    for index, seed in data_service.read(made_by_workers, dispatcher.target, "seeds"):
        seeds[int(index)].append(tuple(seed.numpy()))
    on_both = [s for s in seeds.values() if len(s) == WORKERS]
    assert on_both  # positions that both workers' streams reach
    assert all(len(set(s)) == WORKERS for s in on_both)


def test_a_worker_stopped_mid_run_is_survived(data_dir, tmp_path, service, monkeypatch):
    """The first batch the trainer reads stops a worker; the run goes on
    with the other one."""
    dispatcher, workers = service
    read = data_service.read

    def stopping_a_worker_after_the_first_batch(dataset, address, job):
        def stop_once():
            if not stopped:
                workers[0].stop()
                stopped.append(True)
            return np.int32(0)

        def read_then_stop(images, labels):  # labels + 0, once the batch is read
            nothing = tf.ensure_shape(tf.py_function(stop_once, [], tf.int32), [])
            return images, labels + nothing

        return read(dataset, address, job).map(read_then_stop)

    stopped = []
    monkeypatch.setattr(data_service, "read", stopping_a_worker_after_the_first_batch)
    summary = train(data_dir, tmp_path / "run", dispatcher)
    assert stopped
    assert summary["steps"] == 4


def block_stop_signals():
    """As a parent may leave them for its children (Bazel's test runner did):
    the command must unblock them, or serve on after a SIGTERM."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def test_the_command_serves_until_sigterm_and_says_so_in_one_line():
    command = module(
        "recipes.imagenet_data_service",
        "--role=dispatcher",
        "--port=0",
        f"--worker_addresses={ON_ANY_PORT}",
    )
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=block_stop_signals,
    )
    try:
        serving = process.stdout.readline()  # written once the port is bound
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=STOP_TIMEOUT_SECONDS)
    finally:
        process.kill()
    assert serving.startswith("keras-lars-data-service: dispatcher at localhost:")
    assert process.returncode == 0
    assert rest.strip().splitlines() == [f"{serving.strip()} stopped by SIGTERM"]


@pytest.mark.parametrize(
    "flags, error",
    [
        (["--role=worker", "--port=5051"], "--role=worker needs --dispatcher_address"),
        (["--role=dispatcher", "--port=5050"], "--role=dispatcher needs --worker_addresses"),
        (["--port=5050"], "--role is required"),
    ],
)
def test_a_bad_command_line_is_one_line_with_exit_1(flags, error):
    result = subprocess.run(
        module("recipes.imagenet_data_service", *flags),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"keras-lars-data-service: error: {error}")


def test_a_malformed_address_is_named(data_dir, tmp_path):
    from recipes.imagenet import config as config_lib

    with pytest.raises(
        ValueError,
        match="Received: --data_service=dispatcher-host",
    ):
        config_lib.resolve(
            data_dir=str(data_dir), model_dir=str(tmp_path), data_service="dispatcher-host"
        )
