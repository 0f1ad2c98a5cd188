"""Presets and the recipes' configuration: values against their sources,
flags over presets, and bad settings named by flag."""

import json
import re
import sys

import pytest

import commands
from recipes.imagenet import config as config_lib
from recipes.imagenet import presets

# (batch, peak rate, warm-up epochs, weight decay, momentum, epochs), copied
# from the sources' tables (the LARS paper's Tables; the MLPerf and
# tensorflow/tpu commands; each preset's `source`), not from presets.py.
SOURCES = {
    "mlperf_4k": (4096, 10.0, 5, 2e-4, 0.9, 42),
    "mlperf_8k": (8192, 17.0, 5, 2e-4, 0.9, 44),
    "tpu_16k": (16384, 25.0, 5, 1e-4, 0.9, 91),
    "mlperf_32k": (32768, 29.0, 18, 1e-4, 0.929, 60),
    "mlperf_64k": (65536, 24.699, 31, 1e-4, 0.951807, 88.9),
    "paper_resnet_8k": (8192, 30.0, 5, 5e-4, 0.9, 100),
    "paper_resnet_16k": (16384, 33.0, 12, 5e-4, 0.9, 100),
    "paper_resnet_32k": (32768, 40.0, 12, 5e-4, 0.9, 100),
    "paper_alexnet_512": (512, 2.0, 2, 5e-4, 0.9, 100),
    "paper_alexnet_8k": (8192, 10.0, 2, 5e-4, 0.9, 100),
    "paper_alexnet_32k": (32768, 14.0, 2, 5e-4, 0.9, 100),
    "paper_alexnet_bn_8k": (8192, 14.0, 5, 5e-4, 0.9, 100),  # the paper's 14, not NVCaffe's 10
    "paper_alexnet_bn_16k": (16384, 23.0, 5, 5e-4, 0.9, 100),
    "paper_alexnet_bn_32k": (32768, 22.0, 5, 5e-4, 0.9, 100),
}
FIELDS = ("global_batch_size", "learning_rate", "warmup_epochs", "weight_decay", "momentum")


@pytest.mark.parametrize("name", SOURCES)
def test_presets_match_their_sources(name):
    preset = presets.PRESETS[name]
    assert tuple(preset[f] for f in FIELDS + ("train_epochs",)) == SOURCES[name]
    assert preset["source"] and preset["reported"]


def test_mlperf_presets_use_label_smoothing_and_end_rate():
    for name in ("mlperf_4k", "mlperf_8k", "tpu_16k", "mlperf_32k", "mlperf_64k"):
        preset = presets.PRESETS[name]
        assert (preset["label_smoothing"], preset["end_learning_rate"]) == (0.1, 1e-4), name
        assert preset["eval_every_epochs"] == 4


# (batch-norm span, preprocessing, target top-1, first evaluation epoch), from
# each source: Google's MLPerf logs (model_bn_span: 128 a replica at 8K,
# groups of replicas to 64 at 32K and 64K), tensorflow/tpu's v3-128 preset
# (16384 / 128 cores), the MLPerf reference's evaluation at epoch 2 then every
# 4 until 75.9%, the LARS authors' NVCaffe AlexNet-BN (512 a GPU, mean and
# 1/256), BVLC's AlexNet data layer.
REFERENCE_RUNS = {
    "mlperf_4k": (64, "mlperf_tf2", 0.759, 2),
    "mlperf_8k": (128, "tensorflow_tpu", 0.759, 0),
    "tpu_16k": (128, "tensorflow_tpu", None, 0),
    "mlperf_32k": (64, "tensorflow_tpu", 0.759, 0),
    "mlperf_64k": (64, "tensorflow_tpu", 0.759, 0),
    "paper_resnet_8k": (32, "model_garden", None, 0),
    "paper_alexnet_8k": (0, "caffe", None, 0),
    "paper_alexnet_bn_8k": (512, "nvcaffe_alexnet_bn", None, 0),
}


@pytest.mark.parametrize("name", REFERENCE_RUNS)
def test_presets_run_as_their_sources_ran(name):
    config = config_lib.resolve(name, model_dir="/m", synthetic=True)
    fields = (config.bn_span, config.preprocessing, config.target_accuracy)
    assert (*fields, config.eval_offset_epochs) == REFERENCE_RUNS[name]


# (preset, field of the config or of the plan on ImageNet's 1,281,167
# images, value, source). Google's commands give steps: their epoch is
# N / B steps (39.1 at 32K), where an epoch here is a whole ceil(N / B) (40).
STEPS_AS_RUN = [
    ("mlperf_4k", "bn_span", 64, "MLPerf TF2 reference TPU command, --num_replicas=64"),
    ("mlperf_4k", "eval_offset_steps", 2 * 313, "MLPerf TF2 reference: epoch 2"),
    ("mlperf_4k", "eval_every_steps", 4 * 313, "MLPerf TF2 reference: every 4 epochs"),
    ("mlperf_8k", "eval_every_steps", 625, "Google TPU v4, --steps_per_eval=625"),
    ("mlperf_8k", "eval_offset_steps", 0, "Google TPU v4: from the start"),
    ("mlperf_32k", "train_steps", 2355, "Google MLPerf v1.0, --train_steps=2355"),
    ("mlperf_32k", "warmup_steps", 703, "Google MLPerf v1.0: 18 epochs of 39.1 steps"),
    ("mlperf_32k", "eval_every_steps", 157, "Google MLPerf v1.0, --steps_per_eval=157"),
    ("mlperf_32k", "eval_offset_steps", 0, "Google MLPerf v1.0: from the start"),
    ("mlperf_64k", "train_steps", 1738, "Google MLPerf v0.7: 88.9 epochs of 19.5 steps"),
    ("mlperf_64k", "warmup_steps", 606, "Google MLPerf v0.7: 31 epochs of 19.5 steps"),
    ("mlperf_64k", "eval_every_steps", 79, "Google MLPerf v0.7, --steps_per_eval=79"),
    ("mlperf_64k", "eval_offset_steps", 0, "Google MLPerf v0.7: from the start"),
    ("tpu_16k", "train_steps", 91 * 79, "tensorflow/tpu v3-128: 91 epochs"),
    # Convolution kernels: tensorflow/tpu resnet_model.py's
    # tf.variance_scaling_initializer() (Google's MLPerf code builds the same
    # model); Model Garden's ResNet, which the MLPerf TF2 reference runs, He-normal.
    ("mlperf_4k", "conv_initializer", "he_normal", "Model Garden resnet_model.py"),
    ("mlperf_8k", "conv_initializer", "variance_scaling", "Google MLPerf, tensorflow/tpu"),
    ("tpu_16k", "conv_initializer", "variance_scaling", "tensorflow/tpu resnet_model.py"),
    ("mlperf_32k", "conv_initializer", "variance_scaling", "Google MLPerf, tensorflow/tpu"),
    ("mlperf_64k", "conv_initializer", "variance_scaling", "Google MLPerf, tensorflow/tpu"),
    ("paper_resnet_8k", "conv_initializer", "he_normal", "Goyal et al. 2017: He et al."),
]


@pytest.mark.parametrize("name, field, value, source", STEPS_AS_RUN)
def test_presets_run_to_their_sources_step(name, field, value, source):
    from recipes.imagenet import plan as plan_lib

    config = config_lib.resolve(name, model_dir="/m", synthetic=True)
    plan = plan_lib.compute(config, 1, None, None)
    actual = getattr(plan, field) if hasattr(plan, field) else getattr(config, field)
    assert actual == value, source


def test_a_preset_step_count_gives_way_to_epochs_and_other_batches():
    as_run = config_lib.resolve("mlperf_32k", model_dir="/m", synthetic=True)
    assert (as_run.train_steps, as_run.warmup_steps, as_run.eval_every_steps) == (2355, 703, 157)
    epochs = config_lib.resolve("mlperf_32k", model_dir="/m", synthetic=True, train_epochs=30)
    assert (epochs.train_steps, epochs.warmup_steps, epochs.eval_every_steps) == (None, 703, 157)
    steps = config_lib.resolve("mlperf_32k", model_dir="/m", synthetic=True, train_steps=100)
    assert steps.train_steps == 100
    batch = config_lib.resolve("mlperf_32k", model_dir="/m", synthetic=True, global_batch_size=4096)
    assert (batch.train_steps, batch.warmup_steps, batch.eval_every_steps) == (None, None, None)
    from recipes.imagenet import plan as plan_lib

    plan = plan_lib.compute(batch, 1, None, None)  # 313 steps an epoch
    assert (plan.train_steps, plan.warmup_steps, plan.eval_every_steps) == (
        60 * 313,
        18 * 313,
        4 * 313,
    )


def test_a_span_that_does_not_divide_the_micro_batch_is_refused():
    with pytest.raises(ValueError, match="--bn_span=48 does not divide the 1024 images"):
        config_lib.resolve(
            "mlperf_8k", model_dir="/m", synthetic=True, bn_span=48, accumulation_steps=8
        )


def test_every_preset_is_complete_and_written_out():
    """Each preset holds every preset field (η included) and its source, no
    setting that has a default, and its name literally in presets.py."""
    with open(presets.__file__) as f:
        text = f.read()
    for name, preset in presets.PRESETS.items():
        assert set(preset) == {*config_lib.PRESET_FIELDS, *presets.DESCRIPTIVE}, name
        assert not set(preset) & set(config_lib.DEFAULTS), name
        assert preset["trust_coefficient"] == 0.001, name
        assert f'"{name}"' in text, name


def test_every_preset_resolves_to_a_complete_config():
    for name, preset in presets.PRESETS.items():
        config = config_lib.resolve(name, model_dir="/tmp/x", synthetic=True)
        assert config.model == preset["model"] and config.preset == name
        assert config.image_size == config_lib.IMAGE_SIZE[config.model]


def test_flags_override_the_preset_and_none_means_not_given():
    config = config_lib.resolve(
        "mlperf_8k",
        model_dir="/m",
        synthetic=True,
        global_batch_size=1024,
        learning_rate=None,
        dtype="bfloat16",
    )
    assert config.global_batch_size == 1024 and config.learning_rate == 17.0
    assert config.dtype == "bfloat16" and config.image_size == 224


def test_defaults_depend_on_the_model_and_strategy():
    assert config_lib.resolve(model_dir="/m", synthetic=True).preset == "paper_resnet_256"
    alexnet = config_lib.resolve(model="alexnet_bn", model_dir="/m", synthetic=True)
    assert (alexnet.preset, alexnet.image_size, alexnet.dropout) == (
        "paper_alexnet_bn_512",
        227,
        0.5,
    )
    assert alexnet.adapt_biases  # the authors adapted every blob
    tpu = config_lib.resolve(model_dir="/m", synthetic=True, strategy="tpu", tpu="local")
    assert tpu.dtype == "bfloat16"
    assert config_lib.resolve(model_dir="/m", synthetic=True).dtype is None  # the devices say


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        (dict(preset="mlperf_5k"), "--preset"),
        (dict(model="vgg16"), "--model"),
        (dict(preset="mlperf_8k", model="alexnet"), "--preset=mlperf_8k is for --model=resnet50"),
        (dict(synthetic=False), "--data_dir"),
        (dict(data_dir="/d"), "--data_dir"),  # and --synthetic: two sources
        (dict(model_dir=""), "--model_dir"),
        (dict(strategy="horovod"), "--strategy"),
        (dict(tpu="my-tpu"), "--tpu"),
        (dict(dtype="int8"), "--dtype"),
        (dict(global_batch_size=0), "--global_batch_size"),
        (dict(global_batch_size=2.5), "--global_batch_size"),
        (dict(accumulation_steps=0), "--accumulation_steps"),
        (dict(train_steps=0), "--train_steps"),
        (dict(steps_per_loop=-1), "--steps_per_loop"),
        (dict(image_size=16), "--image_size"),
        (dict(model="alexnet", image_size=64), "--image_size"),
        (dict(learning_rate=0.0), "--learning_rate"),
        (dict(learning_rate=float("inf")), "--learning_rate"),
        (dict(momentum=1.0), "--momentum"),
        (dict(weight_decay=-1e-4), "--weight_decay"),
        (dict(label_smoothing=1.0), "--label_smoothing"),
        (dict(dropout=-0.1), "--dropout"),
        (dict(warmup_epochs=float("nan")), "--warmup_epochs"),
        (dict(train_epochs=0), "--train_epochs"),
        (dict(trust_coefficient=0.0), "--trust_coefficient"),
        (dict(alexnet_groups="three"), "--alexnet_groups"),
        (dict(model="alexnet", alexnet_fc_units=0), "--alexnet_fc_units"),
        (dict(alexnet_bn_variant="before"), "--alexnet_bn_variant"),
        (dict(logical_cpus=-2), "--logical_cpus"),
        (dict(allreduce_dtype="float16"), "--allreduce_dtype"),
    ],
)
def test_bad_settings_name_their_flag(kwargs, flag):
    settings = {"model_dir": "/m", "synthetic": True, **kwargs}
    with pytest.raises(ValueError, match=re.escape(flag)):
        config_lib.resolve(**settings)


@pytest.mark.parametrize(
    "backend,strategy,allowed",
    [
        ("tensorflow", "mirrored", True),
        ("tensorflow", "tpu", True),
        ("tensorflow", "data_parallel", False),
        ("jax", "data_parallel", True),
        ("jax", "default", True),
        ("jax", "mirrored", False),
        ("jax", "multi_worker", False),
        ("jax", "tpu", False),
        ("torch", "default", False),
    ],
)
def test_each_strategy_belongs_to_its_backend(backend, strategy, allowed):
    config = config_lib.resolve(model_dir="/m", synthetic=True, strategy=strategy)
    if allowed:
        config_lib.check_backend(config, backend)
    else:
        with pytest.raises(ValueError, match=f"--strategy={strategy}|{backend}"):
            config_lib.check_backend(config, backend)


def test_multi_process_is_for_jax():
    config = config_lib.resolve(model_dir="/m", synthetic=True, multi_process=True)
    config_lib.check_backend(config, "jax")
    with pytest.raises(ValueError, match="--multi_process"):
        config_lib.check_backend(config, "tensorflow")


def test_a_bfloat16_all_reduce_is_for_tensorflow():
    config = config_lib.resolve(
        model_dir="/m", synthetic=True, strategy="mirrored", allreduce_dtype="bfloat16"
    )
    config_lib.check_backend(config, "tensorflow")
    jax_config = config_lib.resolve(model_dir="/m", synthetic=True, allreduce_dtype="bfloat16")
    with pytest.raises(ValueError, match="--allreduce_dtype=bfloat16 is for TensorFlow"):
        config_lib.check_backend(jax_config, "jax")


def test_the_update_settings_may_change_on_resume():
    """Neither changes what a checkpoint holds."""
    from recipes.imagenet import plan as plan_lib

    assert {"compile_optimizer", "allreduce_dtype"} <= plan_lib.SETTINGS_MAY_CHANGE_ON_RESUME


def test_every_setting_has_its_flag(tmp_path):
    """The command line defines a flag for every TrainConfig field (its
    choices come from recipes/imagenet/config.py, defined once there)."""
    script = (
        "import json; from absl import flags; from recipes.imagenet import cli; "
        "cli.define_flags(); print(json.dumps({n: flags.FLAGS[n].default for n in flags.FLAGS}))"
    )
    code, output = commands.run([sys.executable, "-c", script], tmp_path / "flags.log")
    assert code == 0, output
    defaults = json.loads(output)
    assert set(config_lib.TrainConfig.__dataclass_fields__) <= set(defaults)
    # A preset's field is not given unless passed; the others default as config.DEFAULTS.
    assert {name: defaults[name] for name in config_lib.DEFAULTS} == config_lib.DEFAULTS
    assert all(defaults[name] is None for name in config_lib.PRESET_FIELDS)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--learning_rate=-1"], "--learning_rate must be > 0.0"),
        (["--model=alexnet", "--preset=mlperf_8k"], "--preset=mlperf_8k is for --model=resnet50"),
        (["--strategy=data_parallel"], "--strategy=data_parallel is keras.distribution"),
    ],
)
def test_a_flag_mistake_is_one_line_before_keras_loads(tmp_path, flags, message):
    """The command line's own path from flags to its error line (cli.main)
    loads neither Keras nor a backend: the line comes at once."""
    script = (
        "import sys; from absl import flags; from recipes.imagenet import cli; "
        "cli.define_flags(); flags.FLAGS(sys.argv); status = cli.main(sys.argv[:1]); "
        "heavy = {'keras', 'keras_lars', 'tensorflow', 'jax'}; "
        "print(status, sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    command = [sys.executable, "-c", script, "--synthetic", "--model_dir=/m", *flags]
    env = commands.environment(KERAS_BACKEND="tensorflow")
    code, output = commands.run(command, tmp_path / "error.log", env)
    assert code == 0, output
    lines = output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("imagenet_train: error: "), output
    assert message in lines[0]
    assert lines[1] == "1 []"


def test_the_backend_is_read_as_keras_reads_it(tmp_path, monkeypatch):
    from recipes.backend import keras_backend

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert keras_backend() == "tensorflow"  # no keras.json
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert keras_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the environment comes first
    assert keras_backend() == "torch"


def test_a_resume_may_change_where_it_runs_but_not_what_it_computes():
    import dataclasses

    from recipes.imagenet import plan as plan_lib

    config = config_lib.resolve("mlperf_8k", model_dir="/m", synthetic=True)
    first = plan_lib.compute(config, 8, None, None)
    saved_config, saved_plan = config.to_dict(), dataclasses.asdict(first)
    moved = dataclasses.replace(config, strategy="mirrored", steps_per_loop=10)
    plan = plan_lib.resumed(moved, plan_lib.compute(moved, 2, None, None), saved_config, saved_plan)
    assert (plan.replicas, plan.steps_per_loop) == (2, 10)
    assert dataclasses.replace(plan, replicas=8, steps_per_loop=first.steps_per_loop) == first
    with pytest.raises(ValueError, match="other settings .*--learning_rate: 17.0 -> 1.0"):
        other = dataclasses.replace(config, learning_rate=1.0)
        plan_lib.resumed(other, first, saved_config, saved_plan)
    with pytest.raises(ValueError, match="other data .*train_images"):
        other_data = dataclasses.replace(first, train_images=1000)
        plan_lib.resumed(config, other_data, saved_config, saved_plan)
