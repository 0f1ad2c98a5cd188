"""The large-batch study: does LARS keep accuracy where linear-scaled SGD fails?

`recipes/large_batch_study.py` is its command line; this package is the
study, split where it changes for different reasons:

- `config.py`: the settings (`StudyConfig`, `Thresholds`) and the runs they plan;
- `training.py`: one run (the CNN, its optimizer, `model.fit`), the only part
  that imports Keras;
- `claims.py`: the table and the claim's verdicts, from result rows alone;
- `plots.py`: the figures;
- `runner.py`: all runs in order, resuming from saved ones, and the outputs.
"""
