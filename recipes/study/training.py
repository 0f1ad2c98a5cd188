"""One run of the study: the CNN, its optimizer, `model.fit`, the accuracies,
and the per-layer trust ratios LARS records inside its step."""

import math
import time

import keras

from .. import optimization
from . import fashion_mnist

TRUST_RATIO_PROBES_PER_EPOCH = 4
# Keras's default (0.99) leaves a third of the initial statistics after the
# ~70 steps of a large-batch run; the TF ResNet references use 0.9.
BN_MOMENTUM = 0.9


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


class TrustRatioRecorder(keras.callbacks.Callback):
    """Reads the λ LARS used for every kernel, a few times an epoch, from the
    optimizer (no extra forward or backward pass)."""

    def __init__(self, every_steps):
        super().__init__()
        self.every_steps = max(1, every_steps)
        self.steps, self.history = [], {}
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_steps:
            return
        ratios = self.model.optimizer.trust_ratios()
        self.steps.append(self._step)
        for path, ratio in ratios.items():
            if path.endswith("kernel"):
                self.history.setdefault(path.split("/")[-2], []).append(ratio)


class ProgressBar(keras.callbacks.Callback):
    def __init__(self, bar, label):
        super().__init__()
        self.bar, self.label = bar, label

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix_str(f"{self.label} loss={logs.get('loss', float('nan')):.3f}")
        self.bar.update(1)


def train(run, data, config, bar, record_trust_ratios=True):
    """Trains one configuration; returns its result row and the trust-ratio
    record (None unless `record_trust_ratios`, which only LARS runs keep)."""
    keras.utils.set_random_seed(run.seed)
    x_train, y_train, x_val, y_val, x_test, y_test = data
    steps_per_epoch = math.ceil(len(x_train) / run.batch_size)
    record_trust_ratios = record_trust_ratios and run.optimizer == "lars"
    model = build_model(run.model)
    model.compile(
        optimizer=make_optimizer(run, config, steps_per_epoch, record_trust_ratios),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    label = f"{run.model} {run.optimizer} B={run.batch_size} lr={run.learning_rate:g} s={run.seed}"
    callbacks = [keras.callbacks.TerminateOnNaN(), ProgressBar(bar, label)]
    if record_trust_ratios:
        recorder = TrustRatioRecorder(steps_per_epoch // TRUST_RATIO_PROBES_PER_EPOCH)
        callbacks.append(recorder)
    start = time.time()
    history = model.fit(
        x_train,
        y_train,
        batch_size=run.batch_size,
        epochs=config.epochs,
        shuffle=True,
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
    return row, dict(steps=recorder.steps, ratios=recorder.history, steps_per_epoch=steps_per_epoch)
