"""The ImageNet recipe on TensorFlow across replicas: MirroredStrategy on
four logical CPUs (conftest.py) equals one device, batch-norm spans, float16
overflow on one replica, batch-norm statistics after a loop, the final-state
check on a micro-batch, XLA per replica, the compiled optimizer update and
the bfloat16 all-reduce, exact evaluation. (One device,
resume and bad input: tests/test_imagenet_train.py; several workers:
tests/test_multi_process.py.)"""

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute recipes need TensorFlow"
)
tf = pytest.importorskip("tensorflow")

import commands  # noqa: E402
import keras_lars  # noqa: E402
from imagenet_runs import ALEXNET  # noqa: E402
from imagenet_runs import FC_UNITS  # noqa: E402
from imagenet_runs import SMALL  # noqa: E402
from imagenet_runs import assert_arrays_close  # noqa: E402
from imagenet_runs import checkpoint_arrays  # noqa: E402
from imagenet_runs import run  # noqa: E402
from imagenet_runs import train_command  # noqa: E402
from imagenet_runs import write_records  # noqa: E402
from recipes.imagenet import batching  # noqa: E402
from recipes.imagenet import crops  # noqa: E402
from recipes.imagenet import models  # noqa: E402
from recipes.imagenet import sources  # noqa: E402
from recipes.imagenet import strategies  # noqa: E402
from recipes.imagenet.models import resnet  # noqa: E402
from recipes.imagenet.train_loop import Trainer  # noqa: E402

# AlexNet without dropout or batch norm, 4 steps: the same numbers on one
# device and on any number of replicas, with or without XLA.
REPLICATED = dict(ALEXNET, **SMALL, train_steps=4, deterministic=True)


@pytest.fixture(scope="module")
def one_device(data_dir, tmp_path_factory):
    """The variables REPLICATED leaves on one device, without XLA."""
    model_dir = tmp_path_factory.mktemp("one_device")
    summary = run(**REPLICATED, data_dir=str(data_dir), model_dir=str(model_dir))
    assert "1 replica(s)" in summary["strategy"] and "XLA" not in summary["strategy"]
    return checkpoint_arrays(model_dir)[0]


def test_mirrored_on_four_cpus_equals_one_device(data_dir, tmp_path, one_device):
    """The same global batch on four replicas (conftest.py's logical CPUs)."""
    four = run(**REPLICATED, data_dir=str(data_dir), model_dir=str(tmp_path), strategy="mirrored")
    assert "4 replica(s)" in four["strategy"]
    assert_arrays_close(checkpoint_arrays(tmp_path)[0], one_device, rtol=1e-5, atol=1e-5)


def fixed_batches(batch, image_size, classes, batches=8, seed=0):
    """`batches` batches of random uint8 images and labels, in a fixed order
    (the same whatever a test takes of them)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batches * batch, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, size=batches * batch).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels))


def train_fixed(
    strategy,
    build,
    steps,
    global_batch_size,
    image_size,
    trainer_class=Trainer,
    skip=None,
    **trainer_options,
):
    """The model's weights after `steps` updates on `fixed_batches` (without
    the global batch at `skip`). Each replica's share of a global batch is a
    consecutive slice of it, as on one device (one input pipeline deals its
    per-replica batches to the replicas in order). `trainer_options` go to
    the Trainer."""
    keras.utils.set_random_seed(0)
    examples = fixed_batches(global_batch_size, image_size, 4)
    if skip is not None:
        batches = examples.batch(global_batch_size)
        examples = batches.take(skip).concatenate(batches.skip(skip + 1)).unbatch()
    with strategy.scope():
        model, optimizer = build()
        trainer = trainer_class(
            strategy, model, optimizer, global_batch_size=global_batch_size, **trainer_options
        )
    dataset = strategy.distribute_datasets_from_function(
        lambda context: examples.batch(
            context.get_per_replica_batch_size(global_batch_size), drop_remainder=True
        )
    )
    result = trainer.train(iter(dataset), steps)
    assert result.first_non_finite_step is None and result.state_finite
    return model, optimizer


# ResNet-50's blocks (projections, strides, zero-initialised residual batch
# norms), one a stage and an eighth as wide: the layers without the size,
# which a CPU takes minutes to build and step on four replicas.
NARROW_RESNET = ((8, 1), (16, 1), (32, 1), (64, 1))


def test_resnet_batch_norm_span_on_four_replicas_equals_one_device():
    """Batch norm over 4 images: each of four replicas normalises its 4
    images; one device splits its 16 into groups of 4 (ghost batch norm). At
    32 px stage 5's maps are 1x1, so a statistic there covers just 4 values
    and the order of float sums shows after three LARS steps (measured:
    7e-4 of a variable's largest value at most); batch norm over the whole 16
    on one device differs by far more (measured: 1.5 times)."""

    def build(span):
        def model_and_optimizer():
            model = resnet.resnet50(4, 32, bn_span=span, stages=NARROW_RESNET)
            return model, keras_lars.LARS(0.1, trust_coefficient=0.01)

        return model_and_optimizer

    four, _ = train_fixed(strategies.create("mirrored"), build(4), 3, 16, 32)
    one, _ = train_fixed(tf.distribute.get_strategy(), build(4), 3, 16, 32)
    whole, _ = train_fixed(tf.distribute.get_strategy(), build(None), 3, 16, 32)

    def difference(a, b):
        """The largest difference of any variable, relative to its largest value."""
        return max(
            np.max(np.abs(x.numpy() - y.numpy())) / np.max(np.abs(y.numpy()))
            for x, y in zip(a.variables, b.variables)
            if np.max(np.abs(y.numpy())) > 0
        )

    assert difference(four, one) < 2e-2
    assert difference(whole, one) > 0.5


class OverflowOnReplica1(Trainer):
    """Replica 1's gradients are infinite in its third step (a float16
    overflow there alone)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = tf.Variable(
            0,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def _micro_batch_gradients(self, images, labels):
        gradients, counts = super()._micro_batch_gradients(images, labels)
        calls = self.calls.assign_add(1)
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        overflow = tf.logical_and(tf.equal(replica, 1), tf.equal(calls, 3))
        factor = tf.where(overflow, float("inf"), 1.0)
        return [g * tf.cast(factor, g.dtype) for g in gradients], counts


def small_float16_model(image_size, classes):
    """Convolution, batch norm and a float32 classifier under the global
    policy: the recipe's layers at a size where float16, which CPUs emulate,
    is quick."""
    images = keras.Input((image_size, image_size, 3), dtype="uint8")
    x = models.ImageNormalization(mean=(127.5,) * 3, stddev=(64.0,) * 3)(images)
    x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(classes, dtype="float32")(x)
    return keras.Model(images, logits)


def test_float16_overflow_on_one_replica_skips_the_step_on_every_replica():
    """LossScaleOptimizer looks at replica 0's gradients only; the loop makes
    an overflow anywhere skip the step everywhere: the scale halves, the
    update count does not move, and training continues as if that batch had
    never come."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:

        def build():
            model = small_float16_model(image_size=16, classes=4)
            lars = keras_lars.LARS(0.5, trust_coefficient=0.01)
            return model, keras.optimizers.LossScaleOptimizer(lars)

        strategy = strategies.create("mirrored")
        injected, scaled = train_fixed(strategy, build, 5, 8, 16, trainer_class=OverflowOnReplica1)
        skipped, reference_optimizer = train_fixed(strategy, build, 4, 8, 16, skip=2)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    initial_scale = float(reference_optimizer.dynamic_scale.numpy())
    assert float(scaled.dynamic_scale.numpy()) == initial_scale / 2
    assert int(scaled.inner_optimizer.iterations.numpy()) == 4  # 5 steps, one skipped
    # The same updates: halving the scale is exact in float16 unless a
    # gradient underflows (measured: identical weights). Had the step been
    # taken with the infinite gradient, they would be NaN (train_fixed fails).
    for a, b in zip(injected.trainable_variables, skipped.trainable_variables):
        scale = np.max(np.abs(b.numpy()))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-3 * scale, err_msg=a.path)


def test_batch_norm_statistics_become_their_mean_over_replicas_after_a_loop():
    """Each replica's moving statistics drift apart in a loop (each sees its
    own images); after the loop every copy is their mean."""
    strategy = strategies.create("mirrored")
    with strategy.scope():
        model = models.build("alexnet_bn", 4, 67, alexnet_fc_units=FC_UNITS)
        trainer = Trainer(
            strategy, model, keras_lars.LARS(), global_batch_size=8, synthetic=(67, 4)
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


def test_xla_per_replica_on_two_cpus_equals_the_uncompiled_loop(data_dir, tmp_path, one_device):
    """MirroredStrategy on 2 logical CPUs (a recipe process of its own, as
    `--logical_cpus` needs), each replica's forward and backward pass one XLA
    computation, against one device without XLA: XLA fuses and reorders
    float32 sums, so the weights agree to 1e-4 (relative), not bit for bit."""
    flags = [
        "--strategy=mirrored",
        "--logical_cpus=2",
        "--jit_compile",
        *(f"--{name}={value}" for name, value in REPLICATED.items()),
    ]
    model_dir = tmp_path / "run"
    code, output = commands.run(train_command(model_dir, data_dir, *flags), tmp_path / "run.log")
    assert code == 0, output[-3000:]
    assert "2 replica(s), XLA per replica" in output
    assert_arrays_close(checkpoint_arrays(model_dir)[0], one_device, rtol=1e-4, atol=1e-6)


def test_the_compiled_replica_step_is_one_xla_computation_holding_the_batch_norms():
    """ResNet-50's 53 batch norms each normalise with one rsqrt, forward; the
    replica's gradient function is one HLO module holding them all."""
    with tf.distribute.get_strategy().scope():
        model = models.build("resnet50", 4, 32, bn_span=None)
        trainer = Trainer(
            tf.distribute.get_strategy(),
            model,
            keras_lars.LARS(),
            global_batch_size=4,
            jit_compile=True,
        )
    images = tf.zeros([4, 32, 32, 3], tf.uint8)
    labels = tf.zeros([4], tf.int32)
    hlo = trainer._gradients.experimental_get_compiler_ir(images, labels)(stage="hlo")
    assert hlo.count("HloModule") == 1
    batch_norms = [
        layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(batch_norms) == 53
    assert hlo.count(" rsqrt(") >= len(batch_norms), hlo.count(" rsqrt(")


def small_lars_model(loss_scaled=False):
    """`small_float16_model` (under the global policy) with LARS, its trust
    ratios tracked (written inside the update), as the recipe runs it."""
    model = small_float16_model(image_size=16, classes=4)
    lars = keras_lars.LARS(0.5, trust_coefficient=0.01, track_trust_ratios=True)
    return model, keras.optimizers.LossScaleOptimizer(lars) if loss_scaled else lars


def replica_copies(model, optimizer, strategy):
    """(path, [each replica's copy]) of every variable of both, in order
    (layer names differ between two models of a process)."""
    return [
        (v.path, [c.numpy() for c in strategy.experimental_local_results(v.value)])
        for v in [*model.variables, *optimizer.variables]
    ]


@pytest.mark.parametrize("dtype", ["float32", "mixed_float16"])
def test_the_compiled_optimizer_update_on_four_replicas_equals_apply_gradients(dtype):
    """`compile_optimizer=True` against Keras's `apply_gradients`, 4 steps
    on 2 replicas: every copy of every variable (weights, momentum, trust
    ratios, iteration count; float16: the loss scale and its counter, with
    an overflow on replica 1 in the third step, skipped inside the compiled
    update) agrees to 1e-5. XLA may reorder a norm's sum: not bit for bit."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(dtype)
    loss_scaled = dtype == "mixed_float16"
    trainer_class = OverflowOnReplica1 if loss_scaled else Trainer
    strategy = strategies.create("mirrored")
    runs = {}
    try:
        for compiled in (False, True):
            model, optimizer = train_fixed(
                strategy,
                lambda: small_lars_model(loss_scaled),
                4,
                8,
                16,
                trainer_class=trainer_class,
                compile_optimizer=compiled,
            )
            runs[compiled] = replica_copies(model, optimizer, strategy)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    if loss_scaled:
        assert int(optimizer.inner_optimizer.iterations.numpy()) == 3  # one step skipped
        assert float(optimizer.dynamic_scale.numpy()) == 2.0**14  # 2^15 halved once
    assert len(runs[True]) == len(runs[False])
    for (path, copies), (_, keras_copies) in zip(runs[True], runs[False]):
        assert len(copies) == 4
        for compiled_copy, keras_copy in zip(copies, keras_copies):
            np.testing.assert_allclose(
                compiled_copy, keras_copy, rtol=1e-5, atol=1e-7, err_msg=path
            )


def test_the_compiled_optimizer_update_is_one_xla_computation_per_device():
    """Each replica's update is its own compiled function, traced in its
    device's update context: one HLO module holding every variable's two
    LARS norms (a square root each) and its momentum step."""
    strategy = strategies.create("mirrored")
    model, optimizer = train_fixed(
        strategy, small_lars_model, 1, 8, 16, compile_optimizer=True, trainer_class=Recording
    )
    trainer = Recording.last
    assert len(trainer._replica_updates) == 4  # one per device
    gradients = [tf.ones(v.shape) for v in model.trainable_variables]
    modules = []

    def compiler_ir(anchor):
        update = trainer._replica_updates[anchor.device]
        modules.append(update.experimental_get_compiler_ir(gradients)(stage="hlo"))

    with strategy.scope():
        strategy.extended.update(optimizer.iterations.value, compiler_ir, group=False)
    assert len(modules) == 4
    adapted = len(optimizer._adapted_indices)
    assert adapted == 2  # the two kernels (biases and batch norm are not adapted)
    for hlo in modules:
        assert hlo.count("HloModule") == 1
        assert hlo.count(" sqrt(") >= 2 * adapted, hlo.count(" sqrt(")


class Recording(Trainer):
    """Remembers the last Trainer made, and the dtypes its gradients reach
    the update in (what the all-reduce returned)."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Recording.last = self
        self.reduced_dtypes = []

    def _all_reduce(self, gradients):
        reduced = super()._all_reduce(gradients)
        self.reduced_dtypes.extend(g.dtype for g in reduced)
        return reduced


def test_a_bfloat16_all_reduce_on_four_replicas_is_close_to_float32_but_not_equal():
    """The gradients reach the all-reduce (and leave it) in bfloat16; after
    3 steps the weights are within bfloat16's precision of a float32
    all-reduce's (8-bit mantissa: about 4e-3 relative per gradient), and
    farther from them than float32 rounding would put them."""
    strategy = strategies.create("mirrored")
    build = small_lars_model
    reference, _ = train_fixed(strategy, build, 3, 8, 16)
    bfloat16, _ = train_fixed(
        strategy, build, 3, 8, 16, allreduce_dtype="bfloat16", trainer_class=Recording
    )
    dtypes = Recording.last.reduced_dtypes
    assert dtypes and set(dtypes) == {tf.bfloat16}, dtypes
    largest = 0.0
    for a, b in zip(bfloat16.trainable_variables, reference.trainable_variables):
        scale = np.max(np.abs(b.numpy()))
        np.testing.assert_allclose(
            a.numpy(), b.numpy(), rtol=1e-2, atol=1e-2 * scale, err_msg=a.path
        )
        largest = max(largest, np.max(np.abs(a.numpy() - b.numpy())) / scale)
    assert largest > 1e-5, largest  # float32 all-reduces agree to ~1e-7


def test_the_loop_refuses_an_optimizer_its_own_update_would_misapply():
    """Decoupled weight decay (and EMA, Keras's accumulation) are not in
    `update_step`: the loop's own update refuses them in one line."""
    with tf.distribute.get_strategy().scope():
        model = small_float16_model(image_size=16, classes=4)
        sgd = keras.optimizers.SGD(0.1, weight_decay=1e-4)
        with pytest.raises(ValueError, match="weight_decay.*--nocompile_optimizer"):
            Trainer(
                tf.distribute.get_strategy(),
                model,
                sgd,
                global_batch_size=4,
                compile_optimizer=True,
            )


def test_evaluation_sees_37_images_exactly_once_on_four_replicas(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 11, size=37)  # 1..10 in the files
    write_records(tmp_path / "validation-00000-of-00002", labels[:20], rng)
    write_records(tmp_path / "validation-00001-of-00002", labels[20:], rng)
    source = sources.TFRecordSource(str(tmp_path / "validation-*"))
    strategy = strategies.create("mirrored")
    assert strategy.num_replicas_in_sync == 4
    with strategy.scope():
        model = models.build("alexnet", 10, 67, alexnet_fc_units=FC_UNITS)
        optimizer = keras_lars.LARS()
        trainer = Trainer(strategy, model, optimizer, global_batch_size=8)
    steps = batching.evaluation_steps(source, 8)
    assert steps == 5  # 40 places: the last step holds 5 images, a replica none
    dataset = strategy.distribute_datasets_from_function(
        lambda context: batching.evaluation_batches(
            source, global_batch_size=8, input_context=context, image_size=67
        )
    )
    result = trainer.evaluate(iter(dataset), steps)

    images = tf.stack(
        [
            crops.preprocess(image_bytes, False, 67)
            for image_bytes, _ in source.examples(training=False, deterministic=True)
        ]
    )
    logits = model(images, training=False).numpy()
    truth = labels - 1
    ranked = np.argsort(-logits, axis=1)
    assert result.examples == 37
    assert result.top1 == pytest.approx(np.mean(ranked[:, 0] == truth))
    assert result.top5 == pytest.approx(np.mean([t in r[:5] for t, r in zip(truth, ranked)]))


def test_the_final_state_check_runs_on_the_last_micro_batch_only():
    """With 4 accumulation steps each replica's 8 images are 4 micro-batches
    of 2; the check of the state a loop leaves is a training-mode forward
    pass, traced on those 2 images, not on all 8 (which could need 4 times
    the memory training needs)."""
    strategy = strategies.create("mirrored")
    with strategy.scope():
        model = models.build("alexnet", 4, 67, dropout=0.0, alexnet_fc_units=FC_UNITS)
        trainer = Trainer(
            strategy,
            model,
            keras_lars.LARS(),
            global_batch_size=32,  # 8 a replica on 4 logical CPUs
            accumulation_steps=4,
            synthetic=(67, 4),
        )
    traced = []
    final_loss = trainer._final_loss

    def recording(images, labels):
        traced.append((images.shape.as_list(), labels.shape.as_list()))
        return final_loss(images, labels)

    trainer._final_loss = recording
    result = trainer.train(None, 2)
    assert traced and all(shapes == ([2, 67, 67, 3], [2]) for shapes in traced), traced
    assert result.state_finite and result.micro_steps == 2
