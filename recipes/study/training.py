"""One run of the study: the CNN, its optimizer, `model.fit`, the accuracies,
the per-layer trust ratios LARS records inside its step, and the gradient
norms that give the task's noise scale."""

import math
import time

import keras
import numpy as np

from .. import optimization
from . import fashion_mnist

TRUST_RATIO_PROBES_PER_EPOCH = 4
# The gradient at one point of a run swings with the step; McCandlish et al.
# average over steps, and so the noise scale averages an epoch's probes.
NOISE_PROBES_PER_EPOCH = 2
NOISE_BIG_BATCHES_PER_PROBE = 2
# Keras's default (0.99) leaves a third of the initial statistics after the
# ~70 steps of a large-batch run; the TF ResNet references use 0.9.
BN_MOMENTUM = 0.9
# Batch sizes below this run several steps per call of the compiled step
# (`steps_per_execution`).
IMAGES_PER_EXECUTION = 1024


def build_model(name="cnn"):
    """AlexNet in miniature (0.11 M parameters): a strided first convolution,
    pooling, two dense layers. "cnn_bn" puts batch normalisation after every
    convolution and hidden dense layer (which then have no bias)."""
    layers = keras.layers
    batch_norm = name == "cnn_bn"

    def block(layer_type, *args, name, **kwargs):
        if not batch_norm:
            return [layer_type(*args, activation="relu", name=name, **kwargs)]
        return [
            layer_type(*args, use_bias=False, name=name, **kwargs),
            layers.BatchNormalization(momentum=BN_MOMENTUM, name=name + "_bn"),
            layers.ReLU(name=name + "_relu"),
        ]

    return keras.Sequential(
        [
            keras.Input((fashion_mnist.IMAGE_SIDE, fashion_mnist.IMAGE_SIDE, 1)),
            *block(layers.Conv2D, 16, 5, strides=2, padding="same", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            *block(layers.Conv2D, 32, 3, padding="same", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Flatten(name="flatten"),
            *block(layers.Dense, 256, name="fc1"),
            *block(layers.Dense, 128, name="fc2"),
            layers.Dense(fashion_mnist.NUM_CLASSES, name="logits"),
        ],
        name=f"alexnet_mini{'_bn' if batch_norm else ''}",
    )


def make_optimizer(run, config, steps_per_epoch, track_trust_ratios=False):
    """LARS for "lars" runs; for "sgd" runs momentum SGD with exactly LARS's
    coupled L2 decay (LARS with adaptation switched off for every variable,
    so λ = 1: the paper's baseline). Both decay the kernels and not the biases
    or normalisation variables; LARS adapts every variable (as the authors'
    Caffe code does: excluded biases, moving at the raw global rate, make LARS
    unstable at high rates, docs/optimizer.md)."""
    return optimization.lars(
        run.learning_rate,
        train_steps=steps_per_epoch * config.epochs,
        warmup_steps=steps_per_epoch * config.warmup_epochs,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        trust_coefficient=config.trust_coefficient,
        adaptation_exclude_patterns=optimization.ADAPT_NONE
        if run.optimizer == "sgd"
        else optimization.ADAPT_ALL,
        track_trust_ratios=track_trust_ratios,
    )


def steps_per_execution(batch_size, steps_per_epoch):
    """Steps `fit` runs per call: each call adds about 5 ms, a third of
    batch 128's step on 2 cores, so small batches run several a call (an
    epoch's at most)."""
    return max(1, min(steps_per_epoch, IMAGES_PER_EXECUTION // batch_size))


class EveryNSteps(keras.callbacks.Callback):
    """Calls `on_step(step)` at the first batch end at or past each multiple
    of `every_steps` updates: with several steps a call (`fit`'s
    `steps_per_execution`), batch ends come only between calls."""

    def __init__(self, every_steps):
        super().__init__()
        self.every_steps = max(1, every_steps)
        self._next = self.every_steps

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step >= self._next:
            self._next = (step // self.every_steps + 1) * self.every_steps
            self.on_step(step)

    def on_step(self, step):
        raise NotImplementedError


class TrustRatioRecorder(EveryNSteps):
    """Reads the λ LARS used for every kernel, a few times an epoch, from the
    optimizer (no extra forward or backward pass)."""

    def __init__(self, every_steps):
        super().__init__(every_steps)
        self.steps, self.history = [], {}

    def on_step(self, step):
        ratios = self.model.optimizer.trust_ratios()
        self.steps.append(step)
        for path, ratio in ratios.items():
            if path.endswith("kernel"):
                self.history.setdefault(path.split("/")[-2], []).append(ratio)


class NoiseScaleProbe(EveryNSteps):
    """The loss gradient's squared norm at two batch sizes, for
    `noise_scale.estimate`: `probes` times an epoch, and as often at the start
    (epoch 0), each probe `big_batches` fresh random draws of the training
    images. Each big batch is split into small batches and its gradient is
    their mean (for a model without batch norm exactly the big batch's
    gradient; with batch norm each small batch is normalised by its own
    statistics, as in training, which keeps the estimator's premise of
    independent small batches). The run is left as it was: no weight moves
    and batch norm's moving statistics are put back. Weight decay, a
    deterministic term, is not in the loss."""

    def __init__(self, x, y, small_batch, big_batch, every_steps, probes, big_batches, seed):
        super().__init__(every_steps)
        if not (big_batch <= len(x) and big_batch % small_batch == 0 < small_batch < big_batch):
            raise ValueError(
                "`noise_batch_sizes` must be two batch sizes, the big one a multiple of the "
                f"small one and at most the {len(x)} training images. "
                f"Received: noise_batch_sizes=({small_batch}, {big_batch})"
            )
        self.x, self.y = x, y
        self.small_batch, self.big_batch = small_batch, big_batch
        self.probes, self.big_batches = probes, big_batches
        self.rng = np.random.default_rng(seed)
        self.steps, self.small_sq_norms, self.big_sq_norms = [], [], []
        self._norms = None

    def on_train_begin(self, logs=None):
        for _ in range(self.probes):
            self.on_step(0)

    def on_step(self, step):
        import tensorflow as tf  # the study runs on TensorFlow (make study)

        if self._norms is None:
            self._norms = _squared_norms_function(self.model, tf)
        saved = [v.numpy() for v in self.model.non_trainable_variables]
        chunks = self.big_batch // self.small_batch
        for _ in range(self.big_batches):
            index = self.rng.choice(len(self.x), self.big_batch, replace=False)
            x = self.x[index].reshape(chunks, self.small_batch, *self.x.shape[1:])
            y = self.y[index].reshape(chunks, self.small_batch)
            small_sq, big_sq = self._norms(tf.constant(x), tf.constant(y))
            self.steps.append(step)
            self.small_sq_norms.append(float(small_sq))
            self.big_sq_norms.append(float(big_sq))
        for variable, value in zip(self.model.non_trainable_variables, saved):
            variable.assign(value)

    def record(self):
        """One entry a big batch: the step it was drawn at (0: before
        training), its mean squared small-batch norm, its squared norm."""
        return dict(
            small_batch=self.small_batch,
            big_batch=self.big_batch,
            steps=self.steps,
            small_sq_norms=self.small_sq_norms,
            big_sq_norms=self.big_sq_norms,
        )


def _squared_norms_function(model, tf):
    """(x, y) of shape (chunks, small, ...) -> (mean over chunks of |g_chunk|²,
    |mean of the chunks' gradients|²), in one compiled loop."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    def squared_norm(tensors):
        return tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])

    @tf.function(reduce_retracing=True)
    def norms(x, y):
        chunks = tf.shape(x)[0]

        def body(i, small_sq, total):
            with tf.GradientTape() as tape:
                value = loss(y[i], model(x[i], training=True))
            gradients = tape.gradient(value, variables)
            return (
                i + 1,
                small_sq + squared_norm(gradients),
                [t + g for t, g in zip(total, gradients)],
            )

        _, small_sq, total = tf.while_loop(
            lambda i, *_: i < chunks,
            body,
            (tf.constant(0), tf.constant(0.0), [tf.zeros_like(v) for v in variables]),
        )
        count = tf.cast(chunks, tf.float32)
        return small_sq / count, squared_norm([t / count for t in total])

    return norms


class ProgressBar(keras.callbacks.Callback):
    def __init__(self, bar, label):
        super().__init__()
        self.bar, self.label = bar, label

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix_str(f"{self.label} loss={logs.get('loss', float('nan')):.3f}")
        self.bar.update(1)


def measure_noise_scale(run, data, config, bar):
    """Trains `run` (the reference SGD run) with a `NoiseScaleProbe` at
    `config.noise_batch_sizes`; returns its result row and the probe's record."""
    small_batch, big_batch = config.noise_batch_sizes
    epoch_updates = updates_per_epoch(len(data[0]), run.batch_size)
    probe = NoiseScaleProbe(
        data[0],
        data[1],
        small_batch,
        big_batch,
        every_steps=epoch_updates // NOISE_PROBES_PER_EPOCH,
        probes=NOISE_PROBES_PER_EPOCH,
        big_batches=NOISE_BIG_BATCHES_PER_PROBE,
        seed=run.seed,
    )
    row, _ = train(run, data, config, bar, record_trust_ratios=False, callbacks=[probe])
    return row, dict(probe.record(), steps_per_epoch=epoch_updates)


def whole_batches(x, y, batch_size, seed):
    """The training set shuffled anew each epoch and cut into whole batches
    of `batch_size`, the partial last one dropped (as the ImageNet references
    do): every update is at the run's batch size, never a remainder trained
    at the large batch's rate (at 20,000 images and batch 6144, a quarter of
    the updates)."""
    import tensorflow as tf  # the study runs on TensorFlow (make study)

    x, y = tf.constant(x), tf.constant(y)
    return (
        tf.data.Dataset.range(len(x))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .map(lambda index: (tf.gather(x, index), tf.gather(y, index)))
        .prefetch(2)
    )


def updates_per_epoch(train_examples, batch_size):
    """Whole batches an epoch (`whole_batches`)."""
    return train_examples // batch_size


def train(run, data, config, bar, record_trust_ratios=True, callbacks=()):
    """Trains one configuration; returns its result row and the trust-ratio
    record (None unless `record_trust_ratios`, which only LARS runs keep).
    `callbacks` are added to `fit`'s."""
    keras.utils.set_random_seed(run.seed)
    x_train, y_train, x_val, y_val, x_test, y_test = data
    epoch_updates = updates_per_epoch(len(x_train), run.batch_size)
    record_trust_ratios = record_trust_ratios and run.optimizer == "lars"
    model = build_model(run.model)
    model.compile(
        optimizer=make_optimizer(run, config, epoch_updates, record_trust_ratios),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution(run.batch_size, epoch_updates),
    )
    label = f"{run.model} {run.optimizer} B={run.batch_size} lr={run.learning_rate:g} s={run.seed}"
    callbacks = [keras.callbacks.TerminateOnNaN(), ProgressBar(bar, label), *callbacks]
    if record_trust_ratios:
        recorder = TrustRatioRecorder(epoch_updates // TRUST_RATIO_PROBES_PER_EPOCH)
        callbacks.append(recorder)
    start = time.time()
    history = model.fit(
        whole_batches(x_train, y_train, run.batch_size, run.seed),
        epochs=config.epochs,
        shuffle=False,  # whole_batches shuffles
        verbose=0,
        callbacks=callbacks,
    )
    epochs_run = len(history.history["loss"])
    bar.update(config.epochs - epochs_run)  # epochs skipped after a NaN
    final_loss = history.history["loss"][-1]
    diverged = not math.isfinite(final_loss) or epochs_run < config.epochs
    if diverged:
        val_accuracy = test_accuracy = math.nan
    else:
        val_accuracy = model.evaluate(x_val, y_val, batch_size=2048, verbose=0)[1]
        test_accuracy = model.evaluate(x_test, y_test, batch_size=2048, verbose=0)[1]
    row = dict(
        model=run.model,
        optimizer=run.optimizer,
        batch_size=run.batch_size,
        learning_rate=run.learning_rate,
        linear_scaled=run.linear_scaled,
        seed=run.seed,
        val_accuracy=val_accuracy,
        test_accuracy=test_accuracy,
        diverged=diverged,
        final_loss=final_loss,
        seconds=round(time.time() - start, 1),
    )
    if not record_trust_ratios:
        return row, None
    return row, dict(steps=recorder.steps, ratios=recorder.history, steps_per_epoch=epoch_updates)
