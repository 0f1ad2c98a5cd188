"""The large-batch study: data loading, the claim checker, an end-to-end run."""

import csv
import dataclasses
import gzip
import math

import keras
import numpy as np
import pytest

from recipes import fashion_mnist
from recipes import large_batch_study as study

NAN = math.nan


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path):
    """A tiny Fashion-MNIST in the original idx format: learnable classes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 600), ("t10k", 200)):
        labels = rng.integers(0, 10, size=n)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, label in enumerate(labels):  # class k lights up row band k
            images[i, 2 * label : 2 * label + 3, :] = 250
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images, 2051)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    return tmp_path


def test_loads_idx_files(fashion_dir):
    data = fashion_mnist.load(str(fashion_dir))
    assert data.x_train.shape == (600, 28, 28, 1) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (200, 28, 28, 1)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.y_train.dtype == np.int32 and set(data.y_train) <= set(range(10))
    assert str(fashion_dir) in data.source


def test_missing_and_corrupt_files_are_named(fashion_dir):
    (fashion_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        fashion_mnist.load(str(fashion_dir))
    with gzip.open(fashion_dir / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x09junk")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        fashion_mnist.load(str(fashion_dir))


def summary_of(linear, sgd_best, lars_best):
    """Builds a summary from {batch: accuracy} per line (rate 1.0 everywhere)."""
    return {
        line: {b: (a, 1.0) for b, a in values.items()}
        for line, values in zip(study.LINES, (linear, sgd_best, lars_best))
    }


BASE = {128: 90.0}


@pytest.mark.parametrize(
    "linear,sgd_best,lars_best,expected",
    [
        # The paper's picture: every part holds.
        (
            {4096: 70.0, 8192: NAN},
            {4096: 84.0, 8192: 80.0},
            {4096: 87.0, 8192: 84.0},
            [True, True, True, True, True, True],
        ),
        # Linear SGD only 5 points down at 4K; LARS 5 points down at 4K.
        (
            {4096: 85.0, 8192: 60.0},
            {4096: 86.0, 8192: 80.0},
            {4096: 85.0, 8192: 83.5},
            [False, True, False, True, False, True],
        ),
        # LARS diverged at 8K; SGD's sweep beat LARS at 4K.
        (
            {4096: NAN, 8192: NAN},
            {4096: 88.0, 8192: NAN},
            {4096: 87.0, 8192: NAN},
            [True, True, True, False, False, False],
        ),
    ],
)
def test_claim_checker(linear, sgd_best, lars_best, expected):
    summary = summary_of({**BASE, **linear}, {**BASE, **sgd_best}, {**BASE, **lars_best})
    claims = study.check_claims(summary)
    assert [c.held for c in claims] == expected, [(c.statement, c.detail) for c in claims]


def test_claim_thresholds_are_arguments():
    summary = summary_of(
        {**BASE, 4096: 85.0, 8192: 85.0},
        {**BASE, 4096: 85.0, 8192: 85.0},
        {**BASE, 4096: 86.0, 8192: 86.0},
    )
    strict = study.check_claims(summary)
    lenient = study.check_claims(summary, study.Thresholds(sgd_failure_gap=5.0))
    assert [c.held for c in strict[:2]] == [False, False]
    assert [c.held for c in lenient[:2]] == [True, True]


def test_missing_batch_size_is_not_tested():
    claims = study.check_claims(summary_of(BASE, BASE, BASE))
    assert [c.held for c in claims] == [None] * 6


def row(optimizer, batch, lr, seed, val, test, linear=False):
    return dict(
        optimizer=optimizer,
        batch_size=batch,
        learning_rate=lr,
        linear_scaled=linear,
        seed=seed,
        val_accuracy=val,
        test_accuracy=test,
    )


def test_summarize_selects_on_validation_and_averages_seeds():
    rows = [
        row("sgd", 64, 0.8, 0, NAN, NAN, linear=True),
        row("sgd", 64, 0.2, 0, 0.80, 0.70),
        row("sgd", 64, 0.2, 1, 0.90, 0.80),
        row("sgd", 64, 0.05, 0, 0.84, 0.95),
        row("sgd", 64, 0.05, 1, 0.84, 0.95),
        row("lars", 64, 1.0, 0, 0.9, 0.9),
        row("lars", 64, 1.0, 1, NAN, NAN),
        row("lars", 64, 3.0, 0, 0.5, 0.6),
        row("lars", 64, 3.0, 1, 0.7, 0.6),
    ]
    summary = study.summarize(rows, [64])
    assert math.isnan(summary[study.SGD_LINEAR][64][0])
    # 0.2 has the better mean validation accuracy (0.85 > 0.84), though 0.05
    # tests better: selection must not look at the test set.
    assert summary[study.SGD_BEST][64] == pytest.approx((75.0, 0.2))
    # A rate that diverged in one seed counts as diverged.
    assert summary[study.LARS_BEST][64] == pytest.approx((60.0, 3.0))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the study records gradients with tf.GradientTape",
)
def test_end_to_end_on_a_tiny_set(fashion_dir, tmp_path):
    config = study.StudyConfig(
        batch_sizes=(16, 64),
        epochs=2,
        warmup_epochs=1,
        sgd_sweep=(1.0, 0.25),
        lars_lrs=(3.0,),
        validation_examples=100,
    )
    out = tmp_path / "out"
    claims = study.run_study(
        config,
        fashion_mnist.load(str(fashion_dir)),
        str(out),
        study.Thresholds(lars_gaps=((64, 50.0),)),
    )

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(study.plan_runs(config)) == (1 + 1) + (2 + 1)
    assert {r["optimizer"] for r in rows} == {"sgd", "lars"}
    accuracies = [float(r["test_accuracy"]) for r in rows if r["diverged"] == "False"]
    assert accuracies and max(accuracies) > 0.3  # the bands are learnable
    summary = (out / "summary.md").read_text()
    assert "| method | B=16 | B=64 |" in summary and study.LARS_BEST in summary
    assert "## The claim, part by part" in summary
    assert len(claims) == 3 and all(c.held is not None for c in claims)
    for name in ("accuracy_vs_batch.png", "trust_ratios.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(batch_sizes=()), "batch_sizes"),
        (dict(batch_sizes=(128, 0)), "batch_sizes"),
        (dict(epochs=0), "epochs"),
        (dict(seeds=0), "seeds"),
        (dict(epochs=2, warmup_epochs=2), "warmup_epochs"),
        (dict(sgd_sweep=(0.5, 1.0)), "sgd_sweep"),
        (dict(sgd_sweep=(1.0, 1.0)), "sgd_sweep"),
        (dict(lars_lrs=()), "lars_lrs"),
        (dict(lars_lrs=(-1.0,)), "lars_lrs"),
    ],
)
def test_bad_study_settings_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        study.StudyConfig(**kwargs)


class FakeTraining:
    """Stands in for `study.train`: a result made from the run, and a count.
    `fail_after` calls, it raises KeyboardInterrupt as a user's Ctrl-C would."""

    def __init__(self, fail_after=None):
        self.trained, self.fail_after = [], fail_after

    def __call__(self, run, data, config, bar, record_trust_ratios):
        if self.fail_after is not None and len(self.trained) == self.fail_after:
            raise KeyboardInterrupt
        self.trained.append(run)
        bar.update(config.epochs)
        accuracy = 0.5 + run.learning_rate / 100 + run.seed / 1000
        result = row(run.optimizer, run.batch_size, run.learning_rate, run.seed, accuracy, accuracy)
        result["linear_scaled"] = run.linear_scaled
        if not record_trust_ratios:
            return result, None
        return result, dict(steps=[0, 1], ratios={"fc1": [1.0, 2.0]}, steps_per_epoch=1)


def test_an_interrupted_study_resumes_without_retraining(fashion_dir, tmp_path, monkeypatch):
    config = study.StudyConfig(
        batch_sizes=(16, 64), epochs=2, warmup_epochs=1, lars_lrs=(1.0, 2.0), seeds=2
    )
    runs = study.plan_runs(config)
    dataset = fashion_mnist.load(str(fashion_dir))
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    monkeypatch.setattr(study, "train", FakeTraining())
    study.run_study(config, dataset, str(uninterrupted))

    first = FakeTraining(fail_after=3)
    monkeypatch.setattr(study, "train", first)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(config, dataset, str(interrupted))
    second = FakeTraining()
    monkeypatch.setattr(study, "train", second)
    study.run_study(config, dataset, str(interrupted))

    # Every run trained exactly once across the two starts, in plan order.
    assert first.trained + second.trained == runs
    assert (interrupted / "results.csv").read_text() == (uninterrupted / "results.csv").read_text()
    assert f"3 of {len(runs)} runs resumed" in (interrupted / "summary.md").read_text()
    assert not list((interrupted / "completed").glob("*.tmp"))

    # Saved runs count only for the same settings; --noresume retrains all.
    other_settings = FakeTraining()
    monkeypatch.setattr(study, "train", other_settings)
    study.run_study(dataclasses.replace(config, epochs=3), dataset, str(interrupted))
    assert other_settings.trained == runs
    fresh = FakeTraining()
    monkeypatch.setattr(study, "train", fresh)
    study.run_study(config, dataset, str(uninterrupted), resume=False)
    assert fresh.trained == runs
