"""The ImageNet recipe on TensorFlow, end to end on a generated ImageNet:
each strategy trains, mixed precision, synthetic and TFDS input, time to
accuracy, the evaluation schedule, bad input. (Across replicas:
tests/test_imagenet_train_replicas.py; accumulation, resume after SIGKILL
and divergence, on every backend: tests/test_imagenet_recipe.py; checkpoint
and settings faults: tests/test_faults_recipe.py.)"""

import json

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute recipes need TensorFlow"
)
tf = pytest.importorskip("tensorflow")

import commands  # noqa: E402
from imagenet_runs import ALEXNET  # noqa: E402
from imagenet_runs import CLASSES  # noqa: E402
from imagenet_runs import LEARNS  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import VALIDATION_PER_CLASS  # noqa: E402
from imagenet_runs import assert_loss_falls  # noqa: E402
from imagenet_runs import checkpoint_arrays  # noqa: E402
from imagenet_runs import checkpoint_steps  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from recipes.imagenet import bad_data  # noqa: E402
from recipes.imagenet import batching  # noqa: E402
from recipes.imagenet import crops  # noqa: E402
from recipes.imagenet import sources  # noqa: E402
from recipes.imagenet import strategies  # noqa: E402

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
        # One checkpoint, at the end: ResNet-50's are 200 MB with the momentum.
        **{**SMALL, "checkpoint_every_minutes": 60},
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
    weights = checkpoint_arrays(tmp_path)[0]
    assert all(np.all(np.isfinite(w)) for w in weights.values() if w.dtype.kind == "f")
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    if dtype == "float16":  # the loss scale was saved with the optimizer
        assert any("loss_scale" in key or "dynamic_scale" in key for key in weights), list(weights)


def test_synthetic_data_needs_no_files(tmp_path):
    summary = run(
        **LEARNS,
        synthetic=True,
        model_dir=str(tmp_path),
        global_batch_size=4,
        train_steps=4,
        steps_per_loop=2,
        bn_span=0,
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


# --- Time to accuracy ----------------------------------------------------------


def test_time_to_accuracy_stops_at_the_first_evaluation_reaching_the_target(data_dir, tmp_path):
    """8 steps an epoch: evaluations at step 2 (the offset), then every 4;
    a 1% target is reached at the first (a constant guess scores 25%). The
    evaluation batch (4) is not the training one (8)."""
    summary = run(
        **ALEXNET,
        **{**SMALL, "eval_every_epochs": 0.5},
        eval_offset_epochs=0.25,
        target_accuracy=0.01,
        eval_batch_size=4,
        data_dir=str(data_dir),
        model_dir=str(tmp_path),
        train_steps=8,
        deterministic=True,
    )
    assert summary["steps"] == 2 and summary["eval_images"] == CLASSES * VALIDATION_PER_CLASS
    reached = summary["target_reached"]
    assert (reached["step"], reached["epoch"]) == (2, 0.25) and reached["train_seconds"] > 0
    assert [step for step, _ in scalars(tmp_path, "eval")["top1"]] == [2]
    assert checkpoint_steps(tmp_path) == [2]  # saved where it stopped
    assert summary["images_per_second"] is None or summary["images_per_second"] > 0
    assert 0 < summary["wall_images_per_second"]


# --- Evaluation ------------------------------------------------------------------


def test_evaluation_preprocessing_by_hand(tmp_path):
    """A 40x60 image: the centre crop is 0.875 * 40 = 35 pixels square, from
    row (40 - 35 + 1) // 2 = 3 and column (60 - 35 + 1) // 2 = 13, resized to
    35 (no change), shipped as uint8; the model normalises it."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    path = tmp_path / "image.jpg"
    Image.fromarray(pixels).save(path, quality=100, subsampling=0)  # no chroma blocks
    image_bytes = path.read_bytes()
    decoded = tf.io.decode_jpeg(image_bytes).numpy().astype(np.float64)

    got = crops.preprocess(tf.constant(image_bytes), False, image_size=35)
    assert got.dtype == tf.uint8
    np.testing.assert_array_equal(got.numpy(), decoded[3:38, 13:48])


# --- Bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,error,match",
    [
        (dict(data_dir="{missing}"), FileNotFoundError, "--data_dir=.*no train-"),
        (dict(data_dir="{empty}"), FileNotFoundError, "--data_dir=.*no train-"),
        (dict(strategy="mirrored", global_batch_size=6), ValueError, "--global_batch_size=6"),
        (dict(accumulation_steps=3), ValueError, "--accumulation_steps=3"),
        (dict(strategy="mirrored", bn_span=4), ValueError, "--bn_span=4: on TensorFlow"),
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
    assert again == first
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
            train_command(
                tmp_path / "run", data_dir, "--global_batch_size=8", "--bn_span=0", *flags
            ),
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
    source = sources.TFRecordSource(str(data_dir / "train-*"), label_offset=0)  # 1..4
    dataset = batching.batches(
        source, training=False, global_batch_size=64, image_size=16, num_classes=CLASSES
    )
    with pytest.raises(bad_data.LabelOutOfRange, match=r"Label outside \[0, 4\): is the label"):
        with source.naming_bad_files():
            for _ in dataset:
                pass
