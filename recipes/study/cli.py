r"""The large-batch study: does LARS keep accuracy where linear-scaled SGD fails?

The LARS paper's claim (You, Gitman & Ginsburg 2017): at a fixed number of
epochs, SGD with linear learning-rate scaling and warm-up breaks down at large
batch sizes, while LARS keeps its accuracy. Its large batches, 8K to 32K, sat
at roughly 0.3 to 3 times ImageNet's gradient noise scale (McCandlish et al.
2018). This study trains a small AlexNet-like CNN (0.11 M parameters;
`--model=cnn_bn` adds batch norm, as in the paper's best model) on
Fashion-MNIST, first at batch 128 measuring the task's noise scale, then at
batch 128 and at 1, 4 and 16 times that noise scale, and compares, at each
batch size:

- SGD + linear scaling: momentum SGD, rate `base_lr · B / 128`, warm-up;
- SGD, best of a sweep: the linear-scaled rate times 1, 1/16, 1/64 and 1/256;
- LARS, best of a sweep: `keras_lars.LARS` with `PolynomialWarmup`, global
  rates 24, 48 and 96 at batch >= 4096, square-root scaled below.

The SGD lines are the paper's baseline: momentum SGD with the same coupled L2
weight decay as LARS (LARS with adaptation switched off for every variable).
The smallest batch is the reference: each optimizer runs once there. The
claim is checked at each larger batch, LARS allowed 4 points below the
reference up to 3 times the noise scale (where the paper made its claim) and
7 points past it.
Every run uses linear warm-up then polynomial (power 2) decay, momentum 0.9 and
weight decay 5e-4 on the kernels. Seed 0 runs every rate and chooses each
swept line's rate by its accuracy on a validation split held out of the
training set; seeds 1 and 2 repeat the chosen rates only. The table reports
test accuracy, mean ± standard deviation over the three seeds.

Command (the README's main job), on 2 CPU cores:

    make study                                       # the default: see README
    python -m recipes.large_batch_study --quick      # a smoke run
    python -m recipes.large_batch_study --model=cnn,cnn_bn   # with batch norm too

Every setting has a flag (`--helpfull` lists them): `--batch_sizes=128,4096,8192`
fixes the grid instead of placing it, `--lars_gaps=4096:4,8192:7` sets the
claim's allowed LARS shortfalls at given batches (or `1x:4,...` at multiples
of the noise scale). An interrupted study picks up where it stopped
(`recipes/study/experiment.py`); `--noresume` starts over.

Writes to `--out_dir` (default `runs/study`): `results.csv` (one row a run),
`summary.csv` (mean and std per cell, with each batch's multiple of the noise
scale), `noise_scale.csv` (the noise scale over training), `summary.md` (the
tables, and whether each part of the claim held), `accuracy_vs_batch.png`
(with error bars), `noise_scale.png` and `trust_ratios.png` (the λ LARS used
for each layer over training).
"""

import dataclasses
import sys

from absl import flags

from . import config as study_config

FLAGS = flags.FLAGS
# The defaults, read off the dataclass (building one would run its checks).
DEFAULTS = study_config.StudyConfig.defaults()


def define_flags():
    """Defined only when run as a script, so modules can share flag names."""
    flags.DEFINE_string("out_dir", "runs/study", "Where the tables, CSV files and plots go.")
    flags.DEFINE_string(
        "data_dir",
        None,
        "A directory with the four Fashion-MNIST idx .gz files; by default the Debian "
        "package's or the Keras cache's.",
    )
    flags.DEFINE_bool("quick", False, "A smoke run: 6 epochs on 10,000 images, one seed.")
    flags.DEFINE_list("model", list(DEFAULTS.models), "cnn, cnn_bn, or both.")
    flags.DEFINE_list(
        "batch_sizes",
        [],
        "Fixed batch sizes for every model (e.g. 128,4096,8192); by default 128 and "
        "--noise_multiples times each model's measured noise scale.",
    )
    flags.DEFINE_list(
        "noise_multiples",
        [f"{k:g}" for k in DEFAULTS.noise_multiples],
        "Where the grid's batches go, in multiples of the model's noise scale.",
    )
    flags.DEFINE_list(
        "noise_batch_sizes",
        [str(b) for b in DEFAULTS.noise_batch_sizes],
        "The small and the big batch whose gradient norms give the noise scale.",
    )
    flags.DEFINE_integer("epochs", None, f"Epochs per run (default {DEFAULTS.epochs}).")
    flags.DEFINE_integer("warmup_epochs", None, f"Warm-up (default {DEFAULTS.warmup_epochs}).")
    flags.DEFINE_integer("seeds", None, f"Seeds per configuration (default {DEFAULTS.seeds}).")
    flags.DEFINE_float("momentum", DEFAULTS.momentum, "Momentum of every optimizer.")
    flags.DEFINE_float("weight_decay", DEFAULTS.weight_decay, "Coupled L2 of every optimizer.")
    flags.DEFINE_float("sgd_base_lr", DEFAULTS.sgd_base_lr, "SGD's rate at batch 128.")
    flags.DEFINE_list(
        "sgd_sweep",
        [f"{k:g}" for k in DEFAULTS.sgd_sweep],
        "Multiples of the linear-scaled SGD rate; the first must be 1.",
    )
    flags.DEFINE_list(
        "lars_lrs",
        None,
        f"LARS global rates at batch >= 4096 (default {','.join(map(str, DEFAULTS.lars_lrs))}).",
    )
    flags.DEFINE_float("trust_coefficient", DEFAULTS.trust_coefficient, "LARS's η.")
    flags.DEFINE_integer(
        "validation_examples", DEFAULTS.validation_examples, "Held out to choose rates."
    )
    flags.DEFINE_integer(
        "train_examples",
        None,
        f"Train on the first N images (default {DEFAULTS.train_examples}; 0: all 55,000).",
    )
    flags.DEFINE_integer("test_examples", None, "Test on this many images (default all).")
    flags.DEFINE_float(
        "sgd_failure_gap",
        study_config.Thresholds.sgd_failure_gap,
        "Points below the smallest batch at which linear-scaled SGD counts as failed.",
    )
    flags.DEFINE_list(
        "lars_regime_gaps",
        [f"{g:g}" for g in study_config.Thresholds.regime_gaps],
        "Allowed LARS shortfall in points up to --paper_regime times the noise scale, and past it.",
    )
    flags.DEFINE_float(
        "paper_regime",
        study_config.Thresholds.paper_regime,
        "Multiple of the noise scale up to which the paper made its claim.",
    )
    flags.DEFINE_string(
        "lars_gaps",
        "",
        "Allowed LARS shortfall in points at given batches (4096:4,8192:7) or multiples of "
        "the noise scale (1x:4,4x:7), instead of the rule of --lars_regime_gaps.",
    )
    flags.DEFINE_bool(
        "resume",
        True,
        "Reuse the runs an interrupted study saved in <out_dir>/completed "
        "(--noresume retrains them all).",
    )


def settings_from_flags():
    """StudyConfig and Thresholds from the flags; ValueError naming the bad one."""
    overrides = dict(study_config.QUICK) if FLAGS.quick else {}
    try:
        overrides.update(
            models=tuple(FLAGS.model),
            batch_sizes=tuple(int(b) for b in FLAGS.batch_sizes),
            noise_multiples=tuple(float(k) for k in FLAGS.noise_multiples),
            noise_batch_sizes=tuple(int(b) for b in FLAGS.noise_batch_sizes),
            momentum=FLAGS.momentum,
            weight_decay=FLAGS.weight_decay,
            sgd_base_lr=FLAGS.sgd_base_lr,
            sgd_sweep=tuple(float(k) for k in FLAGS.sgd_sweep),
            trust_coefficient=FLAGS.trust_coefficient,
            validation_examples=FLAGS.validation_examples,
        )
        optional = dict(
            epochs=FLAGS.epochs,
            warmup_epochs=FLAGS.warmup_epochs,
            seeds=FLAGS.seeds,
            train_examples=FLAGS.train_examples,
            test_examples=FLAGS.test_examples,
        )
        if FLAGS.lars_lrs:
            optional["lars_lrs"] = tuple(float(r) for r in FLAGS.lars_lrs)
        regime_gaps = tuple(float(g) for g in FLAGS.lars_regime_gaps)
    except ValueError as error:
        raise ValueError(f"A list flag holds something that is not a number: {error}") from None
    overrides.update({k: v for k, v in optional.items() if v is not None})
    config = study_config.StudyConfig(**overrides)
    thresholds = study_config.Thresholds(
        sgd_failure_gap=FLAGS.sgd_failure_gap,
        regime_gaps=regime_gaps,
        paper_regime=FLAGS.paper_regime,
        lars_gaps=study_config.parse_gaps(FLAGS.lars_gaps),
    )
    return config, thresholds


def main(argv):
    """Checks the flags, the data and --out_dir (a mistake is one line and
    exit status 1, before any training), then runs the study."""
    if len(argv) > 1:
        return _error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config, thresholds = settings_from_flags()
    except ValueError as error:
        return _error(f"{error} (see --help)")
    from . import experiment
    from . import fashion_mnist

    try:
        experiment.check_backend()
        experiment.check_out_dir(FLAGS.out_dir)
        dataset = fashion_mnist.load(FLAGS.data_dir)
        experiment.check_data(config, dataset)
    except (OSError, ValueError) as error:
        return _error(str(error))
    models = len(config.models)
    if config.batch_sizes:
        runs = f"{len(study_config.plan_sweep(config))} runs on seed 0"
    else:
        runs = "seed 0's runs at the batch sizes it places"
    if config.seeds > 1:
        runs += f", then the rates they choose on {config.seeds - 1} more seed(s)"
    print(f"Data: {dataset.source}; {models} noise-scale run(s), then {runs} -> {FLAGS.out_dir}")
    print("Settings:", dataclasses.asdict(config))
    command = " ".join(["python -m recipes.large_batch_study", *sys.argv[1:]])
    experiment.run_study(
        config, dataset, FLAGS.out_dir, thresholds, resume=FLAGS.resume, command=command
    )
    return 0


def _error(message):
    print(f"large_batch_study: error: {message}", file=sys.stderr)
    return 1
