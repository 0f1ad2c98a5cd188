"""AlexNet (Krizhevsky et al. 2012, as BVLC Caffe ships it) and AlexNet-BN (as
the LARS authors ran it).

- `alexnet`: BVLC AlexNet: 227² input, conv1 96 11x11/4, local response
  normalisation (LRN) after conv1 and conv2, grouped conv2/conv4/conv5 (two
  groups), fc6 and fc7 of 4096 (`fc_units`) with dropout 0.5, BVLC's initialisation
  (Gaussian 0.01 for convolutions, 0.005 for fc6/fc7; biases 0 or 0.1).
  60,965,224 parameters at 1000 classes.
- `alexnet_bn`, variant "authors" (the default): the LARS authors' NVCaffe
  `models/alexnet_bn/train_val2`: no LRN, no BN after conv1, and batch
  normalisation *without* scale or offset (epsilon 1e-4, moving average 0.9) on
  the inputs of conv2 to conv5; convolutions N(0, 0.01) with bias 0.01, fc6/fc7
  N(0, 0.005) with bias 0.1, fc8 N(0, 0.01). Same trainable parameters as
  AlexNet.
- `alexnet_bn`, variant "conv_bn_relu": the common form, conv (no bias) -> BN
  (with scale and offset) -> ReLU after every convolution.

Grouped convolutions. Keras's TensorFlow backend runs `Conv2D(groups=2)`
through a nested XLA function, and grouped Conv2D has failed on TPU VMs
(tf-keras #655). `groups="split"` (the default, and what every preset uses)
keeps one kernel per layer, as Caffe does, so LARS still sees one layer and
one trust ratio, but computes it as two ordinary convolutions on the two
halves of the channels, which runs everywhere. "native" uses
`Conv2D(groups=2)`; "none" uses ungrouped convolutions (more parameters).
"""

import keras
from keras import layers
from keras import ops

from ..config import ALEXNET_BN_VARIANTS as BN_VARIANTS
from ..config import ALEXNET_FC_UNITS as FC_UNITS
from ..config import ALEXNET_GROUPS as GROUPS
from ..config import MIN_IMAGE_SIZE
from ..preprocessing import PREPROCESSING
from .normalization import GhostBatchNormalization
from .normalization import ImageNormalization

LRN = dict(size=5, alpha=1e-4, beta=0.75, bias=1.0)  # BVLC's norm1 / norm2
# Each model's own source's normalisation: BVLC's data layer subtracts the
# mean; the LARS authors' AlexNet-BN layer then scales by 1/256.
CAFFE_PREPROCESSING = PREPROCESSING["caffe"]
NVCAFFE_PREPROCESSING = PREPROCESSING["nvcaffe_alexnet_bn"]
AUTHORS_BN = dict(epsilon=1e-4, momentum=0.9, center=False, scale=False)
CONV_BN_RELU_BN = dict(epsilon=1e-5, momentum=0.9)


@keras.saving.register_keras_serializable(package="keras_lars_recipes")
class LocalResponseNormalization(layers.Layer):
    """Caffe's across-channel LRN: `x / (bias + alpha/size · Σ x²)^beta`, the
    sum over `size` neighbouring channels centred on each channel."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, bias=1.0, **kwargs):
        super().__init__(**kwargs)
        self.size, self.alpha, self.beta, self.bias = size, alpha, beta, bias

    def call(self, x):
        squares = ops.square(ops.cast(x, "float32"))
        half = self.size // 2
        padded = ops.pad(squares, [[0, 0], [0, 0], [0, 0], [half, self.size - 1 - half]])
        channels = ops.shape(x)[-1]
        window = sum(padded[..., i : i + channels] for i in range(self.size))
        scale = ops.power(self.bias + (self.alpha / self.size) * window, self.beta)
        return ops.cast(ops.cast(x, "float32") / scale, x.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "alpha": self.alpha,
            "beta": self.beta,
            "bias": self.bias,
        }


@keras.saving.register_keras_serializable(package="keras_lars_recipes")
class SplitGroupConv2D(layers.Layer):
    """A two-group convolution with one kernel variable, computed as one
    ordinary convolution per group (no grouped-convolution op, so it runs on
    TPUs). Same parameters and outputs as `Conv2D(groups=2)`."""

    def __init__(
        self,
        filters,
        kernel_size,
        groups=2,
        padding="same",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.groups = filters, kernel_size, groups
        self.padding, self.use_bias = padding, use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups or self.filters % self.groups:
            raise ValueError(
                f"{self.name}: {channels} input channels and {self.filters} filters must "
                f"both divide into {self.groups} groups"
            )
        k = self.kernel_size
        self.kernel = self.add_weight(
            shape=(k, k, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
            name="kernel",
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.filters,), initializer=self.bias_initializer, name="bias"
            )

    def call(self, x):
        inputs = ops.split(x, self.groups, axis=-1)
        kernels = ops.split(self.kernel, self.groups, axis=-1)
        y = ops.concatenate(
            [ops.conv(i, k, padding=self.padding) for i, k in zip(inputs, kernels)], axis=-1
        )
        return y + self.bias if self.use_bias else y

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "groups": self.groups,
            "padding": self.padding,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


def _gaussian(stddev):
    return keras.initializers.RandomNormal(stddev=stddev)


def _conv(x, filters, kernel_size, name, *, strides=1, groups="none", bias=0.0, use_bias=True):
    """A convolution with Caffe's Gaussian initialisation, in two groups
    unless `groups` is "none" (see the module docstring)."""
    options = dict(
        kernel_initializer=_gaussian(0.01),
        bias_initializer=keras.initializers.Constant(bias),
        use_bias=use_bias,
        name=name,
    )
    if groups == "none":
        padding = "valid" if strides > 1 else "same"
        return layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, **options)(x)
    if groups == "native":
        return layers.Conv2D(filters, kernel_size, padding="same", groups=2, **options)(x)
    return SplitGroupConv2D(filters, kernel_size, groups=2, **options)(x)


def _classifier(x, num_classes, dropout, fc_init, units):
    """fc6, fc7 (`units`, ReLU, dropout) and fc8, with float32 logits."""
    x = layers.Flatten(name="flatten")(x)
    for name in ("fc6", "fc7"):
        std, bias = fc_init
        x = layers.Dense(
            units,
            activation="relu",
            kernel_initializer=_gaussian(std),
            bias_initializer=keras.initializers.Constant(bias),
            name=name,
        )(x)
        if dropout:
            x = layers.Dropout(dropout, name=name + "_dropout")(x)
    return layers.Dense(
        num_classes, kernel_initializer=_gaussian(0.01), dtype="float32", name="fc8"
    )(x)


def _check(image_size, groups, fc_units):
    smallest = MIN_IMAGE_SIZE["alexnet"]
    if image_size < smallest:
        raise ValueError(
            f"AlexNet needs `image_size` >= {smallest}. Received: image_size={image_size}"
        )
    if groups not in GROUPS:
        raise ValueError(f"`groups` must be one of {GROUPS}. Received: groups={groups!r}")
    if not isinstance(fc_units, int) or fc_units < 1:
        raise ValueError(f"`fc_units` must be an integer >= 1. Received: fc_units={fc_units!r}")


def _normalized_input(image_size, mean, stddev):
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="images")
    return inputs, ImageNormalization(mean, stddev, name="normalize")(inputs)


def alexnet(
    num_classes=1000,
    image_size=227,
    dropout=0.5,
    groups="split",
    fc_units=FC_UNITS,
    mean=CAFFE_PREPROCESSING.mean,
    stddev=CAFFE_PREPROCESSING.stddev,
):
    """BVLC AlexNet with LRN, taking `image_size`² uint8 RGB images
    (normalised by the model with `mean` and `stddev`), fc6 and fc7 of
    `fc_units`."""
    _check(image_size, groups, fc_units)
    pool = dict(pool_size=3, strides=2)
    inputs, x = _normalized_input(image_size, mean, stddev)
    x = _conv(x, 96, 11, "conv1", strides=4)
    x = LocalResponseNormalization(**LRN, name="norm1")(layers.ReLU(name="relu1")(x))
    x = layers.MaxPooling2D(**pool, name="pool1")(x)
    x = _conv(x, 256, 5, "conv2", groups=groups, bias=0.1)
    x = LocalResponseNormalization(**LRN, name="norm2")(layers.ReLU(name="relu2")(x))
    x = layers.MaxPooling2D(**pool, name="pool2")(x)
    x = layers.ReLU(name="relu3")(_conv(x, 384, 3, "conv3"))
    x = layers.ReLU(name="relu4")(_conv(x, 384, 3, "conv4", groups=groups, bias=0.1))
    x = layers.ReLU(name="relu5")(_conv(x, 256, 3, "conv5", groups=groups, bias=0.1))
    x = layers.MaxPooling2D(**pool, name="pool5")(x)
    logits = _classifier(x, num_classes, dropout, fc_init=(0.005, 0.1), units=fc_units)
    return keras.Model(inputs, logits, name="alexnet")


def alexnet_bn(
    num_classes=1000,
    image_size=227,
    dropout=0.5,
    groups="split",
    variant="authors",
    bn_span=None,
    fc_units=FC_UNITS,
    mean=NVCAFFE_PREPROCESSING.mean,
    stddev=NVCAFFE_PREPROCESSING.stddev,
):
    """AlexNet with batch normalisation over `bn_span` images (None: the
    whole batch), fc6 and fc7 of `fc_units`; see the module docstring for the
    variants. The authors' data layer subtracts the mean and scales by 1/256."""
    _check(image_size, groups, fc_units)
    if variant not in BN_VARIANTS:
        raise ValueError(f"`variant` must be one of {BN_VARIANTS}. Received: variant={variant!r}")
    pool = dict(pool_size=3, strides=2)
    authors = variant == "authors"

    def conv_block(x, filters, kernel_size, name, **kwargs):
        """authors: BN(no affine) -> conv -> ReLU; else conv -> BN -> ReLU."""
        if authors:
            if name != "conv1":
                x = GhostBatchNormalization(bn_span, **AUTHORS_BN, name=name + "_input_bn")(x)
            x = _conv(x, filters, kernel_size, name, bias=0.01, **kwargs)
        else:
            x = _conv(x, filters, kernel_size, name, use_bias=False, **kwargs)
            x = GhostBatchNormalization(bn_span, **CONV_BN_RELU_BN, name=name + "_bn")(x)
        return layers.ReLU(name=name + "_relu")(x)

    inputs, x = _normalized_input(image_size, mean, stddev)
    x = conv_block(x, 96, 11, "conv1", strides=4)
    x = layers.MaxPooling2D(**pool, name="pool1")(x)
    x = conv_block(x, 256, 5, "conv2", groups=groups)
    x = layers.MaxPooling2D(**pool, name="pool2")(x)
    x = conv_block(x, 384, 3, "conv3")
    x = conv_block(x, 384, 3, "conv4", groups=groups)
    x = conv_block(x, 256, 3, "conv5", groups=groups)
    x = layers.MaxPooling2D(**pool, name="pool5")(x)
    logits = _classifier(x, num_classes, dropout, fc_init=(0.005, 0.1), units=fc_units)
    return keras.Model(inputs, logits, name="alexnet_bn")
