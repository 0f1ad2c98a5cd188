"""Runs the study: every planned run (or its saved result), then the table,
the claim check, the CSV files and the figures.

Each finished run is saved in `<out_dir>/completed/<key>/` with what produced
it: the run itself, the settings it depends on, the data, and a fingerprint of
the code and versions (keras_lars, Keras, the backend and its version, and the
source of the training code and the optimizer); `<key>` is a hash of all but
the run, so studies with other settings in the same `out_dir` keep each
other's runs. A rerun reuses a saved run only when all of these match, and the
summary says how many it reused.
"""

import csv
import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import time

import keras
from tqdm import tqdm

import keras_lars

from .. import faults
from .. import optimization
from . import claims as claims_lib
from . import fashion_mnist
from . import plots
from . import training
from .config import plan_runs

# Whose source a saved run depends on (plots and claims are recomputed).
TRAINING_SOURCES = (
    pathlib.Path(training.__file__),
    pathlib.Path(fashion_mnist.__file__),
    pathlib.Path(optimization.__file__),
    *sorted(pathlib.Path(keras_lars.__file__).parent.glob("*.py")),
)


def check_out_dir(out_dir):
    """Raises `NotADirectoryError` or `PermissionError` naming `out_dir` unless
    the outputs can be written there (checked before the first run trains)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--out_dir={out_dir} is a file, not a directory")
    existing = out_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--out_dir={out_dir}: {existing} is not writable")


def run_study(config, dataset, out_dir, thresholds=None, resume=True):
    """Runs every configuration and writes the outputs; returns the claims."""
    data = split(dataset, config)
    runs = plan_runs(config)
    settings = run_settings(config, dataset.source)
    start = time.time()
    rows, records, reused, trained = [], {}, 0, 0
    with tqdm(total=len(runs) * config.epochs, unit="epoch", desc="study") as bar:
        for run in runs:
            path = _completed_path(out_dir, settings, run)
            saved = _load_completed(path, settings, run) if resume else None
            if saved:
                row, record = saved
                reused += 1
                bar.update(config.epochs)
            else:
                row, record = training.train(run, data, config, bar, run.seed == 0)
                _save_completed(path, settings, run, row, record)
                trained += 1
                faults.kill_if_asked(trained)
            rows.append(row)
            records[run] = record
    summaries = {
        model: claims_lib.summarize([r for r in rows if r["model"] == model], config.batch_sizes)
        for model in config.models
    }
    verdicts = {model: claims_lib.check_claims(s, thresholds) for model, s in summaries.items()}
    comparison = claims_lib.compare_batch_norm(summaries, thresholds)
    text = write_outputs(
        out_dir,
        rows,
        summaries,
        verdicts,
        comparison,
        _ratio_panels(records, summaries, config),
        config,
        dataset.source,
        time.time() - start,
        reused,
    )
    print(text)
    return [claim for claims in verdicts.values() for claim in claims] + comparison


def split(dataset, config):
    """Holds the last `validation_examples` of the training set out."""
    x, y = dataset.x_train, dataset.y_train
    n_val = min(config.validation_examples, len(x) // 5)
    x_val, y_val, x, y = x[-n_val:], y[-n_val:], x[:-n_val], y[:-n_val]
    if config.train_examples:
        x, y = x[: config.train_examples], y[: config.train_examples]
    x_test, y_test = dataset.x_test, dataset.y_test
    if config.test_examples:
        x_test, y_test = x_test[: config.test_examples], y_test[: config.test_examples]
    return x, y, x_val, y_val, x_test, y_test


def run_settings(config, source):
    """What one run's result depends on, besides the `Run` itself."""
    settings = dataclasses.asdict(config)
    for study_wide in ("models", "batch_sizes", "seeds", "sgd_sweep", "lars_lrs"):
        del settings[study_wide]
    digest = hashlib.sha256()
    for path in TRAINING_SOURCES:
        digest.update(path.read_bytes())
    return {
        **settings,
        "data": source,
        "keras_lars": keras_lars.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "backend_version": importlib.import_module(keras.backend.backend()).__version__,
        "source_sha256": digest.hexdigest(),
    }


def write_outputs(
    out_dir, rows, summaries, verdicts, comparison, ratio_panels, config, source, seconds, reused
):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "method", "batch_size", "learning_rate", "mean", "std", "seeds"])
        for model, summary in summaries.items():
            for line, cells in summary.items():
                for batch, cell in sorted(cells.items()):
                    writer.writerow(
                        [model, line, batch, cell.learning_rate, cell.mean, cell.std, config.seeds]
                    )
    verdict = {True: "HELD", False: "FAILED", None: "NOT TESTED"}
    wall_time = f"Wall time {seconds / 60:.1f} min, " + (
        f"with {reused} of {len(rows)} runs resumed from an earlier start "
        "(same settings, data, code and versions)"
        if reused
        else "every run trained (none saved earlier with these settings, data, code and versions)"
    )
    text = [
        "# Large-batch study: SGD with linear scaling vs LARS",
        "",
        f"Data: {source}. {config.epochs} epochs ({config.warmup_epochs} of warm-up), "
        f"{config.seeds} seed(s): test accuracy, mean ± standard deviation over seeds, at the "
        f"rate chosen on validation. {wall_time}.",
        "",
        "SGD lines: momentum SGD with the same coupled L2 weight decay as LARS (keras_lars.LARS "
        "with adaptation switched off for every variable); biases and normalisation variables "
        "are not decayed in either.",
        "",
    ]
    if config.train_examples:
        text += [f"Trained on the first {config.train_examples} training images.", ""]
    if config.seeds == 1:
        text += ["One seed: no error bars, and a single draw can flip a verdict.", ""]
    for model, summary in summaries.items():
        text += [
            f"## {model}",
            "",
            claims_lib.markdown_table(summary, config.batch_sizes),
            "",
            "The claim, part by part:",
            "",
        ]
        text += [f"- **{verdict[c.held]}**: {c.statement}. ({c.detail})" for c in verdicts[model]]
        text += [""]
    text += ["## Batch norm", ""]
    text += [f"- **{verdict[c.held]}**: {c.statement}. ({c.detail})" for c in comparison]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    plots.plot_accuracy(
        os.path.join(out_dir, "accuracy_vs_batch.png"), summaries, config.batch_sizes
    )
    plots.plot_trust_ratios(os.path.join(out_dir, "trust_ratios.png"), ratio_panels)
    return "\n".join(text)


def _completed_path(out_dir, settings, run):
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    linear = "-linear" if run.linear_scaled else ""
    name = (
        f"{run.model}-{run.optimizer}-b{run.batch_size}-lr{run.learning_rate:g}{linear}"
        f"-seed{run.seed}"
    )
    return os.path.join(out_dir, "completed", key, name + ".json")


def _load_completed(path, settings, run):
    """(row, trust-ratio record) saved by an earlier run of exactly `run`
    under `settings`, or None."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        print(f"Retraining: cannot read {path} ({error})")
        return None
    if saved.get("settings") != settings or saved.get("run") != dataclasses.asdict(run):
        return None
    return saved["row"], saved["record"]


def _save_completed(path, settings, run, row, record):
    # Written whole, then renamed: a kill mid-write leaves no half file.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(dict(settings=settings, run=dataclasses.asdict(run), row=row, record=record), f)
    os.replace(path + ".tmp", path)


def _ratio_panels(records, summaries, config):
    """λ per layer for the selected LARS run at the smallest and the largest
    batch of each model (seed 0)."""
    panels = {}
    for model, summary in summaries.items():
        lars = summary[claims_lib.LARS_BEST]
        for batch in sorted({min(config.batch_sizes), max(config.batch_sizes)}):
            if batch not in lars:
                continue
            for run, record in records.items():
                if (
                    record
                    and run.model == model
                    and run.optimizer == "lars"
                    and run.seed == 0
                    and run.batch_size == batch
                    and run.learning_rate == lars[batch].learning_rate
                ):
                    panels[f"{model} LARS, batch {batch}, lr {run.learning_rate:g}"] = record
    return panels
