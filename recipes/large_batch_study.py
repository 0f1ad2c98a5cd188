r"""The large-batch study: does LARS keep accuracy where linear-scaled SGD fails?

The LARS paper's claim (You, Gitman & Ginsburg 2017): at a fixed number of
epochs, SGD with linear learning-rate scaling and warm-up breaks down at large
batch sizes, while LARS keeps its accuracy. This study trains a small
AlexNet-like CNN (no BatchNorm, 0.11 M parameters) on Fashion-MNIST at batch
sizes from 128 to 8192 and compares, at each batch size:

- SGD + linear scaling: momentum SGD, rate `base_lr · B / 128`, warm-up;
- SGD, best of a sweep: the linear-scaled rate and one 16 times smaller;
- LARS, best of a sweep: `keras_lars.LARS` with `PolynomialWarmup`, global
  rates 24 and 48 at batch >= 4096, square-root scaled below.

The smallest batch is the reference: each optimizer runs once there. Ten epochs
give linear-scaled SGD 70 steps at batch 8192: the regime where it breaks.

Every run uses linear warm-up then polynomial (power 2) decay, momentum 0.9 and
weight decay 5e-4. The rate of each swept line is chosen on a validation split
held out of the training set; the table reports test accuracy. LARS adapts the
biases too (as the authors' Caffe code did): excluded, they move with the raw
global rate, which made LARS unstable at high rates in a pilot.

Command (the README's main job), on 2 CPU cores:

    make study                                    # 10 runs, 9.4-12.9 minutes
    python -m recipes.large_batch_study --quick   # 2-3 minutes: a smoke run
    python -m recipes.large_batch_study --seeds 3 # mean over three seeds

What the default run gave here (2 CPU cores, seed 0, test accuracy):

    | method               | B=128  | B=4096 | B=8192 |
    | SGD + linear scaling | 90.4%  | 10.0%  | 10.0%  |
    | SGD, best of sweep   | 90.4%  | 71.0%  | 41.7%  |
    | LARS, best of sweep  | 90.7%  | 85.4%  | 76.6%  |

Linear-scaled SGD fails at 4K and 8K and LARS beats the best SGD of the sweep
at both, but LARS ends 4.9 and 13.8 points below batch 128 (the paper-style
thresholds are 4 and 7): ten epochs are 70 steps at batch 8192. --quick trains
on 20k images, too few steps at large batch to test the claim.

An interrupted study picks up where it stopped: each finished run is saved in
`<out_dir>/completed/`, and a rerun with the same settings trains only what is
missing (`--noresume` starts over).

Writes to `--out_dir` (default `runs/study`): `results.csv` (one row a run),
`summary.md` (the table, and whether each part of the claim held),
`accuracy_vs_batch.png` and `trust_ratios.png` (per-layer ‖w‖/‖g‖ over
training, the paper's motivation for per-layer rates).
"""

import csv
import dataclasses
import json
import math
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import keras_lars  # noqa: E402
from recipes import fashion_mnist  # noqa: E402

BASE_BATCH = 128
LARS_REFERENCE_BATCH = 4096
SGD_LINEAR = "SGD + linear scaling"
SGD_BEST = "SGD, best of sweep"
LARS_BEST = "LARS, best of sweep"
LINES = (SGD_LINEAR, SGD_BEST, LARS_BEST)
CHANCE = 1.0 / fashion_mnist.NUM_CLASSES
TRUST_RATIO_PROBES_PER_EPOCH = 4
TRUST_RATIO_PROBE_EXAMPLES = 1024


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    batch_sizes: tuple = (128, 4096, 8192)
    epochs: int = 10
    warmup_epochs: int = 2  # the paper's AlexNet warm-up; 3 or 5 did worse at 8K
    seeds: int = 1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sgd_base_lr: float = 0.05  # at batch 128
    # Multiples of the linear-scaled rate; the first must be 1 (linear scaling).
    sgd_sweep: tuple = (1.0, 0.0625)
    # LARS global rates at batch >= LARS_REFERENCE_BATCH, square-root scaled below.
    lars_lrs: tuple = (24.0, 48.0)
    trust_coefficient: float = 0.001
    validation_examples: int = 5000
    train_examples: int = 0  # 0: all that remain after validation
    test_examples: int = 0  # 0: all

    def __post_init__(self):
        if not self.batch_sizes or not all(_is_positive_int(b) for b in self.batch_sizes):
            raise ValueError(
                f"`batch_sizes` must be integers >= 1. Received: batch_sizes={self.batch_sizes}"
            )
        for name in ("epochs", "seeds"):
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(
                    f"`{name}` must be an integer >= 1. Received: {name}={getattr(self, name)!r}"
                )
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be in [0, epochs={self.epochs}). "
                f"Received: warmup_epochs={self.warmup_epochs}"
            )
        if not self.sgd_sweep or self.sgd_sweep[0] != 1.0:
            raise ValueError(
                "`sgd_sweep` must start with 1.0 (linear scaling). "
                f"Received: sgd_sweep={self.sgd_sweep}"
            )
        for name in ("sgd_sweep", "lars_lrs"):
            rates = getattr(self, name)
            if not rates or min(rates) <= 0 or len(set(rates)) < len(rates):
                raise ValueError(f"`{name}` must be distinct numbers > 0. Received: {name}={rates}")


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


QUICK = dict(
    epochs=6,
    lars_lrs=(24.0,),
    train_examples=20000,
    test_examples=5000,
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The claim's parts, in accuracy points (0-100)."""

    sgd_failure_gap: float = 10.0  # linear SGD "fails": diverges or this far below
    lars_gaps: tuple = ((4096, 4.0), (8192, 7.0))  # LARS at most this far below


@dataclasses.dataclass(frozen=True)
class Run:
    optimizer: str  # "sgd" or "lars"
    batch_size: int
    learning_rate: float
    seed: int
    linear_scaled: bool = False


@dataclasses.dataclass
class Claim:
    statement: str
    held: bool | None  # None: not tested (a batch size was left out)
    detail: str


def plan_runs(config):
    """Every (optimizer, batch, rate, seed). The smallest batch is the reference:
    each optimizer runs once there, at the first rate of its sweep."""
    reference = min(config.batch_sizes)
    runs = []
    for seed in range(config.seeds):
        for batch in config.batch_sizes:
            sgd_sweep = config.sgd_sweep[:1] if batch == reference else config.sgd_sweep
            lars_lrs = config.lars_lrs[:1] if batch == reference else config.lars_lrs
            linear = config.sgd_base_lr * batch / BASE_BATCH
            for k in sgd_sweep:
                runs.append(Run("sgd", batch, linear * k, seed, linear_scaled=k == 1.0))
            scale = math.sqrt(min(batch, LARS_REFERENCE_BATCH) / LARS_REFERENCE_BATCH)
            for lr in lars_lrs:
                runs.append(Run("lars", batch, round(lr * scale, 3), seed))
    return runs


def build_model():
    """AlexNet in miniature: a strided first convolution, pooling, two dense."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((fashion_mnist.IMAGE_SIDE, fashion_mnist.IMAGE_SIDE, 1)),
            layers.Conv2D(16, 5, strides=2, padding="same", activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(256, activation="relu", name="fc1"),
            layers.Dense(128, activation="relu", name="fc2"),
            layers.Dense(fashion_mnist.NUM_CLASSES, name="logits"),
        ],
        name="alexnet_mini",
    )


def make_optimizer(run, config, steps_per_epoch):
    total = steps_per_epoch * config.epochs
    warmup = steps_per_epoch * config.warmup_epochs
    schedule = keras_lars.PolynomialWarmup(
        run.learning_rate, decay_steps=max(total - warmup, 1), warmup_steps=warmup
    )
    if run.optimizer == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return keras_lars.LARS(
        schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        trust_coefficient=config.trust_coefficient,
        adaptation_exclude_patterns=(),
    )


class TrustRatioRecorder(keras.callbacks.Callback):
    """Records ‖w‖/‖g‖ of every kernel on a fixed batch, a few times an epoch."""

    def __init__(self, x, y, every_steps):
        super().__init__()
        self.x, self.y, self.every_steps = x, y, max(1, every_steps)
        self.steps, self.history = [], {}
        self._step = 0

    def on_train_begin(self, logs=None):
        self._record()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_steps == 0:
            self._record()

    def _record(self):
        import tensorflow as tf  # the study runs on the TensorFlow backend

        kernels = [v for v in self.model.trainable_variables if v.path.endswith("kernel")]
        with tf.GradientTape() as tape:
            logits = self.model(self.x, training=True)
            loss = self.model.loss(self.y, logits)
        gradients = tape.gradient(loss, kernels)
        self.steps.append(self._step)
        for variable, gradient in zip(kernels, gradients):
            layer = variable.path.split("/")[-2]
            ratio = float(tf.norm(variable.value) / (tf.norm(gradient) + 1e-12))
            self.history.setdefault(layer, []).append(ratio)


class ProgressBar(keras.callbacks.Callback):
    def __init__(self, bar, label):
        super().__init__()
        self.bar, self.label = bar, label

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix_str(f"{self.label} loss={logs.get('loss', float('nan')):.3f}")
        self.bar.update(1)


def train(run, data, config, bar, record_trust_ratios=True):
    """Trains one configuration; returns its result row and trust ratios (or
    None when not `record_trust_ratios`)."""
    keras.utils.set_random_seed(run.seed)
    x_train, y_train, x_val, y_val, x_test, y_test = data
    steps_per_epoch = math.ceil(len(x_train) / run.batch_size)
    model = build_model()
    model.compile(
        optimizer=make_optimizer(run, config, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    label = f"{run.optimizer} B={run.batch_size} lr={run.learning_rate:g} seed={run.seed}"
    callbacks = [keras.callbacks.TerminateOnNaN(), ProgressBar(bar, label)]
    if record_trust_ratios:
        probe = slice(0, TRUST_RATIO_PROBE_EXAMPLES)
        recorder = TrustRatioRecorder(
            x_train[probe], y_train[probe], steps_per_epoch // TRUST_RATIO_PROBES_PER_EPOCH
        )
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


def summarize(rows, batch_sizes):
    """{line: {batch: (test accuracy in points or NaN, learning rate)}}.

    Seeds are averaged; a configuration that diverged in any seed counts as
    diverged. Swept lines take the rate with the best validation accuracy.
    """

    def mean(values):
        return math.nan if any(math.isnan(v) for v in values) else 100 * float(np.mean(values))

    configs = {}
    for r in rows:
        key = (r["optimizer"], r["batch_size"], r["learning_rate"], r["linear_scaled"])
        configs.setdefault(key, []).append(r)
    summary = {line: {} for line in LINES}
    for batch in batch_sizes:
        candidates = {"sgd": [], "lars": []}
        for (optimizer, b, lr, linear), runs in configs.items():
            if b != batch:
                continue
            val = mean([r["val_accuracy"] for r in runs])
            test = mean([r["test_accuracy"] for r in runs])
            candidates[optimizer].append((val, test, lr))
            if linear:
                summary[SGD_LINEAR][batch] = (test, lr)
        for line, optimizer in ((SGD_BEST, "sgd"), (LARS_BEST, "lars")):
            finite = [c for c in candidates[optimizer] if not math.isnan(c[0])]
            if finite:
                _, test, lr = max(finite)
                summary[line][batch] = (test, lr)
            elif candidates[optimizer]:
                summary[line][batch] = (math.nan, candidates[optimizer][0][2])
    return summary


def check_claims(summary, thresholds=Thresholds()):
    """Each part of the paper's claim, and whether it held on these results."""
    baseline_batch = min(summary[SGD_LINEAR])
    baseline = summary[SGD_LINEAR][baseline_batch][0]

    def judged(statement, accuracy, held_if_diverged, held):
        if accuracy is None:
            return Claim(statement, None, "batch size not run")
        if math.isnan(accuracy):
            return Claim(statement, held_if_diverged, "diverged")
        return Claim(statement, held(baseline - accuracy), _gap_detail(accuracy, baseline))

    claims = []
    for batch, _ in thresholds.lars_gaps:
        claims.append(
            judged(
                f"Linear-scaled SGD fails at batch {batch} (diverges, or ends "
                f">= {thresholds.sgd_failure_gap:g} points below batch {baseline_batch})",
                summary[SGD_LINEAR].get(batch, (None,))[0],
                held_if_diverged=True,
                held=lambda gap: gap >= thresholds.sgd_failure_gap,
            )
        )
    for batch, lars_gap in thresholds.lars_gaps:
        claims.append(
            judged(
                f"LARS ends within {lars_gap:g} points of batch {baseline_batch} at batch {batch}",
                summary[LARS_BEST].get(batch, (None,))[0],
                held_if_diverged=False,
                held=lambda gap, allowed=lars_gap: gap <= allowed,
            )
        )
    for batch, _ in thresholds.lars_gaps:
        lars = summary[LARS_BEST].get(batch, (None,))[0]
        sgd = summary[SGD_BEST].get(batch, (None,))[0]
        statement = f"LARS beats the best SGD of the sweep at batch {batch}"
        if lars is None or sgd is None:
            claims.append(Claim(statement, None, "batch size not run"))
        else:
            held = not math.isnan(lars) and (math.isnan(sgd) or lars > sgd)
            claims.append(Claim(statement, held, f"LARS {_cell(lars)} vs SGD {_cell(sgd)}"))
    return claims


def _gap_detail(accuracy, baseline):
    gap = baseline - accuracy
    side = "below" if gap >= 0 else "above"
    return f"{accuracy:.1f}% vs {baseline:.1f}%: {abs(gap):.1f} points {side}"


def _cell(accuracy):
    return "diverged" if math.isnan(accuracy) else f"{accuracy:.1f}%"


def markdown_table(summary, batch_sizes):
    header = "| method | " + " | ".join(f"B={b}" for b in batch_sizes) + " |"
    rule = "|---|" + "---:|" * len(batch_sizes)
    lines = [header, rule]
    for line in LINES:
        cells = []
        for b in batch_sizes:
            accuracy, lr = summary[line].get(b, (None, None))
            cells.append("—" if accuracy is None else f"{_cell(accuracy)} (lr {lr:g})")
        lines.append(f"| {line} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out_dir, rows, summary, claims, trust_ratios, config, source, seconds, resumed=0):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    verdict = {True: "HELD", False: "FAILED", None: "NOT TESTED"}
    wall_time = f"Wall time {seconds / 60:.1f} min"
    if resumed:
        wall_time += f", with {resumed} of {len(rows)} runs resumed from an earlier start"
    text = [
        "# Large-batch study: SGD with linear scaling vs LARS",
        "",
        f"Data: {source}. {config.epochs} epochs ({config.warmup_epochs} of warm-up), "
        f"{config.seeds} seed(s); test accuracy, rate chosen on validation. {wall_time}.",
        "",
        markdown_table(summary, config.batch_sizes),
        "",
    ]
    if config.train_examples:
        text += [
            f"Trained on a {config.train_examples}-image subset: a smoke run with too few "
            "steps at large batch sizes to test the claim.",
            "",
        ]
    text += [
        "## The claim, part by part",
        "",
    ] + [f"- **{verdict[c.held]}**: {c.statement}. ({c.detail})" for c in claims]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(text) + "\n")
    plot_accuracy(os.path.join(out_dir, "accuracy_vs_batch.png"), summary, config.batch_sizes)
    plot_trust_ratios(os.path.join(out_dir, "trust_ratios.png"), trust_ratios)
    return "\n".join(text)


def plot_accuracy(path, summary, batch_sizes):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for line, marker in zip(LINES, "os^"):
        points = [(b, summary[line][b][0]) for b in batch_sizes if b in summary[line]]
        xs = [b for b, _ in points]
        ys = [CHANCE * 100 if math.isnan(a) else a for _, a in points]
        ax.plot(xs, ys, marker=marker, label=line)
        for b, a in points:
            if math.isnan(a):
                ax.annotate(
                    "diverged",
                    (b, CHANCE * 100),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                )
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fixed epochs: accuracy against batch size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trust_ratios(path, trust_ratios):
    """One panel per recorded run: ‖w‖/‖g‖ of each layer against epochs."""
    fig, axes = plt.subplots(
        1, len(trust_ratios), figsize=(6 * len(trust_ratios), 4), squeeze=False
    )
    for ax, (title, record) in zip(axes[0], trust_ratios.items()):
        epochs = np.array(record["steps"]) / record["steps_per_epoch"]
        for layer, ratios in record["ratios"].items():
            ax.plot(epochs[: len(ratios)], ratios, label=layer)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("‖w‖ / ‖g‖")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Per-layer ratio of weight norm to gradient norm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_study(config, dataset, out_dir, thresholds=Thresholds(), resume=True):
    """Runs every configuration and writes the outputs; returns the claims.

    Each finished run is saved under `out_dir/completed/`; with `resume`, a
    rerun of an interrupted study trains only the runs that are missing there
    (saved runs count only when their training settings and data match).
    """
    data = split(dataset, config)
    runs = plan_runs(config)
    settings = _run_settings(config, dataset.source)
    start = time.time()
    rows, ratios, resumed = [], {}, 0
    with tqdm(total=len(runs) * config.epochs, unit="epoch", desc="study") as bar:
        for run in runs:
            path = _completed_path(out_dir, run)
            saved = _load_completed(path, settings) if resume else None
            if saved:
                row, record = saved
                resumed += 1
                bar.update(config.epochs)
            else:
                row, record = train(run, data, config, bar, _may_be_plotted(run, config))
                _save_completed(path, settings, row, record)
            rows.append(row)
            ratios[run] = record
    summary = summarize(rows, config.batch_sizes)
    claims = check_claims(summary, thresholds)
    text = write_outputs(
        out_dir,
        rows,
        summary,
        claims,
        _ratio_panels(ratios, summary),
        config,
        dataset.source,
        time.time() - start,
        resumed,
    )
    print(text)
    return claims


def _run_settings(config, source):
    """What one run's result depends on, besides the `Run` itself."""
    settings = dataclasses.asdict(config)
    for study_wide in ("batch_sizes", "seeds", "sgd_sweep", "lars_lrs"):
        del settings[study_wide]
    return {**settings, "data": source}


def _completed_path(out_dir, run):
    linear = "-linear" if run.linear_scaled else ""
    name = f"{run.optimizer}-b{run.batch_size}-lr{run.learning_rate:g}{linear}-seed{run.seed}"
    return os.path.join(out_dir, "completed", name + ".json")


def _load_completed(path, settings):
    """(row, trust-ratio record) saved by an earlier run, or None."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        print(f"Retraining: cannot read {path} ({error})")
        return None
    if saved.get("settings") != settings:
        return None
    return saved["row"], saved["record"]


def _save_completed(path, settings, row, record):
    # Written whole, then renamed: a kill mid-write leaves no half file.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(dict(settings=settings, row=row, record=record), f)
    os.replace(path + ".tmp", path)


def _may_be_plotted(run, config):
    """Whether `_ratio_panels` may pick this run: the trust-ratio probes cost
    about 7% of a run, so only these record them."""
    if run.seed != 0:
        return False
    if run.optimizer == "sgd":
        return run.linear_scaled and run.batch_size == min(config.batch_sizes)
    return run.batch_size == max(config.batch_sizes)


def _ratio_panels(ratios, summary):
    """The SGD baseline and the selected LARS run at the largest batch (seed 0)."""
    smallest, largest = min(summary[SGD_LINEAR]), max(summary[LARS_BEST])
    wanted = {
        ("sgd", smallest, summary[SGD_LINEAR][smallest][1]): f"SGD, batch {smallest}",
        ("lars", largest, summary[LARS_BEST][largest][1]): f"LARS, batch {largest}",
    }
    panels = {}
    for run, record in ratios.items():
        key = (run.optimizer, run.batch_size, run.learning_rate)
        if run.seed == 0 and key in wanted:
            panels[f"{wanted[key]}, lr {run.learning_rate:g}"] = record
    return panels


FLAGS = flags.FLAGS


def define_flags():
    """Defined only when run as a script, so modules can share flag names."""
    flags.DEFINE_string("out_dir", "runs/study", "Where the table, CSV and plots go.")
    flags.DEFINE_string(
        "data_dir",
        None,
        "A directory with the four Fashion-MNIST idx .gz "
        "files; by default the Debian package's or the Keras cache's.",
    )
    flags.DEFINE_bool("quick", False, "A smaller run (2 to 3 minutes on 2 cores).")
    flags.DEFINE_integer("seeds", 1, "Seeds per configuration; results are averaged.")
    flags.DEFINE_integer("epochs", None, "Epochs per run (default 10; 6 with --quick).")
    flags.DEFINE_list("batch_sizes", None, "Batch sizes (default 128,4096,8192).")
    flags.DEFINE_float(
        "sgd_failure_gap",
        Thresholds.sgd_failure_gap,
        "Points below batch 128 at which linear-scaled SGD counts as failed.",
    )
    flags.DEFINE_float("lars_gap_4k", 4.0, "Allowed LARS shortfall at batch 4096, in points.")
    flags.DEFINE_float("lars_gap_8k", 7.0, "Allowed LARS shortfall at batch 8192, in points.")
    flags.DEFINE_bool(
        "resume",
        True,
        "Reuse the runs an interrupted study saved in <out_dir>/completed "
        "(--noresume retrains them all).",
    )


def main(argv):
    del argv
    overrides = dict(QUICK) if FLAGS.quick else {}
    overrides["seeds"] = FLAGS.seeds
    if FLAGS.epochs:
        overrides["epochs"] = FLAGS.epochs
    if FLAGS.batch_sizes:
        overrides["batch_sizes"] = tuple(int(b) for b in FLAGS.batch_sizes)
    try:
        config = StudyConfig(**overrides)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    thresholds = Thresholds(
        FLAGS.sgd_failure_gap, ((4096, FLAGS.lars_gap_4k), (8192, FLAGS.lars_gap_8k))
    )
    dataset = fashion_mnist.load(FLAGS.data_dir)
    print(f"Data: {dataset.source}; {len(plan_runs(config))} runs -> {FLAGS.out_dir}")
    run_study(config, dataset, FLAGS.out_dir, thresholds, resume=FLAGS.resume)


if __name__ == "__main__":
    define_flags()
    app.run(main)
