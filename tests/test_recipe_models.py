"""The recipes' models: parameter counts by hand, ResNet-50 v1.5 details,
AlexNet's LRN and split grouped convolution, ghost batch norm against NumPy,
the input's normalisation: the layers' numbers on every backend, the whole
models' structure on one."""

import keras
import numpy as np
import pytest

from recipes.imagenet import config as config_lib
from recipes.imagenet import models
from recipes.imagenet.models import resnet
from recipes.imagenet.models.alexnet import LocalResponseNormalization
from recipes.imagenet.models.alexnet import SplitGroupConv2D
from recipes.imagenet.models.normalization import GhostBatchNormalization
from recipes.imagenet.models.normalization import ImageNormalization


def parameters(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def conv(k, c_in, c_out, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)


def dense(n_in, n_out):
    return n_in * n_out + n_out


# BVLC AlexNet at 227, two groups: conv2, conv4, conv5 see half the channels.
ALEXNET_CONVS = [
    conv(11, 3, 96),
    conv(5, 48, 256),
    conv(3, 256, 384),
    conv(3, 192, 384),
    conv(3, 192, 256),
]
ALEXNET_FCS = [dense(6 * 6 * 256, 4096), dense(4096, 4096), dense(4096, 1000)]
ALEXNET = sum(ALEXNET_CONVS) + sum(ALEXNET_FCS)
# Ungrouped: conv2, conv4 and conv5 see all the channels.
ALEXNET_UNGROUPED = ALEXNET + (conv(5, 96, 256) - conv(5, 48, 256))
ALEXNET_UNGROUPED += (conv(3, 384, 384) - conv(3, 192, 384)) + (
    conv(3, 384, 256) - conv(3, 192, 256)
)
CONV_CHANNELS = (96, 256, 384, 384, 256)

# A full-size model's structure (layers, shapes, initialisers, dtype
# policies) is the same Keras code on every backend: checked on TensorFlow's.
# JAX compiles each initialiser on its own, which made these builds a minute
# of its run; it builds a ResNet below and both AlexNets in the recipe's runs.
STRUCTURE = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="a model's structure is backend-independent: built on TensorFlow",
)


@STRUCTURE
def test_resnet50_has_25_557_032_parameters():
    model = models.build("resnet50", 1000, 224)
    assert parameters(model.trainable_variables) == 25_557_032
    assert model.output.shape == (None, 1000)


@STRUCTURE
def test_resnet50_is_v1_5_with_the_tf_references_batch_norm():
    model = models.build("resnet50", 10, 64)
    first = "stage3_block1"
    assert model.get_layer(first + "_conv1").strides == (1, 1)
    assert model.get_layer(first + "_conv2").strides == (2, 2)  # v1.5
    assert model.get_layer(first + "_proj").strides == (2, 2)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 53 and not any(c.use_bias for c in convolutions)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert {(n.momentum, n.epsilon) for n in norms} == {(0.9, 1e-5)}
    zeroed = {n.name for n in norms if not np.any(keras.ops.convert_to_numpy(n.gamma))}
    assert zeroed == {n.name for n in norms if n.name.endswith("_bn3")}
    assert len(zeroed) == 16  # one per residual branch
    plain = models.build("resnet50", 10, 64, zero_init_residual=False)
    assert all(
        np.all(keras.ops.convert_to_numpy(layer.gamma) == 1)
        for layer in plain.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_other_stages_build_a_resnet_of_the_same_blocks():
    """One bottleneck (three convolutions) a block, a projection at each
    stage's first; the last stage here has two blocks."""
    model = resnet.resnet50(4, 32, stages=((8, 1), (16, 1), (32, 1), (64, 2)))
    convolutions = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 1 + 5 * 3 + 4 and "stage5_block2_proj" not in convolutions
    assert model.get_layer("stage5_block2_conv3").filters == 64 * resnet.EXPANSION
    assert model.name == "resnet" and model.output.shape == (None, 4)
    logits = keras.ops.convert_to_numpy(model(np.zeros((2, 32, 32, 3), "uint8")))
    assert logits.shape == (2, 4) and np.all(np.isfinite(logits))


@STRUCTURE
@pytest.mark.parametrize("initializer, variance", [("he_normal", 2.0), ("variance_scaling", 1.0)])
def test_resnet50_convolutions_start_with_their_sources_variance(initializer, variance):
    """Every convolution kernel's sample variance times its fan-in: 2 for
    He-normal (Model Garden, the MLPerf TF2 reference), 1 for tensorflow/tpu's
    `tf.variance_scaling_initializer()` (scale 1, fan-in, truncated normal);
    the classifier N(0, 0.01) either way."""
    keras.utils.set_random_seed(0)
    model = models.build("resnet50", 10, 32, conv_initializer=initializer)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer in convolutions:
        kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
        fan_in = np.prod(kernel.shape[:-1])
        # 4,096 values at least (a 1x1 from 64 to 64 channels): within 10%.
        assert kernel.var() * fan_in == pytest.approx(variance, rel=0.1), layer.name
    fc = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)
    assert fc.std() == pytest.approx(0.01, rel=0.1)


@STRUCTURE
@pytest.mark.parametrize(
    "name,options,trainable,non_trainable_bn",
    [
        ("alexnet", {}, ALEXNET, 0),
        ("alexnet", {"alexnet_groups": "native"}, ALEXNET, 0),
        ("alexnet", {"alexnet_groups": "none"}, ALEXNET_UNGROUPED, 0),
        # fc6 and fc7 of 256 (the tests' runs): only the classifier narrows.
        (
            "alexnet",
            {"alexnet_fc_units": 256},
            sum(ALEXNET_CONVS) + dense(6 * 6 * 256, 256) + dense(256, 256) + dense(256, 1000),
            0,
        ),
        # Authors: BN without scale or offset on the inputs of conv2..conv5.
        ("alexnet_bn", {}, ALEXNET, 2 * (96 + 256 + 384 + 384)),
        # conv -> BN -> ReLU: no conv biases, a BN γ and β per channel.
        (
            "alexnet_bn",
            {"alexnet_bn_variant": "conv_bn_relu"},
            ALEXNET - sum(CONV_CHANNELS) + 2 * sum(CONV_CHANNELS),
            2 * sum(CONV_CHANNELS),
        ),
    ],
)
def test_alexnet_parameter_counts(name, options, trainable, non_trainable_bn):
    model = models.build(name, 1000, 227, **options)
    assert parameters(model.trainable_variables) == trainable
    moving = [v for v in model.non_trainable_variables if "moving" in v.path]
    assert parameters(moving) == non_trainable_bn
    assert model.output.shape == (None, 1000)


def test_the_hand_count_is_bvlcs_published_60_965_224():
    """Checks the layer-by-layer count above, which the model tests rely on."""
    assert ALEXNET == 60_965_224


def test_split_grouped_convolution_equals_native_groups():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 9, 8)).astype("float32")
    split = SplitGroupConv2D(6, 3, groups=2, bias_initializer="random_normal")
    native = keras.layers.Conv2D(6, 3, padding="same", groups=2)
    split.build(x.shape)
    native.build(x.shape)
    native.set_weights(split.get_weights())
    assert split.kernel.shape == native.kernel.shape == (3, 3, 4, 6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(split(x)),
        keras.ops.convert_to_numpy(native(x)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_local_response_normalization_matches_caffe_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=30.0, size=(1, 2, 2, 7)).astype("float32")
    layer = LocalResponseNormalization(size=5, alpha=1e-4, beta=0.75, bias=1.0)
    expected = np.empty_like(x, dtype=np.float64)
    for c in range(7):
        window = x[..., max(0, c - 2) : c + 3].astype(np.float64)
        expected[..., c] = x[..., c] / (1.0 + 1e-4 / 5 * np.sum(window**2, -1)) ** 0.75
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5)


@STRUCTURE
@pytest.mark.parametrize("name", models.MODELS)
def test_logits_are_float32_under_mixed_precision(name):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build(name, 5, config_lib.MIN_IMAGE_SIZE[name], dropout=0.0)
        normalize, first_conv = model.layers[1], model.layers[2]
        assert normalize.compute_dtype == "float32" and first_conv.compute_dtype == "bfloat16"
        logits = model(np.zeros((1, *model.input.shape[1:]), "uint8"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_models_save_and_load(tmp_path):
    model = models.build("alexnet", 3, 67)
    model.save(tmp_path / "alexnet.keras")
    restored = keras.models.load_model(tmp_path / "alexnet.keras")
    x = np.random.default_rng(0).integers(0, 256, size=(1, 67, 67, 3)).astype("uint8")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5
    )


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda: models.build("alexnet", 10, 66), "image_size"),
        (lambda: models.build("alexnet", 10, 227, alexnet_groups="three"), "groups"),
        (lambda: models.build("alexnet_bn", 10, 227, alexnet_bn_variant="x"), "variant"),
        (lambda: models.build("alexnet", 10, 227, alexnet_fc_units=0), "fc_units"),
        (lambda: models.build("vgg16", 10, 224), "model"),
        (lambda: models.build("resnet50", 10, 32, conv_initializer="glorot"), "conv_initializer"),
    ],
)
def test_bad_model_arguments_are_named(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


def ghost_batch_norm(x, span, gamma, beta, epsilon):
    """NumPy: each group of `span` consecutive examples normalised with its own
    mean and biased variance over (batch, height, width); the groups' mean
    statistics."""
    groups = x.astype(np.float64).reshape(-1, span, *x.shape[1:])
    mean = groups.mean(axis=(1, 2, 3), keepdims=True)
    variance = ((groups - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
    y = (groups - mean) / np.sqrt(variance + epsilon) * gamma + beta
    return (
        y.reshape(x.shape),
        mean.reshape(-1, x.shape[-1]).mean(0),
        variance.reshape(-1, x.shape[-1]).mean(0),
    )


@pytest.mark.parametrize("span", [2, 3, 6])
def test_ghost_batch_norm_matches_numpy(span):
    rng = np.random.default_rng(0)
    x = rng.normal(loc=2.0, scale=3.0, size=(6, 4, 5, 3)).astype("float32")
    gamma = rng.normal(size=3).astype("float32")
    beta = rng.normal(size=3).astype("float32")
    layer = GhostBatchNormalization(span, momentum=0.75, epsilon=1e-3)
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    expected, mean, variance = ghost_batch_norm(x, span, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    moving_mean = keras.ops.convert_to_numpy(layer.moving_mean)
    moving_variance = keras.ops.convert_to_numpy(layer.moving_variance)
    np.testing.assert_allclose(moving_mean, 0.25 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moving_variance, 0.75 + 0.25 * variance, rtol=1e-5, atol=1e-6)
    # Inference: the moving statistics, as BatchNormalization.
    inferred = keras.ops.convert_to_numpy(layer(x, training=False))
    by_hand = (x - moving_mean) / np.sqrt(moving_variance + 1e-3) * gamma + beta
    np.testing.assert_allclose(inferred, by_hand, rtol=1e-4, atol=1e-4)


def test_ghost_batch_norm_refuses_a_batch_it_cannot_split():
    layer = GhostBatchNormalization(4)
    with pytest.raises(ValueError, match="does not split into groups of span=4"):
        layer(np.zeros((6, 2, 2, 3), "float32"), training=True)


def test_image_normalization_by_hand():
    pixels = np.array([[[[0, 128, 255]]]], "uint8")
    layer = ImageNormalization(mean=(10.0, 20.0, 30.0), stddev=(2.0, 4.0, 5.0))
    got = keras.ops.convert_to_numpy(layer(pixels))
    np.testing.assert_allclose(got, [[[[-5.0, 27.0, 45.0]]]])
    assert layer.compute_dtype == "float32"
