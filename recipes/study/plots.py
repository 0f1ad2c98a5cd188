"""The study's two figures (matplotlib's file-only Agg backend)."""

import math

import numpy as np

from . import fashion_mnist
from .claims import LINES

CHANCE = 100.0 / fashion_mnist.NUM_CLASSES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; chosen here, not on import
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(path, summaries, batch_sizes):
    """Test accuracy against batch size (log2 axis), mean ± std over seeds,
    one panel per model."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(summaries), figsize=(7 * len(summaries), 4.5), squeeze=False, sharey=True
    )
    for ax, (model, summary) in zip(axes[0], summaries.items()):
        for line, marker in zip(LINES, "os^"):
            cells = [(b, summary[line][b]) for b in batch_sizes if b in summary[line]]
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
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.set_xlabel("batch size (log2 scale)")
        ax.set_ylabel("test accuracy (%), mean ± std over seeds")
        ax.set_title(f"{model}: fixed epochs, accuracy against batch size")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trust_ratios(path, records):
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
