"""ResNet-50 v1.5, as the TensorFlow large-batch references build it.

He et al. 2016 with the "v1.5" change (the stride of each down-sampling
bottleneck sits on its 3x3 convolution, not the first 1x1), built the way
tensorflow/tpu `resnet_model.py` and the Google MLPerf submissions build it:

- convolutions without bias, strided ones padded explicitly by (k - 1) / 2
  (`fixed_padding`) rather than Keras's asymmetric "same";
- batch normalisation with momentum 0.9 and epsilon 1e-5 (Keras's defaults are
  0.99 and 1e-3);
- the last BN gamma of every residual branch initialised to zero (on by
  default; Goyal et al. 2017 found it helps large batches);
- convolution kernels as `conv_initializer` says (`CONV_INITIALIZERS`), the
  classifier N(0, 0.01);
- float32 logits under a mixed-precision policy;
- uint8 images in, normalised by the model (`ImageNormalization`), and batch
  statistics over `bn_span` images (`GhostBatchNormalization`; None: the
  whole batch a replica sees).

25,557,032 trainable parameters at 1000 classes (torchvision's count too).
"""

import keras
from keras import layers

from ..preprocessing import IMAGENET_MEAN_RGB
from ..preprocessing import IMAGENET_STDDEV_RGB
from .normalization import GhostBatchNormalization
from .normalization import ImageNormalization

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks)
EXPANSION = 4
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# Convolution kernels: He-normal (variance 2 / fan-in, truncated), as Model
# Garden's ResNet and the MLPerf TF2 reference; or variance 1 / fan-in,
# truncated, as tensorflow/tpu's `tf.variance_scaling_initializer()` and
# Google's MLPerf code.
CONV_INITIALIZERS = {
    "he_normal": lambda: keras.initializers.HeNormal(),
    "variance_scaling": lambda: keras.initializers.VarianceScaling(
        scale=1.0, mode="fan_in", distribution="truncated_normal"
    ),
}


def _conv(x, filters, kernel_size, strides, name, initializer):
    if strides > 1:  # fixed_padding: symmetric, whatever the input size
        x = layers.ZeroPadding2D((kernel_size - 1) // 2, name=name + "_pad")(x)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid" if strides > 1 else "same",
        use_bias=False,
        kernel_initializer=CONV_INITIALIZERS[initializer](),
        name=name,
    )(x)


def _batch_norm(x, name, bn_span, zero_gamma=False):
    return GhostBatchNormalization(
        span=bn_span,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )(x)


def _bottleneck(x, width, strides, project, zero_init_residual, bn_span, init, name):
    shortcut = x
    if project:
        shortcut = _conv(x, width * EXPANSION, 1, strides, name + "_proj", init)
        shortcut = _batch_norm(shortcut, name + "_proj_bn", bn_span)
    x = _conv(x, width, 1, 1, name + "_conv1", init)
    x = layers.ReLU(name=name + "_relu1")(_batch_norm(x, name + "_bn1", bn_span))
    x = _conv(x, width, 3, strides, name + "_conv2", init)  # v1.5: the stride is here
    x = layers.ReLU(name=name + "_relu2")(_batch_norm(x, name + "_bn2", bn_span))
    x = _conv(x, width * EXPANSION, 1, 1, name + "_conv3", init)
    x = _batch_norm(x, name + "_bn3", bn_span, zero_gamma=zero_init_residual)
    x = layers.Add(name=name + "_add")([x, shortcut])
    return layers.ReLU(name=name + "_out")(x)


def resnet50(
    num_classes=1000,
    image_size=224,
    zero_init_residual=True,
    bn_span=None,
    conv_initializer="he_normal",
    mean=IMAGENET_MEAN_RGB,
    stddev=IMAGENET_STDDEV_RGB,
    stages=STAGES,
):
    """A Keras functional ResNet-50 v1.5 taking `image_size`² uint8 RGB images.
    Other `stages` ((bottleneck width, blocks) for each of the four) build a
    narrower or shallower ResNet of the same blocks, for tests that need the
    layers and not the size."""
    if conv_initializer not in CONV_INITIALIZERS:
        raise ValueError(
            f"`conv_initializer` must be one of {sorted(CONV_INITIALIZERS)}. "
            f"Received: conv_initializer={conv_initializer!r}"
        )
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="images")
    x = ImageNormalization(mean, stddev, name="normalize")(inputs)
    x = _conv(x, 64, 7, 2, "conv1", conv_initializer)
    x = layers.ReLU(name="conv1_relu")(_batch_norm(x, "conv1_bn", bn_span))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    for stage, (width, blocks) in enumerate(stages, start=2):
        for block in range(blocks):
            x = _bottleneck(
                x,
                width,
                strides=2 if block == 0 and stage > 2 else 1,
                project=block == 0,
                zero_init_residual=zero_init_residual,
                bn_span=bn_span,
                init=conv_initializer,
                name=f"stage{stage}_block{block + 1}",
            )
    x = layers.GlobalAveragePooling2D(name="pool5")(x)
    logits = layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        dtype="float32",  # logits in float32 under mixed precision
        name="fc",
    )(x)
    return keras.Model(inputs, logits, name="resnet50" if stages == STAGES else "resnet")
