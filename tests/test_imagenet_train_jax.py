"""The ImageNet recipes on the JAX backend: keras.distribution.DataParallel on
four forced host devices (conftest.py), exact evaluation, Keras's
accumulation under it, refusals. (Accumulation, resume after SIGKILL and
divergence, on every backend: tests/test_imagenet_recipe.py.)"""

import re

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution runs on JAX"
)
tf = pytest.importorskip("tensorflow")  # the input pipeline's library

import commands  # noqa: E402
from imagenet_runs import ALEXNET  # noqa: E402
from imagenet_runs import CLASSES  # noqa: E402
from imagenet_runs import FC_UNITS  # noqa: E402
from imagenet_runs import LEARNS  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import VALIDATION_PER_CLASS  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import checkpoint_arrays  # noqa: E402
from imagenet_runs import jax_environment  # noqa: E402
from imagenet_runs import losses  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import scalars  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from imagenet_runs import write_records  # noqa: E402
from recipes.imagenet import config as config_lib  # noqa: E402
from recipes.imagenet import crops  # noqa: E402
from recipes.imagenet import job  # noqa: E402
from recipes.imagenet import models  # noqa: E402
from recipes.imagenet import plan as plan_lib  # noqa: E402
from recipes.imagenet import sources  # noqa: E402
from recipes.imagenet.jax_runner import JaxRunner  # noqa: E402


def test_data_parallel_on_four_devices_equals_one_device_for_the_same_span(data_dir, tmp_path):
    """Batch norm over 2 images: on four devices each normalises its own 2 of
    the 8 (no communication), on one device the 8 are split into groups of 2.
    The same numbers."""
    settings = dict(
        LEARNS, **{**SMALL, "bn_span": 2}, data_dir=str(data_dir), train_steps=4, deterministic=True
    )
    one = run(**settings, model_dir=str(tmp_path / "one"))
    four = run(**settings, model_dir=str(tmp_path / "four"), strategy="data_parallel")
    assert four["strategy"].startswith("DataParallel on 4 CPU device(s)")
    assert one["strategy"] == "one CPU device"
    (a, step_a), (b, step_b) = (
        checkpoint_arrays(tmp_path / "four"),
        checkpoint_arrays(tmp_path / "one"),
    )
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
    values = losses(tmp_path)
    assert len(values) == 8 and np.mean(values[-2:]) < 0.8 * values[0], values
    logged = scalars(tmp_path)
    assert {"top1", "top5", "learning_rate", "images_per_second"} <= logged.keys()
    assert len([tag for tag in logged if tag.startswith("trust_ratio/")]) == 4
    assert summary["eval_images"] == CLASSES * VALIDATION_PER_CLASS
    assert [step for step, _ in scalars(tmp_path, "eval")["top1"]] == [16]


def test_kerass_one_batch_look_ahead_drops_no_batch(data_dir, tmp_path, monkeypatch):
    """Without a distribution, on GPUs and TPUs, Keras's JAX trainer reads one
    batch ahead of each `fit` call and drops it at the call's end. Forced
    here on the CPU (where Keras skips it): each loop's stream ends with the
    loop, so the look-ahead drops nothing and the weights are the same."""
    from keras.src.backend.jax import trainer as jax_trainer

    settings = dict(ALEXNET, **SMALL, data_dir=str(data_dir), train_steps=6, accumulation_steps=2)
    settings["deterministic"] = True
    run(**settings, model_dir=str(tmp_path / "plain"))
    looked_ahead = []

    def look_ahead(self):  # JAXEpochIterator._get_iterator, as on a GPU
        assert keras.distribution.distribution() is None
        looked_ahead.append(True)
        return self._one_batch_ahead_iterator(self.data_adapter.get_jax_iterator())

    monkeypatch.setattr(jax_trainer.JAXEpochIterator, "_get_iterator", look_ahead)
    run(**settings, model_dir=str(tmp_path / "ahead"))
    assert len(looked_ahead) >= 3  # one per loop of 2 steps (and the evaluation)
    assert_arrays_close(
        checkpoint_arrays(tmp_path / "ahead")[0], checkpoint_arrays(tmp_path / "plain")[0], 0, 0
    )


def test_the_default_span_keeps_batch_norm_on_each_device():
    """--bn_span=0: each device normalises its own share of the batch, with no
    all-reduce over the global batch (DataParallel's own batch norm)."""
    config = config_lib.resolve(
        model="alexnet_bn",
        synthetic=True,
        strategy="data_parallel",
        model_dir="/unused",
        global_batch_size=8,
        bn_span=0,
    )
    runner = JaxRunner(config)
    try:
        assert runner.replicas == 4 and runner.bn_span == 2
    finally:
        runner.close()


@pytest.mark.parametrize("span,accepted", [(3, True), (24, True), (8, False), (16, False)])
def test_a_span_must_divide_a_devices_share_or_be_whole_shares(span, accepted):
    """12 images a device (48 over 4): spans of 3 (each device its own
    groups) and 24 (two devices combined) are taken; 8 and 16 would make
    XLA move activations between devices, and are refused by name."""
    config = config_lib.resolve(
        model="alexnet_bn",
        synthetic=True,
        strategy="data_parallel",
        model_dir="/unused",
        global_batch_size=48,
        bn_span=span,
    )
    if not accepted:
        with pytest.raises(ValueError, match=f"--bn_span={span}: each of the 4 devices holds 12"):
            JaxRunner(config)
        return
    runner = JaxRunner(config)
    try:
        assert runner.bn_span == span
    finally:
        runner.close()


def test_evaluation_sees_37_images_exactly_once_on_four_devices(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 11, size=37)  # 1..10 in the files
    for split in ("train", "validation"):
        write_records(tmp_path / f"{split}-00000-of-00002", labels[:20], rng)
        write_records(tmp_path / f"{split}-00001-of-00002", labels[20:], rng)
    (tmp_path / "labels.txt").write_text("".join(f"{i}\tn{i}\n" for i in range(1, 11)))
    config = config_lib.resolve(
        model="alexnet",
        alexnet_fc_units=FC_UNITS,
        image_size=67,
        strategy="data_parallel",
        data_dir=str(tmp_path),
        model_dir=str(tmp_path / "run"),
        global_batch_size=8,
        train_steps=1,
        preprocessing="model_garden",
    )
    source = sources.TFRecordSource(str(tmp_path / "validation-*"))
    plan = plan_lib.Plan(
        replicas=4,
        num_classes=10,
        train_images=37,
        eval_images=37,
        steps_per_epoch=5,
        train_steps=1,
        warmup_steps=0,
        steps_per_loop=1,
        eval_every_steps=0,
        eval_offset_steps=0,
    )
    runner = JaxRunner(config)
    try:
        model = models.build_for(config, plan.num_classes)
        runner.build(model, keras.optimizers.SGD(), plan)
        runner.start(0, None, loop_lengths={1})
        result = runner.evaluate(job.evaluation_input(config, plan, source))
        images = np.stack(
            [
                crops.preprocess(image_bytes, False, 67).numpy()
                for image_bytes, _ in source.examples(training=False, deterministic=True)
            ]
        )
        logits = keras.ops.convert_to_numpy(model(images, training=False))
    finally:
        runner.close()
    truth = labels - 1
    ranked = np.argsort(-logits, axis=1)
    assert result.examples == 37
    assert result.top1 == pytest.approx(np.mean(ranked[:, 0] == truth), abs=1e-6)
    assert result.top5 == pytest.approx(
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
        bn_span=0,
    )
    assert summary["top1"] is None and summary["images_per_second"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"


def test_tensorflow_strategies_are_refused_on_jax(data_dir, tmp_path):
    code, output = commands.run(
        train_command(tmp_path / "run", data_dir, "--strategy=mirrored"),
        tmp_path / "refused.log",
        env=jax_environment(),
    )
    assert code == 1
    assert "--strategy=mirrored is a tf.distribute strategy" in output, output
    assert not (tmp_path / "run").exists()


def compiled_micro_step(accumulation_steps):
    """The HLO text of Keras's JAX train step (one micro-batch) for a small
    LARS model under keras.distribution.DataParallel on the four devices, as
    `model.fit` compiles it."""
    import jax

    import keras_lars

    devices = jax.devices()
    distribution = keras.distribution.DataParallel(devices=devices)
    with distribution.scope():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        model.compile(
            optimizer=keras_lars.LARS(0.1, gradient_accumulation_steps=accumulation_steps),
            loss="mse",
            jit_compile=True,
        )
        model.optimizer.build(model.trainable_variables)
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        )
        batch = jax.sharding.NamedSharding(
            jax.sharding.Mesh(np.array(devices), ("batch",)), jax.sharding.PartitionSpec("batch")
        )
        data = tuple(
            jax.device_put(np.zeros((4 * len(devices), width), "float32"), batch)
            for width in (8, 4)
        )
        return jax.jit(model.train_step).lower(state, data).compile().as_text()


def entry_all_reduces(hlo):
    """The all-reduces the compiled step runs on every call: those of its
    ENTRY computation, not those of a conditional's branch."""
    entry = hlo[hlo.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}\n")]
    return len(re.findall(r" all-reduce(?:-start)?\(", entry))


def test_accumulating_micro_steps_all_reduce_their_gradients_each_time():
    """A limit of keras.distribution, pinned down: Keras accumulates
    gradients into replicated variables, so the compiler all-reduces every
    micro-batch's gradients where they are added in, not once per update
    (the TensorFlow loop all-reduces once per update). README's limits say
    so; this test fails when a Keras release changes it."""
    plain = entry_all_reduces(compiled_micro_step(None))
    accumulating = entry_all_reduces(compiled_micro_step(2))
    assert plain >= 1  # the gradients, every step
    assert accumulating >= plain  # still every micro-step, not only on the update
