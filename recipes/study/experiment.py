"""Runs the study: each model's noise-scale run, the grid it places, every
planned run (or its saved result), then the tables, the claim check, the CSV
files and the figures.

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
import datetime
import hashlib
import importlib
import json
import math
import os
import pathlib
import platform
import statistics
import time

import keras
from tqdm import tqdm

import keras_lars

from .. import faults
from .. import optimization
from . import claims as claims_lib
from . import fashion_mnist
from . import noise_scale
from . import plots
from . import training
from .config import BASE_BATCH
from .config import SELECTION_SEED
from .config import Thresholds
from .config import fixed_grid
from .config import noise_run
from .config import placed_grid
from .config import plan_repeats
from .config import plan_sweep

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


def check_backend():
    """Raises `ValueError` unless Keras runs on TensorFlow: the noise-scale
    probe takes its gradients with TensorFlow's GradientTape."""
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "the study measures the noise scale with TensorFlow: run it with "
            f"KERAS_BACKEND=tensorflow (make study does). Received: {keras.backend.backend()}"
        )


def check_data(config, dataset):
    """Raises `ValueError` naming --noise_batch_sizes or --batch_sizes unless
    their batches fit the training images: a run trains on whole batches
    (checked before the first run trains)."""
    train_examples = len(split(dataset, config)[0])
    too_big = [batch for batch in config.batch_sizes if batch > train_examples]
    if too_big:
        raise ValueError(
            f"`batch_sizes` asks for batch {too_big[0]}, more than the {train_examples} "
            f"training images. Received: batch_sizes={config.batch_sizes}"
        )
    if config.noise_batch_sizes[1] > train_examples:
        raise ValueError(
            f"`noise_batch_sizes` asks for a big batch of {config.noise_batch_sizes[1]}, more "
            f"than the {train_examples} training images. "
            f"Received: noise_batch_sizes={config.noise_batch_sizes}"
        )


def run_study(config, dataset, out_dir, thresholds=None, resume=True, command=None):
    """Measures each model's noise scale, places its grid (or takes the fixed
    one), runs every configuration and writes the outputs; returns the
    claims. `command`, when given, is named in the outputs."""
    thresholds = thresholds or Thresholds()
    data = split(dataset, config)
    settings = run_settings(config, dataset.source)
    start, loads = time.time(), [_load_average()]  # then after each run
    done = dict(reused=0, trained=0)

    def trained_or_saved(run, settings, train, bar, kind=""):
        """`train(bar)`'s (row, record), or those an earlier start saved."""
        path = _completed_path(out_dir, settings, run, kind)
        saved = _load_completed(path, settings, run) if resume else None
        if saved:
            done["reused"] += 1
            bar.update(config.epochs)
            return saved
        row, record = train(bar)
        loads.append(_load_average())
        _save_completed(path, settings, run, row, record)
        done["trained"] += 1
        faults.kill_if_asked(done["trained"])
        return row, record

    noise_settings = dict(settings, noise_batch_sizes=list(config.noise_batch_sizes))
    noise, noise_rows = {}, {}
    with tqdm(total=len(config.models) * config.epochs, unit="epoch", desc="noise") as bar:
        for model in config.models:
            run = noise_run(model, config)
            noise_rows[run], record = trained_or_saved(
                run,
                noise_settings,
                lambda bar, run=run: training.measure_noise_scale(run, data, config, bar),
                bar,
                kind="noise",
            )
            noise[model] = noise_scale.by_epoch(record)
    grids = {}
    for model, estimates in noise.items():
        scale = noise_scale.over_training(estimates)
        if config.batch_sizes:
            grids[model] = fixed_grid(config, scale)
        else:
            grids[model] = placed_grid(config, scale, len(data[0]))
        print(f"{model}: noise scale {scale:.0f}; batch sizes {_grid_text(grids[model])}")

    # The noise-scale run is the reference SGD run of seed 0 (the probes move
    # no weight and draw from a generator of their own): its result is that
    # run's, not trained twice.
    sweep = plan_sweep(config, grids)
    rows = [noise_rows[run] for run in sweep if run in noise_rows]
    sweep = [run for run in sweep if run not in noise_rows]
    records = {}  # trust ratios of the trained runs (an SGD run has none)
    # Until seed 0 has chosen the rates, the bar counts the most repeats
    # there can be: three lines at each batch, each at a rate of its own.
    batches = sum(len(grids[model].batch_sizes) for model in config.models)
    most_repeats = (config.seeds - 1) * 3 * batches
    with tqdm(total=(len(sweep) + most_repeats) * config.epochs, unit="epoch", desc="study") as bar:

        def train(run, bar):  # the selection seed's runs record trust ratios
            return training.train(run, data, config, bar, run.seed == SELECTION_SEED)

        def train_all(runs):
            for run in runs:
                row, record = trained_or_saved(
                    run, settings, lambda bar, run=run: train(run, bar), bar
                )
                rows.append(row)
                records[run] = record

        train_all(sweep)
        chosen = {
            model: claims_lib.chosen_rates([r for r in rows if r["model"] == model])
            for model in config.models
        }
        repeats = plan_repeats(config, chosen, grids)
        bar.total = (len(sweep) + len(repeats)) * config.epochs
        bar.refresh()
        train_all(repeats)
    summaries = {
        model: claims_lib.summarize(
            [r for r in rows if r["model"] == model], grids[model].batch_sizes
        )
        for model in config.models
    }
    verdicts = {
        model: claims_lib.check_claims(summary, grids[model], thresholds)
        for model, summary in summaries.items()
    }
    comparison = claims_lib.compare_batch_norm(summaries, grids, thresholds)
    text = write_outputs(
        out_dir,
        rows,
        summaries,
        verdicts,
        comparison,
        _ratio_panels(records, summaries),
        config,
        dataset.source,
        time.time() - start,
        done["reused"],
        len(sweep) + len(repeats) + len(noise),
        grids=grids,
        noise=noise,
        thresholds=thresholds,
        command=command,
        loads=loads,
    )
    print(text)
    return [claim for claims in verdicts.values() for claim in claims] + comparison


def _grid_text(grid):
    """ "128, 352 (1x), 1408 (4x); 16x (5632) left out: ..."."""
    if not grid.placed:
        return ", ".join(map(str, grid.batch_sizes))
    placed = {batch: k for k, batch, _ in grid.placed if batch}
    text = ", ".join(
        f"{b} ({placed[b]:g}×)" if b in placed else f"{b} (the reference)" for b in grid.batch_sizes
    )
    left_out = [f"{k:g}× left out: {why}" for k, batch, why in grid.placed if batch is None]
    return "; ".join([text, *left_out])


def provenance(command=None):
    """The host, the software and the date (and the command, when given)."""
    backend = keras.backend.backend()
    parts = [
        f"{os.cpu_count()} CPU cores ({_cpu_model()}, {platform.system()})",
        f"Python {platform.python_version()}, keras_lars {keras_lars.__version__}, "
        f"Keras {keras.__version__}, {backend} "
        f"{importlib.import_module(backend).__version__}",
    ]
    if command:
        parts.append(f"`{command}`")
    parts.append(datetime.date.today().isoformat())
    return "; ".join(parts)


def _cpu_model():
    """/proc/cpuinfo's model name (Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _load_average():
    """The host's 1-minute load average (NaN where the system has none):
    other work on the same cores stretches the wall time, so the summary
    states the load beside it."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


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
    study_wide = ("models", "batch_sizes", "seeds", "sgd_sweep", "lars_lrs", "noise_multiples")
    for name in (*study_wide, "noise_batch_sizes"):  # the noise run adds the last
        del settings[name]
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
    out_dir,
    rows,
    summaries,
    verdicts,
    comparison,
    ratio_panels,
    config,
    source,
    seconds,
    reused,
    total_runs,
    *,
    grids,
    noise,
    thresholds,
    command=None,
    loads=(),
):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "model",
                "method",
                "batch_size",
                "learning_rate",
                "mean",
                "std",
                "seeds",
                "noise_scale",
                "noise_multiple",
            ]
        )
        for model, summary in summaries.items():
            grid = grids[model]
            for line, cells in summary.items():
                for batch, cell in sorted(cells.items()):
                    writer.writerow(
                        [model, line, batch, cell.learning_rate, cell.mean, cell.std]
                        + [cell.seeds, f"{grid.noise_scale:.1f}", f"{grid.multiple(batch):.3f}"]
                    )
    with open(os.path.join(out_dir, "noise_scale.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["model", "epoch", "gradient_sq", "trace", "b_simple", "small_batch", "big_batch"]
        )
        for model, estimates in noise.items():
            for epoch, e in estimates:
                writer.writerow(
                    [model, epoch, e.gradient_sq, e.trace, e.simple, e.small_batch, e.big_batch]
                )
    verdict = {True: "HELD", False: "FAILED", None: "NOT TESTED"}
    wall_time = f"Wall time {seconds / 60:.1f} min, " + (
        f"with {reused} of {total_runs} runs resumed from an earlier start "
        "(same settings, data, code and versions)"
        if reused
        else "every run trained (none saved earlier with these settings, data, code and versions)"
    )
    loads = [value for value in loads if math.isfinite(value)]
    if len(loads) > 1:
        wall_time += (
            f"; the host's 1-minute load average ({os.cpu_count()} cores, each run keeping all "
            f"busy) was {loads[0]:.1f} at "
            f"the start, {statistics.fmean(loads[1:]):.1f} on average after each run trained "
            f"and {loads[-1]:.1f} at the end"
        )
    text = [
        "# Large-batch study: SGD with linear scaling vs LARS",
        "",
        f"Data: {source}. {config.epochs} epochs ({config.warmup_epochs} of warm-up), "
        f"{config.seeds} seed(s): test accuracy, mean ± standard deviation over seeds, at the "
        "rate chosen on seed 0's validation accuracy (seed 0 runs every rate, the other seeds "
        f"the chosen ones). {wall_time}.",
        "",
        f"Host and software: {provenance(command)}.",
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
    text += _noise_section(noise, grids, config, thresholds)
    for model, summary in summaries.items():
        text += [f"## {model}", ""]
        sentence = claims_lib.headline(verdicts[model])
        if sentence:
            text += [sentence, ""]
        text += [
            claims_lib.markdown_table(summary, grids[model].batch_sizes, grids[model]),
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
    caption = f"Host and software: {provenance(command)}"
    plots.plot_accuracy(
        os.path.join(out_dir, "accuracy_vs_batch.png"),
        summaries,
        {model: grid.batch_sizes for model, grid in grids.items()},
        caption,
    )
    plots.plot_trust_ratios(os.path.join(out_dir, "trust_ratios.png"), ratio_panels, caption)
    plots.plot_noise_scale(
        os.path.join(out_dir, "noise_scale.png"),
        {
            model: [(epoch, e.simple) for epoch, e in estimates]
            for model, estimates in noise.items()
        },
        {model: (grid.noise_scale, grid.batch_sizes) for model, grid in grids.items()},
        caption,
    )
    return "\n".join(text)


def _noise_section(noise, grids, config, thresholds):
    """The noise scale over training, per model, and the grid it placed."""
    small, big = config.noise_batch_sizes
    models = list(noise)
    text = [
        "## The noise scale",
        "",
        'The simple noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018, "An Empirical '
        'Model of Large-Batch Training"): the batch size past which a bigger batch stops '
        "saving steps. Measured on each model's momentum-SGD run at batch "
        f"{BASE_BATCH} (seed 0, the study's schedule) from the loss gradient's squared norms "
        f"at batch {small} and {big}, {training.NOISE_PROBES_PER_EPOCH * training.NOISE_BIG_BATCHES_PER_PROBE} "  # noqa: E501
        f"draws of {big} training images an epoch; an epoch's value is from its draws' "
        "averages. The grid is placed by the median over the epochs (the first epochs' "
        "fast-falling loss keeps it low; as the rate decays to zero it grows without bound).",
        "",
        "| epoch | " + " | ".join(models) + " |",
        "|---:|" + "---:|" * len(models),
    ]
    epochs = sorted({epoch for estimates in noise.values() for epoch, _ in estimates})
    by_model = {model: dict(estimates) for model, estimates in noise.items()}
    for epoch in epochs:
        cells = [_scale(by_model[m][epoch].simple) if epoch in by_model[m] else "—" for m in models]
        name = "0 (before training)" if epoch == 0 else str(epoch)
        text.append(f"| {name} | " + " | ".join(cells) + " |")
    text.append(
        "| **median over training** | "
        + " | ".join(f"**{_scale(grids[m].noise_scale)}**" for m in models)
        + " |"
    )
    text += [""]
    for model in models:
        text.append(f"- `{model}`: batch sizes {_grid_text(grids[model])}.")
    low, high = thresholds.regime_gaps
    text += [
        "",
        "The paper's ImageNet runs, batch 8K to 32K, sat at roughly 0.3 to 3 times ImageNet's "
        "noise scale (McCandlish et al.: the useful batch there reaches the tens of "
        "thousands). LARS's allowed shortfall below the reference goes by the same yardstick: "
        f"{low:g} points up to {thresholds.paper_regime:g}× the noise scale, where the paper "
        f"made its claim, {high:g} past it (the study's earlier allowances at batch 4096 and "
        "8192, unchanged).",
        "",
    ]
    return text


def _scale(value):
    return "∞ (|G|² lost in the noise)" if math.isinf(value) else f"{value:,.0f}"


def _completed_path(out_dir, settings, run, kind=""):
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    linear = "-linear" if run.linear_scaled else ""
    name = (
        f"{kind + '-' if kind else ''}{run.model}-{run.optimizer}-b{run.batch_size}"
        f"-lr{run.learning_rate:g}{linear}-seed{run.seed}"
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


def _ratio_panels(records, summaries):
    """λ per layer for the selected LARS run at the smallest and the largest
    batch of each model (seed 0)."""
    panels = {}
    for model, summary in summaries.items():
        lars = summary[claims_lib.LARS_BEST]
        for batch in sorted({min(lars), max(lars)}) if lars else ():
            for run, record in records.items():
                if (
                    record
                    and run.model == model
                    and run.optimizer == "lars"
                    and run.seed == SELECTION_SEED
                    and run.batch_size == batch
                    and run.learning_rate == lars[batch].learning_rate
                ):
                    panels[f"{model} LARS, batch {batch}, lr {run.learning_rate:g}"] = record
    return panels
