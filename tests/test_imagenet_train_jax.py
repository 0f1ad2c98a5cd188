"""The ImageNet recipes on the JAX backend: keras.distribution.DataParallel on
four forced host devices (conftest.py), resume after SIGKILL, exact
evaluation, accumulation, refusals."""

import glob
import json
import os
import signal
import subprocess
import time

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution runs on JAX"
)
tf = pytest.importorskip("tensorflow")  # the input pipeline's library

import imagenet_runs  # noqa: E402
from imagenet_runs import CLASSES  # noqa: E402
from imagenet_runs import LEARNS  # noqa: E402
from imagenet_runs import ROOT  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import VALIDATION_PER_CLASS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import command  # noqa: E402
from imagenet_runs import make_tfrecords  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402

from recipes import imagenet_input  # noqa: E402
from recipes import imagenet_job  # noqa: E402
from recipes import jax_runner  # noqa: E402
from recipes import models  # noqa: E402
from recipes import optimization  # noqa: E402
from recipes import train_config  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_tfrecords(tmp_path_factory.mktemp("imagenet"))


def checkpoint(model_dir):
    """The arrays of the latest checkpoint, and its step."""
    paths = glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.npz"))
    path = max(paths, key=lambda p: int(p.rsplit("-", 1)[1][: -len(".npz")]))
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}, int(path.rsplit("-", 1)[1][:-4])


def test_data_parallel_on_four_devices_equals_one_device(data_dir, tmp_path):
    """JAX's data parallelism computes on the global batch (batch norm's
    statistics included), so four devices give one device's numbers."""
    settings = dict(LEARNS, **SMALL, data_dir=str(data_dir), train_steps=4, deterministic=True)
    one = run(**settings, model_dir=str(tmp_path / "one"))
    four = run(**settings, model_dir=str(tmp_path / "four"), strategy="data_parallel")
    assert four["strategy"].startswith("DataParallel on 4 CPU device(s)")
    assert one["strategy"] == "one CPU device"
    (a, step_a), (b, step_b) = checkpoint(tmp_path / "four"), checkpoint(tmp_path / "one")
    assert step_a == step_b == 4
    assert_arrays_close(a, b, rtol=1e-5, atol=1e-5)


def test_data_parallel_trains_logs_and_evaluates(data_dir, tmp_path):
    summary = run(
        **LEARNS,
        **{**SMALL, "global_batch_size": 16},
        strategy="data_parallel",
        data_dir=str(data_dir),
        model_dir=str(tmp_path),
        train_steps=16,
        deterministic=True,
    )
    losses = [value for _, value in scalars(tmp_path)["loss"]]
    assert len(losses) == 8 and np.mean(losses[-2:]) < 0.8 * losses[0], losses
    logged = scalars(tmp_path)
    assert {"top1", "top5", "learning_rate", "images_per_second"} <= logged.keys()
    assert len([tag for tag in logged if tag.startswith("trust_ratio/")]) == 4
    assert summary["eval_images"] == CLASSES * VALIDATION_PER_CLASS
    assert [step for step, _ in scalars(tmp_path, "eval")["top1"]] == [16]


def test_accumulation_equals_the_whole_batch_and_counts_updates(data_dir, tmp_path):
    alexnet = dict(model="alexnet", image_size=67, dropout=0.0, learning_rate=2.0)
    settings = dict(alexnet, **SMALL, data_dir=str(data_dir), train_steps=4, deterministic=True)
    run(**settings, model_dir=str(tmp_path / "whole"), strategy="data_parallel")
    run(**settings, model_dir=str(tmp_path / "k2"), strategy="data_parallel", accumulation_steps=2)
    whole, _ = checkpoint(tmp_path / "whole")
    accumulated, _ = checkpoint(tmp_path / "k2")
    # The checkpoints list the model's variables first; the optimizer's differ
    # (the accumulated run also holds its gradient accumulators).
    model_variables = len(models.build("alexnet", CLASSES, 67, dropout=0.0).variables)
    for i in range(model_variables):
        np.testing.assert_allclose(accumulated[f"v{i}"], whole[f"v{i}"], rtol=1e-5, atol=1e-5)
    with open(tmp_path / "k2" / "config.json") as f:
        plan = json.load(f)["plan"]
    schedule = optimization.schedule(
        train_config.resolve(**settings, model_dir="/unused"), imagenet_job.Plan(**plan)
    )
    logged = scalars(tmp_path / "k2")["learning_rate"]
    assert [step for step, _ in logged] == [2, 4]  # updates, not micro-batches
    for update, rate in logged:
        assert rate == pytest.approx(float(schedule(update)), rel=1e-6)


def environment():
    return imagenet_runs.environment(
        KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4"
    )


def test_resume_after_sigkill_equals_an_uninterrupted_run(data_dir, tmp_path):
    flags = [
        "--strategy=data_parallel",
        "--model=alexnet_bn",  # batch norm and dropout: both must resume exactly
        "--image_size=67",
        "--global_batch_size=8",
        "--train_steps=12",
        "--steps_per_loop=2",
        "--warmup_epochs=0.5",
        "--eval_every_epochs=0",
        "--deterministic",
    ]
    kwargs = dict(cwd=ROOT, env=environment(), text=True)
    whole = subprocess.run(
        command(tmp_path / "whole", data_dir, *flags), capture_output=True, timeout=300, **kwargs
    )
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = subprocess.Popen(
        command(tmp_path / "killed", data_dir, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )
    deadline = time.time() + 240
    while not glob.glob(str(tmp_path / "killed" / "checkpoints" / "ckpt-*.npz")):
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    _, stopped_at = checkpoint(tmp_path / "killed")
    assert 2 <= stopped_at < 12

    resumed = subprocess.run(
        command(tmp_path / "killed", data_dir, *flags), capture_output=True, timeout=300, **kwargs
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from step {stopped_at}" in resumed.stdout
    assert_arrays_close(
        checkpoint(tmp_path / "killed")[0], checkpoint(tmp_path / "whole")[0], 1e-6, 1e-7
    )


def test_non_finite_loss_stops_without_saving_it(data_dir, tmp_path):
    settings = {**LEARNS, **SMALL, "learning_rate": 1e30, "warmup_epochs": 0}
    with pytest.raises(imagenet_job.TrainingDiverged, match="not finite at step"):
        run(**settings, data_dir=str(data_dir), model_dir=str(tmp_path), train_steps=8)
    arrays, _ = checkpoint(tmp_path) if glob.glob(str(tmp_path / "checkpoints" / "*")) else ({}, 0)
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), key


def write_records(path, labels, rng, size=(40, 56)):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in labels:
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(image).numpy()])
                ),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def test_evaluation_sees_37_images_exactly_once_on_four_devices(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 11, size=37)  # 1..10 in the files
    for split in ("train", "validation"):
        write_records(tmp_path / f"{split}-00000-of-00002", labels[:20], rng)
        write_records(tmp_path / f"{split}-00001-of-00002", labels[20:], rng)
    (tmp_path / "labels.txt").write_text("".join(f"{i}\tn{i}\n" for i in range(1, 11)))
    config = train_config.resolve(
        model="alexnet",
        image_size=67,
        strategy="data_parallel",
        data_dir=str(tmp_path),
        model_dir=str(tmp_path / "run"),
        global_batch_size=8,
        train_steps=1,
    )
    runner = jax_runner.Runner(config)
    source = imagenet_input.TFRecordSource(str(tmp_path / "validation-*"))
    plan = imagenet_job.Plan(
        replicas=4,
        num_classes=10,
        train_images=37,
        eval_images=37,
        steps_per_epoch=5,
        train_steps=1,
        warmup_steps=0,
        steps_per_loop=1,
        eval_every_steps=0,
    )
    runner.build(plan, source, source)
    try:
        runner.start(0)
        result = runner.evaluate()
        images = np.stack(
            [
                imagenet_input.preprocess(image_bytes, False, 67).numpy()
                for image_bytes, _ in source.examples(training=False, deterministic=True)
            ]
        )
        logits = keras.ops.convert_to_numpy(runner.model(images, training=False))
    finally:
        runner.close()
    truth = labels - 1
    ranked = np.argsort(-logits, axis=1)
    assert result["examples"] == 37
    assert result["top1"] == pytest.approx(np.mean(ranked[:, 0] == truth), abs=1e-6)
    assert result["top5"] == pytest.approx(
        np.mean([t in r[:5] for t, r in zip(truth, ranked)]), abs=1e-6
    )


def test_synthetic_bfloat16_run(tmp_path):
    summary = run(
        **LEARNS,
        synthetic=True,
        strategy="data_parallel",
        dtype="bfloat16",
        model_dir=str(tmp_path),
        global_batch_size=8,
        train_steps=2,
        steps_per_loop=1,
    )
    assert summary["top1"] is None and summary["images_per_second"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"


def test_tensorflow_strategies_are_refused_on_jax(data_dir, tmp_path):
    result = subprocess.run(
        command(tmp_path / "run", data_dir, "--strategy=mirrored"),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "--strategy=mirrored is a tf.distribute strategy" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
