"""The recipes' normalisation layers: the input's, on the device, and batch
normalisation over a chosen number of images."""

import keras
from keras import layers
from keras import ops


@keras.saving.register_keras_serializable(package="keras_lars_recipes")
class ImageNormalization(layers.Layer):
    """uint8 RGB images in [0, 255] to `(x − mean) / stddev`, per channel, in
    float32: the input pipeline ships bytes and the device does the
    arithmetic (tensorflow/tpu and Google's MLPerf code do the same)."""

    def __init__(self, mean, stddev, **kwargs):
        kwargs.setdefault("dtype", "float32")  # float32 even under mixed precision
        super().__init__(**kwargs)
        self.mean, self.stddev = tuple(mean), tuple(stddev)

    def call(self, images):
        x = ops.cast(images, "float32")
        return (x - ops.array(self.mean, "float32")) / ops.array(self.stddev, "float32")

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "stddev": self.stddev}


@keras.saving.register_keras_serializable(package="keras_lars_recipes")
class GhostBatchNormalization(layers.BatchNormalization):
    """Batch normalisation whose training statistics each cover `span`
    consecutive images of the batch (ghost batch norm, Hoffer, Hubara & Soudry
    2017): the batch is split into groups of `span`, each normalised with its
    own mean and (biased) variance. The moving statistics follow the mean of
    the groups' statistics, in one set of variables, as in
    `keras.layers.BatchNormalization`, which this is when `span` is None or
    the whole batch. Inference uses the moving statistics, as there.

    Under JAX's data parallelism the batch a layer sees is the global batch,
    split over the devices: groups within a device need no communication, and
    groups spanning devices are combined over them. Under tf.distribute each
    replica sees its own batch, so `span` must divide it.
    """

    def __init__(self, span=None, **kwargs):
        super().__init__(**kwargs)
        if span is not None and (isinstance(span, bool) or not isinstance(span, int) or span < 1):
            raise ValueError(f"`span` must be None or an integer >= 1. Received: span={span!r}")
        self.span = span

    def call(self, inputs, training=None, mask=None):
        batch = inputs.shape[0]
        if (
            not (training and self.trainable)
            or mask is not None
            or self.span is None
            or batch == self.span
            or self.renorm
        ):
            return super().call(inputs, training=training, mask=mask)
        if batch is not None and batch % self.span:  # unknown: checked when it runs
            raise ValueError(
                f"{self.name}: a batch of {batch} images does not split into groups of "
                f"span={self.span}"
            )
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        groups = ops.reshape(x, (-1, self.span, *x.shape[1:]))
        # The layer's reduction axes, one further in: the groups come first.
        axes = [axis + 1 for axis in self._reduction_axes]
        mean = ops.mean(groups, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(groups - mean), axis=axes, keepdims=True)
        normalized = (groups - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            normalized = normalized * ops.cast(self.gamma, x.dtype)
        if self.center:
            normalized = normalized + ops.cast(self.beta, x.dtype)
        keep = [axis for axis in range(1, groups.ndim) if axis not in axes]
        flat = [groups.shape[axis] for axis in keep]
        group_mean = ops.mean(ops.reshape(mean, (-1, *flat)), axis=0)
        group_variance = ops.mean(ops.reshape(variance, (-1, *flat)), axis=0)
        momentum = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, x.dtype) * momentum + group_mean * (1.0 - momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, x.dtype) * momentum + group_variance * (1.0 - momentum)
        )
        return ops.cast(ops.reshape(normalized, ops.shape(x)), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "span": self.span}
