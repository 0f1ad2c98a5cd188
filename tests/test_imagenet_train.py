"""The ImageNet recipes end to end on a generated ImageNet: every strategy,
XLA, resume after SIGKILL, exact evaluation, accumulation, bad input."""

import json
import os
import signal

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute recipes need TensorFlow"
)
tf = pytest.importorskip("tensorflow")

import commands  # noqa: E402
import keras_lars  # noqa: E402
import reference  # noqa: E402
from cluster import reserved_ports  # noqa: E402
from cluster import tf_config  # noqa: E402
from imagenet_runs import ALEXNET  # noqa: E402
from imagenet_runs import CLASSES  # noqa: E402
from imagenet_runs import LEARNS  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import VALIDATION_PER_CLASS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import assert_loss_falls  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from imagenet_runs import write_records  # noqa: E402
from recipes.imagenet import input_pipeline  # noqa: E402
from recipes.imagenet import job  # noqa: E402
from recipes.imagenet import models  # noqa: E402
from recipes.imagenet import strategies  # noqa: E402
from recipes.imagenet.train_loop import Trainer  # noqa: E402


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


def expected_rate(model_dir, step):
    """The MLPerf schedule's rate at `step`, from the formula (tests/reference.py)
    and the run's config.json: warm-up from 0, then poly(2) decay over
    train_steps - warmup_steps + 1 steps."""
    with open(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)
    config, plan = saved["config"], saved["plan"]
    return reference.polynomial_warmup(
        step,
        peak=config["learning_rate"],
        decay_steps=plan["train_steps"] - plan["warmup_steps"] + 1,
        warmup_steps=plan["warmup_steps"],
        end=config["end_learning_rate"],
    )


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


def test_batch_norm_statistics_become_their_mean_over_replicas_after_a_loop():
    """Each replica's moving statistics drift apart in a loop (each sees its
    own images); after the loop every copy is their mean."""
    strategy = strategies.create("mirrored")
    with strategy.scope():
        model = models.build("alexnet_bn", 4, 67)
        trainer = Trainer(
            strategy, model, keras_lars.LARS(), global_batch_size=8, synthetic=(67, 4, "float32")
        )
    moving = [v for v in model.non_trainable_variables if "moving" in v.path]
    assert moving

    def copies(variable):
        return [c.numpy() for c in strategy.experimental_local_results(variable.value)]

    trainer._train_loop(None, tf.constant(2))  # the loop alone, before the averaging
    before = {v.path: copies(v) for v in moving}
    assert all(len(c) == 4 for c in before.values())
    assert any(not np.allclose(c[0], c[1]) for c in before.values()), "replicas did not differ"
    trainer._average_moving_statistics()
    for variable in moving:
        expected = np.mean(before[variable.path], axis=0)
        for copy in copies(variable):
            np.testing.assert_allclose(copy, expected, rtol=1e-6, err_msg=variable.path)


def test_multi_worker_with_two_localhost_workers(data_dir, tmp_path):
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
    with reserved_ports(2) as ports:
        results = commands.run_all(
            [train_command(tmp_path, data_dir, *flags)] * 2,
            [tmp_path / f"worker{i}.log" for i in range(2)],
            [commands.environment(TF_CONFIG=tf_config(ports, i)) for i in range(2)],
        )
    outputs = [output for _, output in results]
    assert [code for code, _ in results] == [0, 0], "\n".join(o[-3000:] for o in outputs)
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
    logged = scalars(tmp_path / "k4")["learning_rate"]
    assert [step for step, _ in logged] == [2, 4]  # updates, not micro-batches
    for update, rate in logged:
        assert rate == pytest.approx(expected_rate(tmp_path / "k4", update), rel=1e-6)


def test_resume_after_sigkill_equals_an_uninterrupted_run(data_dir, tmp_path):
    """The run SIGKILLs itself right after saving step 6 (recipes/faults.py)."""
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
    code, output = commands.run(
        train_command(tmp_path / "whole", data_dir, *flags), tmp_path / "whole.log"
    )
    assert code == 0, output[-3000:]
    killed = train_command(tmp_path / "killed", data_dir, *flags)
    code, output = commands.run(
        killed, tmp_path / "killed.log", env=commands.environment(**{commands.KILL_AFTER: "6"})
    )
    assert code == -signal.SIGKILL, output[-3000:]
    assert checkpoint_step(tmp_path / "killed") == 6

    code, output = commands.run(killed, tmp_path / "resumed.log")
    assert code == 0, output[-3000:]
    assert "Resumed from step 6" in output
    assert_arrays_close(
        checkpoint_weights(tmp_path / "killed"),
        checkpoint_weights(tmp_path / "whole"),
        rtol=1e-6,
        atol=1e-7,
    )
    after = [(s, r) for s, r in scalars(tmp_path / "killed")["learning_rate"] if s > 6]
    assert [s for s, _ in after] == [8, 10, 12, 14]
    for step, rate in after:
        assert rate == pytest.approx(expected_rate(tmp_path / "killed", step), rel=1e-6)


def test_non_finite_loss_stops_without_saving_it(data_dir, tmp_path):
    settings = {**ALEXNET, **SMALL, "learning_rate": 1e30, "steps_per_loop": 1, "warmup_epochs": 0}
    with pytest.raises(job.TrainingDiverged, match=r"not finite at step (\d+)") as info:
        run(**settings, data_dir=str(data_dir), model_dir=str(tmp_path), train_steps=8)
    bad_step = int(info.value.args[0].split("at step ")[1].split(";")[0])
    assert checkpoint_step(tmp_path) <= bad_step
    for key, value in checkpoint_weights(tmp_path).items():
        assert np.all(np.isfinite(value)), key


# --- Evaluation ------------------------------------------------------------------


def test_evaluation_sees_37_images_exactly_once_on_four_replicas(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 11, size=37)  # 1..10 in the files
    write_records(tmp_path / "validation-00000-of-00002", labels[:20], rng)
    write_records(tmp_path / "validation-00001-of-00002", labels[20:], rng)
    source = input_pipeline.TFRecordSource(str(tmp_path / "validation-*"))
    strategy = strategies.create("mirrored")
    assert strategy.num_replicas_in_sync == 4
    with strategy.scope():
        model = models.build("alexnet", 10, 67)
        optimizer = keras_lars.LARS()
        trainer = Trainer(strategy, model, optimizer, global_batch_size=8)
    steps = input_pipeline.evaluation_steps(37, 8)
    assert steps == 5  # 40 places: the last step holds 5 images, a replica none
    dataset = strategy.distribute_datasets_from_function(
        lambda context: input_pipeline.evaluation_batches(
            source, global_batch_size=8, num_examples=37, input_context=context, image_size=67
        )
    )
    result = trainer.evaluate(iter(dataset), steps)

    images = tf.stack(
        [
            input_pipeline.preprocess(image_bytes, False, 67)
            for image_bytes, _ in source.examples(training=False, deterministic=True)
        ]
    )
    logits = model(images, training=False).numpy()
    truth = labels - 1
    ranked = np.argsort(-logits, axis=1)
    assert result.examples == 37
    assert result.top1 == pytest.approx(np.mean(ranked[:, 0] == truth))
    assert result.top5 == pytest.approx(np.mean([t in r[:5] for t, r in zip(truth, ranked)]))


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

    got = input_pipeline.preprocess(tf.constant(image_bytes), False, image_size=35).numpy()

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
        code, output = commands.run(
            train_command(tmp_path / "run", data_dir, "--global_batch_size=8", *flags),
            tmp_path / "error.log",
        )
        assert code == 1, (flags, output[-2000:])
        # Ours, or absl's for a value its flag type refuses (an unknown preset).
        prefixes = ("imagenet_train: error:", "FATAL Flags parsing error:")
        errors = [line for line in output.splitlines() if line.startswith(prefixes)]
        assert len(errors) == 1 and message in errors[0], output
        assert "Traceback" not in output, output
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_help_lists_the_presets(tmp_path):
    _, output = commands.run(
        commands.module("recipes.imagenet_train", "--helpshort"), tmp_path / "help.log"
    )
    assert "mlperf_8k: resnet50, batch 8192, rate 17, 44 epochs" in output
    assert "paper_alexnet_bn_8k: alexnet_bn, batch 8192, rate 14" in output


def test_a_wrong_label_offset_is_reported_at_once_without_a_rescan(data_dir, no_rescan):
    source = input_pipeline.TFRecordSource(str(data_dir / "train-*"), label_offset=0)  # 1..4
    dataset = input_pipeline.batches(
        source, training=False, global_batch_size=64, image_size=16, num_classes=CLASSES
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="is the label offset right"):
        with source.naming_bad_files():
            for _ in dataset:
                pass
