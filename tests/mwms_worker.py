"""One worker of the MultiWorkerMirroredStrategy test (or a single device).

Trains `training.model()` with LARS in a custom loop (`strategy.run` +
`optimizer.apply_gradients`) and writes the final weights to `--output`.
With `--ports`, also records what `model.fit` does under the strategy.
"""

import argparse
import os

import numpy as np

from cluster import tf_config

EPOCHS = 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--ports", help="comma-separated, one per worker")
    parser.add_argument("--task_index", type=int, default=0)
    args = parser.parse_args()
    if args.ports:
        ports = [int(p) for p in args.ports.split(",")]
        os.environ["TF_CONFIG"] = tf_config(ports, args.task_index)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import tensorflow as tf

    import training

    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy() if args.ports else tf.distribute.get_strategy()
    )
    with strategy.scope():
        net = training.model()
        optimizer = training.optimizer()
    x, y = training.data()

    def dataset_fn(context):
        # Worker k takes examples k, k + n, ...: the union of the workers'
        # batch b is exactly batch b of the single-device run.
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shard(
            context.num_input_pipelines, context.input_pipeline_id
        )
        return dataset.batch(context.get_per_replica_batch_size(training.BATCH))

    batches = strategy.distribute_datasets_from_function(dataset_fn)

    @tf.function
    def train_step(inputs):
        def step(features, targets):
            with tf.GradientTape() as tape:
                errors = tf.reduce_mean(tf.square(net(features) - targets), -1)
                loss = tf.reduce_sum(errors) / training.BATCH  # global batch
            gradients = tape.gradient(loss, net.trainable_variables)
            optimizer.apply_gradients(zip(gradients, net.trainable_variables))

        strategy.run(step, args=inputs)

    for _ in range(EPOCHS):
        for inputs in batches:
            train_step(inputs)

    fit_errors = {}
    if args.ports:  # model.fit with LARS and, as a control, with SGD
        for name, make in (
            ("lars", training.optimizer),
            ("sgd", lambda: keras.optimizers.SGD(0.1)),
        ):
            with strategy.scope():
                fit_net = training.model()
                fit_net.compile(optimizer=make(), loss="mse")
            try:
                fit_net.fit(x, y, batch_size=training.BATCH, epochs=1, verbose=0)
                fit_errors[name] = ""
            except Exception as error:  # noqa: BLE001 - recorded for the test
                fit_errors[name] = f"{type(error).__name__}: {error}"[:500]
    np.savez(
        args.output,
        *net.get_weights(),
        **{f"fit_error_{name}": error for name, error in fit_errors.items()},
    )


if __name__ == "__main__":
    main()
