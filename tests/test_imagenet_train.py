"""The ImageNet recipes end to end on a generated ImageNet: every strategy,
XLA, resume after SIGKILL, exact evaluation, accumulation, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute recipes need TensorFlow"
)
tf = pytest.importorskip("tensorflow")

from imagenet_runs import CLASSES  # noqa: E402
from imagenet_runs import LEARNS  # noqa: E402
from imagenet_runs import ROOT  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import VALIDATION_PER_CLASS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import command  # noqa: E402
from imagenet_runs import environment  # noqa: E402
from imagenet_runs import make_tfrecords  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402

import keras_lars  # noqa: E402
from cluster import free_ports  # noqa: E402
from cluster import tf_config  # noqa: E402
from recipes import imagenet_input  # noqa: E402
from recipes import imagenet_job  # noqa: E402
from recipes import models  # noqa: E402
from recipes import strategies  # noqa: E402
from recipes.train_loop import Trainer  # noqa: E402

# AlexNet at its smallest input, without dropout: the same numbers on one
# device and on four replicas. A few steps of batch 8.
ALEXNET = dict(model="alexnet", image_size=67, dropout=0.0, learning_rate=2.0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_tfrecords(tmp_path_factory.mktemp("imagenet"))


def checkpoint_weights(model_dir):
    """Every variable in the latest checkpoint (weights, BN statistics,
    momentum, step), by checkpoint key."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.endswith("VARIABLE_VALUE")
    }


def checkpoint_step(model_dir):
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


def schedule_of(model_dir):
    """The PolynomialWarmup a run used, rebuilt from its config.json."""
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)
    config, plan = saved["config"], saved["plan"]
    return keras_lars.PolynomialWarmup(
        config["learning_rate"],
        decay_steps=plan["train_steps"] - plan["warmup_steps"] + 1,
        warmup_steps=plan["warmup_steps"],
        end_learning_rate=config["end_learning_rate"],
    )


def assert_loss_falls(model_dir):
    """The last two loops' mean loss is well below the first loop's."""
    losses = [value for _, value in scalars(model_dir)["loss"]]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-2:]) < 0.8 * losses[0], losses


# --- Each strategy trains ------------------------------------------------------


def test_default_strategy_trains_resnet50_and_logs(data_dir, tmp_path, capsys):
    summary = run(
        model="resnet50",
        image_size=32,
        learning_rate=0.5,
        data_dir=str(data_dir),
        model_dir=str(tmp_path),
        train_steps=8,
        deterministic=True,
        **SMALL,
    )
    assert len(scalars(tmp_path)["loss"]) == 4
    assert_loss_falls(tmp_path)
    # 53 convolutions and the classifier are decayed and adapted; BN is not.
    assert "LARS variables: 54 decayed and adapted (conv1/kernel," in capsys.readouterr().out
    assert summary["steps"] == 8 and summary["eval_images"] == CLASSES * VALIDATION_PER_CLASS
    logged = scalars(tmp_path)
    assert {"top1", "top5", "learning_rate", "images_per_second"} <= logged.keys()
    ratios = [tag for tag in logged if tag.startswith("trust_ratio/")]
    assert len(ratios) == 4 and "trust_ratio/conv1/kernel" in ratios
    assert [step for step, _ in scalars(tmp_path, "eval")["top1"]] == [8]
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    assert saved["config"]["model"] == "resnet50" and saved["plan"]["steps_per_epoch"] == 8
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == summary


@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_loss_falls_under(data_dir, tmp_path, strategy):
    summary = run(
        **LEARNS,
        **{**SMALL, "global_batch_size": 16},  # 4 images a replica for batch norm
        strategy=strategy,
        data_dir=str(data_dir),
        model_dir=str(tmp_path),
        train_steps=16,
        deterministic=True,  # the same verdict on every run
    )
    assert_loss_falls(tmp_path)
    assert summary["eval_images"] == CLASSES * VALIDATION_PER_CLASS


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_trains_with_float32_logits(data_dir, tmp_path, dtype):
    """bfloat16 (the TPU default) and float16, which scales the loss."""
    run(
        **LEARNS,
        **SMALL,
        dtype=dtype,
        data_dir=str(data_dir),
        model_dir=str(tmp_path),
        train_steps=4,
    )
    losses = [value for _, value in scalars(tmp_path)["loss"]]
    assert len(losses) == 2 and np.all(np.isfinite(losses)), losses
    weights = checkpoint_weights(tmp_path)
    assert all(np.all(np.isfinite(w)) for w in weights.values() if w.dtype.kind == "f")
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    if dtype == "float16":  # the loss scale was saved with the optimizer
        assert any("loss_scale" in key or "dynamic_scale" in key for key in weights), list(weights)


def test_mirrored_on_four_cpus_equals_one_device(data_dir, tmp_path):
    """The same global batch on four replicas (conftest.py's logical CPUs)."""
    settings = dict(ALEXNET, **SMALL, data_dir=str(data_dir), train_steps=4, deterministic=True)
    one = run(**settings, model_dir=str(tmp_path / "one"))
    four = run(**settings, model_dir=str(tmp_path / "four"), strategy="mirrored")
    assert "4 replica(s)" in four["strategy"] and "1 replica(s)" in one["strategy"]
    assert_arrays_close(
        checkpoint_weights(tmp_path / "four"),
        checkpoint_weights(tmp_path / "one"),
        rtol=1e-5,
        atol=1e-5,
    )


def test_batch_norm_statistics_agree_across_replicas_after_a_loop():
    strategy = strategies.create("mirrored")
    with strategy.scope():
        model = models.build("alexnet_bn", 4, 67)
        trainer = Trainer(
            strategy, model, keras_lars.LARS(), global_batch_size=8, synthetic=(67, 4, "float32")
        )
    trainer.train(None, steps=2)
    moving = [v for v in model.non_trainable_variables if "moving" in v.path]
    assert moving
    for variable in moving:
        copies = strategy.experimental_local_results(variable.value)
        assert len(copies) == 4
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy.numpy(), copies[0].numpy(), err_msg=variable.path)


def test_multi_worker_with_two_localhost_workers(data_dir, tmp_path):
    ports = free_ports(2)
    flags = [
        "--strategy=multi_worker",
        *(f"--{name}={value}" for name, value in LEARNS.items()),
        "--global_batch_size=8",
        "--train_steps=16",
        "--steps_per_loop=2",
        "--warmup_epochs=0.25",
        "--eval_every_epochs=0",
        "--deterministic",
    ]
    workers = [
        subprocess.Popen(
            command(tmp_path, data_dir, *flags),
            cwd=ROOT,
            env=environment(TF_CONFIG=tf_config(ports, i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "CollectiveAllReduceStrategy, 2 replica(s)" in outputs[0]
    assert_loss_falls(tmp_path)
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["eval_images"] == CLASSES * VALIDATION_PER_CLASS
    # Worker 1 saved its copy aside; both ended with the same weights.
    assert_arrays_close(
        checkpoint_weights(tmp_path / "workers" / "worker1"),
        checkpoint_weights(tmp_path),
        rtol=0,
        atol=0,
    )


def test_xla_compiled_step_on_one_device(data_dir, tmp_path):
    """What a TPUStrategy compiles: the replica step under XLA."""
    run(
        **LEARNS,
        jit_compile=True,
        data_dir=str(data_dir),
        model_dir=str(tmp_path),
        train_steps=16,
        deterministic=True,
        **SMALL,
    )
    assert_loss_falls(tmp_path)


def test_synthetic_data_needs_no_files(tmp_path):
    summary = run(
        **LEARNS,
        synthetic=True,
        model_dir=str(tmp_path),
        global_batch_size=4,
        train_steps=4,
        steps_per_loop=2,
    )
    assert summary["top1"] is None and summary["images_per_second"] > 0


def test_tfds_imagenet2012_through_the_builder(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        summary = run(
            **ALEXNET,
            tfds_data_dir=str(tmp_path / "tfds"),
            model_dir=str(tmp_path / "run"),
            global_batch_size=4,
            train_steps=3,
            steps_per_loop=3,
            warmup_epochs=0,
            eval_every_epochs=0,
        )
    assert summary["steps"] == 3 and summary["eval_images"] == 12


# --- Accumulation, resume, divergence ------------------------------------------


def test_accumulation_equals_the_whole_batch_and_counts_updates(data_dir, tmp_path):
    settings = dict(ALEXNET, **SMALL, data_dir=str(data_dir), train_steps=4, deterministic=True)
    run(**settings, model_dir=str(tmp_path / "whole"))
    run(**settings, model_dir=str(tmp_path / "k4"), accumulation_steps=4)
    assert_arrays_close(
        checkpoint_weights(tmp_path / "k4"),
        checkpoint_weights(tmp_path / "whole"),
        rtol=1e-5,
        atol=1e-5,
    )
    schedule = schedule_of(tmp_path / "k4")
    logged = scalars(tmp_path / "k4")["learning_rate"]
    assert [step for step, _ in logged] == [2, 4]  # updates, not micro-batches
    for update, rate in logged:
        assert rate == pytest.approx(float(schedule(update)), rel=1e-6)


def wait_for_checkpoint(model_dir, process, timeout=240):
    index = os.path.join(model_dir, "checkpoints", "checkpoint")
    deadline = time.time() + timeout
    while not os.path.exists(index):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.01)


def test_resume_after_sigkill_equals_an_uninterrupted_run(data_dir, tmp_path):
    flags = [
        "--model=alexnet_bn",  # batch norm and dropout: both must resume exactly
        "--image_size=67",
        "--global_batch_size=8",
        "--train_steps=14",
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
    wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    stopped_at = checkpoint_step(tmp_path / "killed")
    assert 2 <= stopped_at < 14

    resumed = subprocess.run(
        command(tmp_path / "killed", data_dir, *flags), capture_output=True, timeout=300, **kwargs
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from step {stopped_at}" in resumed.stdout
    assert_arrays_close(
        checkpoint_weights(tmp_path / "killed"),
        checkpoint_weights(tmp_path / "whole"),
        rtol=1e-6,
        atol=1e-7,
    )
    schedule = schedule_of(tmp_path / "killed")
    after = [(s, r) for s, r in scalars(tmp_path / "killed")["learning_rate"] if s > stopped_at]
    assert after
    for step, rate in after:
        assert rate == pytest.approx(float(schedule(step)), rel=1e-6)


def test_non_finite_loss_stops_without_saving_it(data_dir, tmp_path):
    settings = {**ALEXNET, **SMALL, "learning_rate": 1e30, "steps_per_loop": 1, "warmup_epochs": 0}
    with pytest.raises(imagenet_job.TrainingDiverged, match=r"not finite at step (\d+)") as info:
        run(**settings, data_dir=str(data_dir), model_dir=str(tmp_path), train_steps=8)
    bad_step = int(info.value.args[0].split("at step ")[1].split(";")[0])
    assert checkpoint_step(tmp_path) <= bad_step
    for key, value in checkpoint_weights(tmp_path).items():
        assert np.all(np.isfinite(value)), key


# --- Evaluation ------------------------------------------------------------------


def write_records(path, labels, rng, size=(40, 56)):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for label in labels:
            image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "image/encoded": tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(image).numpy()])
                        ),
                        "image/class/label": tf.train.Feature(
                            int64_list=tf.train.Int64List(value=[label])
                        ),
                    }
                )
            )
            writer.write(example.SerializeToString())


def test_evaluation_sees_37_images_exactly_once_on_four_replicas(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 11, size=37)  # 1..10 in the files
    write_records(tmp_path / "validation-00000-of-00002", labels[:20], rng)
    write_records(tmp_path / "validation-00001-of-00002", labels[20:], rng)
    source = imagenet_input.TFRecordSource(str(tmp_path / "validation-*"))
    strategy = strategies.create("mirrored")
    assert strategy.num_replicas_in_sync == 4
    with strategy.scope():
        model = models.build("alexnet", 10, 67)
        optimizer = keras_lars.LARS()
        trainer = Trainer(strategy, model, optimizer, global_batch_size=8)
    steps = imagenet_input.evaluation_steps(37, 8)
    assert steps == 5  # 40 places: the last step holds 5 images, a replica none
    dataset = strategy.distribute_datasets_from_function(
        lambda context: imagenet_input.evaluation_batches(
            source, global_batch_size=8, num_examples=37, input_context=context, image_size=67
        )
    )
    result = trainer.evaluate(iter(dataset), steps)

    images = tf.stack(
        [
            imagenet_input.preprocess(image_bytes, False, 67)
            for image_bytes, _ in source.examples(training=False, deterministic=True)
        ]
    )
    logits = model(images, training=False).numpy()
    truth = labels - 1
    ranked = np.argsort(-logits, axis=1)
    assert result["examples"] == 37
    assert result["top1"] == pytest.approx(np.mean(ranked[:, 0] == truth))
    assert result["top5"] == pytest.approx(np.mean([t in r[:5] for t, r in zip(truth, ranked)]))


def test_evaluation_preprocessing_by_hand(tmp_path):
    """A 40x60 image: the centre crop is 0.875 * 40 = 35 pixels square, from
    row (40 - 35 + 1) // 2 = 3 and column (60 - 35 + 1) // 2 = 13; then
    (pixel - mean) / std with ImageNet's RGB statistics x 255."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    path = tmp_path / "image.jpg"
    Image.fromarray(pixels).save(path, quality=100, subsampling=0)  # no chroma blocks
    image_bytes = path.read_bytes()
    decoded = tf.io.decode_jpeg(image_bytes).numpy().astype(np.float64)

    got = imagenet_input.preprocess(tf.constant(image_bytes), False, image_size=35).numpy()

    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    expected = (decoded[3:38, 13:48] - mean) / std
    np.testing.assert_allclose(got, expected, atol=1e-4)


# --- Bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,error,match",
    [
        (dict(data_dir="{missing}"), FileNotFoundError, "--data_dir=.*no train-"),
        (dict(data_dir="{empty}"), FileNotFoundError, "--data_dir=.*no train-"),
        (dict(strategy="mirrored", global_batch_size=6), ValueError, "--global_batch_size=6"),
        (dict(accumulation_steps=3), ValueError, "--accumulation_steps=3"),
        (dict(strategy="mirrored", jit_compile=True), ValueError, "--jit_compile.*keras #19005"),
        (dict(strategy="tpu"), strategies.StrategyError, "needs --tpu"),
        (dict(strategy="tpu", tpu="local"), strategies.StrategyError, "no TPU reachable"),
    ],
)
def test_bad_input_is_named_and_leaves_no_progress(data_dir, tmp_path, settings, error, match):
    (tmp_path / "empty").mkdir()
    paths = dict(missing=str(tmp_path / "missing"), empty=str(tmp_path / "empty"))
    settings = {k: v.format(**paths) if isinstance(v, str) else v for k, v in settings.items()}
    settings = {**ALEXNET, **SMALL, "data_dir": str(data_dir), "train_steps": 8, **settings}
    with pytest.raises(error, match=match):
        run(**settings, model_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_model_dir_holding_another_run_is_refused(data_dir, tmp_path):
    settings = dict(ALEXNET, **SMALL, data_dir=str(data_dir), model_dir=str(tmp_path))
    first = run(**settings, train_steps=2)
    again = run(**settings, train_steps=2)  # finished: nothing to train, the same report
    assert again["resumed_from_step"] == 2 and again["steps"] == 2
    assert again["top1"] == first["top1"] and again["eval_images"] == first["eval_images"]
    with pytest.raises(ValueError, match="--train_steps: 2 -> 4"):
        run(**settings, train_steps=4)


def test_command_line_errors_are_one_line_with_exit_1(data_dir, tmp_path):
    cases = [
        (["--strategy=tpu", "--tpu=local"], "no TPU reachable at --tpu=local"),
        (["--preset=mlperf_5k"], "--preset"),
        (["--preset=mlperf_8k", "--model=alexnet"], "--preset=mlperf_8k is for --model=resnet50"),
        ([f"--data_dir={tmp_path / 'nowhere'}"], "no train-* TFRecord files"),
        (["--strategy=data_parallel"], "--strategy=data_parallel is keras.distribution"),
    ]
    for flags, message in cases:
        result = subprocess.run(
            command(tmp_path / "run", data_dir, "--global_batch_size=8", *flags),
            cwd=ROOT,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, (flags, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_help_lists_the_presets():
    result = subprocess.run(
        [sys.executable, "-m", "recipes.imagenet_train", "--helpshort"],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "mlperf_8k: resnet50, batch 8192, rate 17, 44 epochs" in result.stdout
    assert "paper_alexnet_bn_8k: alexnet_bn, batch 8192, rate 14" in result.stdout


def test_a_wrong_label_offset_is_reported_at_once_without_a_rescan(data_dir, monkeypatch):
    def no_rescan(*args, **kwargs):
        raise AssertionError("a label error must not start a rescan of the files")

    monkeypatch.setattr(imagenet_input, "find_first_bad_file", no_rescan)
    source = imagenet_input.TFRecordSource(str(data_dir / "train-*"), label_offset=0)  # 1..4
    dataset = imagenet_input.batches(
        source, training=False, global_batch_size=64, image_size=16, num_classes=CLASSES
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="is the label offset right"):
        with source.naming_bad_files():
            for _ in dataset:
                pass
