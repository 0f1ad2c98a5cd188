"""The study's three figures (matplotlib's file-only Agg backend), each
captioned with the host, software, command and date it came from."""

import math

import numpy as np

from . import fashion_mnist
from .claims import LINES
from .config import BASE_BATCH

CHANCE = 100.0 / fashion_mnist.NUM_CLASSES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; chosen here, not on import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, caption):
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.text(0.01, 0.01, caption, fontsize=7, color="0.3", wrap=True)
    fig.savefig(path, dpi=120)


def plot_accuracy(path, summaries, batch_sizes, caption=""):
    """Test accuracy against batch size (log2 axis), mean ± std over seeds,
    one panel per model, on its own batch sizes ({model: batches})."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(summaries), figsize=(7 * len(summaries), 4.5), squeeze=False, sharey=True
    )
    for ax, (model, summary) in zip(axes[0], summaries.items()):
        batches = batch_sizes[model]
        for line, marker in zip(LINES, "os^"):
            cells = [(b, summary[line][b]) for b in batches if b in summary[line]]
            xs = [b for b, _ in cells]
            ys = [CHANCE if math.isnan(c.mean) else c.mean for _, c in cells]
            errors = [0.0 if math.isnan(c.std) else c.std for _, c in cells]
            ax.errorbar(xs, ys, yerr=errors, marker=marker, capsize=3, label=line)
            for b, c in cells:
                if math.isnan(c.mean):
                    ax.annotate(
                        "diverged",
                        (b, CHANCE),
                        textcoords="offset points",
                        xytext=(0, 6),
                        ha="center",
                        fontsize=8,
                    )
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size (log2 scale)")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        ax.set_title(f"{model}: fixed epochs, accuracy against batch size")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path, caption)
    plt.close(fig)


def plot_trust_ratios(path, records, caption=""):
    """One panel per recorded LARS run: λ of each layer against epochs."""
    plt = _pyplot()
    if not records:
        records = {"no LARS run recorded": dict(steps=[], ratios={}, steps_per_epoch=1)}
    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4), squeeze=False)
    for ax, (title, record) in zip(axes[0], records.items()):
        epochs = np.array(record["steps"]) / record["steps_per_epoch"]
        for layer, ratios in record["ratios"].items():
            ax.plot(epochs[: len(ratios)], ratios, label=layer)
        if record["ratios"]:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("λ = η‖w‖ / (‖g‖ + β‖w‖)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("LARS's per-layer trust ratio, as the optimizer used it")
    _save(fig, path, caption)
    plt.close(fig)


def plot_noise_scale(path, curves, grids, caption=""):
    """B_simple against epoch (log axis), one panel per model
    ({model: [(epoch, value)]}), with the grid's batches as dashed lines
    ({model: (noise scale over training, batch sizes)}). An infinite value
    (|G|² lost in the noise) is drawn at the top edge as a triangle."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    for ax, (model, points) in zip(axes[0], curves.items()):
        scale, batches = grids[model]
        finite = [(e, v) for e, v in points if math.isfinite(v)]
        ax.plot([e for e, _ in finite], [v for _, v in finite], "o-", label="B_simple")
        top = max([v for _, v in finite] + list(batches)) * 2
        lost = [e for e, v in points if not math.isfinite(v)]
        if lost:
            ax.plot(lost, [top] * len(lost), "^", color="C3", label="|G|² lost in the noise")
        for batch in batches:
            ax.axhline(batch, color="0.5", linestyle="--", linewidth=0.8)
            ax.annotate(f"B={batch}", (0, batch), fontsize=7, color="0.3", va="bottom")
        if math.isfinite(scale):
            ax.axhline(scale, color="C1", linewidth=1.2, label=f"median {scale:,.0f}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (0: before training)")
        ax.set_ylabel("B_simple = tr(Σ) / |G|²")
        ax.set_title(f"{model}: noise scale over the batch-{BASE_BATCH} SGD run", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path, caption)
    plt.close(fig)
