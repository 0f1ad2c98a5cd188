"""The large-batch study: does LARS keep accuracy where linear-scaled SGD fails?

Run it with `make study` or `python -m recipes.large_batch_study`. The
package is split where it changes for different reasons:

- `cli.py`: the command line (every setting a flag);
- `fashion_mnist.py`: the data, from local files;
- `config.py`: the settings (`StudyConfig`, `Thresholds`), the batch sizes
  (`Grid`) and the runs they plan;
- `noise_scale.py`: the gradient noise scale from two batch sizes' gradient
  norms, and the batch sizes it places;
- `training.py`: one run (the CNN, its optimizer, `model.fit`, the probe of
  its gradient norms), the only part that imports Keras;
- `claims.py`: the table and the claim's verdicts, from result rows alone;
- `plots.py`: the figures;
- `experiment.py`: all runs in order, resuming from saved ones, and the outputs.
"""
