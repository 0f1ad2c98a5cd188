"""ResNet-50 and AlexNet on ImageNet with LARS: the recipe.

Run it with `python -m recipes.imagenet_train` (installed: `keras-lars-train`).
From the command line to the devices:

- `cli.py`: the command line; `config.py`: the settings over a preset
  (`presets.py`, plain data with sources) and the defaults; `plan.py`: the
  step counts derived from them and the data, and what a resume may change;
- `job.py`: one run on any backend (input streams, loops, evaluation, logs,
  summary), driving a `runner.Runner`:
  `tf_runner.py` (a tf.distribute strategy from `strategies.py`, the compiled
  loop of `train_loop.py`, `tf.train.Checkpoint`) or `jax_runner.py`
  (keras.distribution, `model.fit`);
- the input pipeline, TFRecords or TFDS to batches: `sources.py` (the
  splits, each input pipeline's share) over `records.py` (TFRecord files),
  `crops.py` (decode, crop, resize, flip; `preprocessing.py`, each source's
  settings as plain data), `batching.py` (shuffle, batch, evaluation's
  padding) and `bad_data.py` (the label check, the rescan naming a bad file);
- `models/`: ResNet-50 v1.5, AlexNet and AlexNet-BN;
- LARS and its schedule come from `recipes/optimization.py`, shared with the
  study.
"""
