"""The gradient noise scale and the batch sizes it places (plain Python: no
Keras, no NumPy).

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training",
appendix A): a batch of B examples gives a gradient G_B whose squared norm has
expectation |G|² + tr(Σ)/B, with G the true gradient and Σ the covariance of
one example's gradient. Two batch sizes B_small < B_big give unbiased
estimates of both terms,

    |G|²  ≈ (B_big·|G_big|² − B_small·|G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

and the simple noise scale B_simple = tr(Σ)/|G|² is where the batch stops
paying for itself: below it, doubling the batch nearly halves the steps
needed; well above it, it barely helps. The ratio of two unbiased estimates
is not unbiased, so each squared norm is averaged over several batches first.
"""

import dataclasses
import math
import statistics


@dataclasses.dataclass(frozen=True)
class NoiseEstimate:
    gradient_sq: float  # |G|², the true gradient's squared norm
    trace: float  # tr(Σ), one example's gradient variance summed over parameters
    small_batch: int
    big_batch: int

    @property
    def simple(self):
        """B_simple = tr(Σ)/|G|²; infinite where the |G|² estimate is not
        positive (the mean gradient lost in the noise even at the big batch:
        the noise scale is beyond what it resolves)."""
        if not self.gradient_sq > 0:
            return math.inf
        return self.trace / self.gradient_sq


def estimate(small_sq_norms, big_sq_norms, small_batch, big_batch):
    """A `NoiseEstimate` from the squared gradient norms of several batches
    of `small_batch` and of `big_batch` examples (each list averaged first)."""
    if not 0 < small_batch < big_batch:
        raise ValueError(
            "`small_batch` and `big_batch` must satisfy 0 < small_batch < big_batch. "
            f"Received: small_batch={small_batch}, big_batch={big_batch}"
        )
    if not small_sq_norms or not big_sq_norms:
        raise ValueError("Need at least one squared norm at each batch size.")
    small, big = statistics.fmean(small_sq_norms), statistics.fmean(big_sq_norms)
    gradient_sq = (big_batch * big - small_batch * small) / (big_batch - small_batch)
    trace = (small - big) / (1 / small_batch - 1 / big_batch)
    return NoiseEstimate(gradient_sq, trace, small_batch, big_batch)


def by_epoch(record):
    """[(epoch, NoiseEstimate)] from a probe's record (`training.NoiseScaleProbe`):
    epoch 0 from the draws before the first step, epoch e from those during
    it (steps after (e-1)·steps_per_epoch, up to e·steps_per_epoch)."""
    groups = {}
    per_epoch = record["steps_per_epoch"]
    for step, small, big in zip(record["steps"], record["small_sq_norms"], record["big_sq_norms"]):
        epoch = math.ceil(step / per_epoch)
        groups.setdefault(epoch, ([], []))
        groups[epoch][0].append(small)
        groups[epoch][1].append(big)
    return [
        (epoch, estimate(small, big, record["small_batch"], record["big_batch"]))
        for epoch, (small, big) in sorted(groups.items())
    ]


def over_training(estimates):
    """The noise scale a run trained at: the median of its epochs' B_simple
    (epoch 0, before any step, left out). The median, because the two ends
    mislead: the first epochs' fast-falling loss keeps it low, and as the
    rate decays to zero |G|² at the iterate vanishes and it grows without
    bound."""
    values = [e.simple for epoch, e in estimates if epoch > 0]
    if not values:
        raise ValueError("No noise-scale estimate after the first step.")
    return statistics.median(values)


BATCH_GRANULE = 16  # placed batches are multiples of this (whole replicas of 8 or 16)


def place_batches(noise_scale, multiples):
    """{multiple: batch}: each multiple of the noise scale, the noise scale
    first rounded to a multiple of BATCH_GRANULE so that the batches keep the
    multiples' ratios (noise scale 354, multiples 1, 4, 16 -> 352, 1408, 5632).
    The rounding moves the noise scale by at most 8 examples, under 3% of a
    noise scale above 270: the multiples stay the real ones."""
    if not (math.isfinite(noise_scale) and noise_scale > 0):
        raise ValueError(
            f"Cannot place batch sizes: the measured noise scale is {noise_scale}. "
            "Raise the big batch of --noise_batch_sizes, or fix the grid with --batch_sizes."
        )
    unit = max(1, round(noise_scale / BATCH_GRANULE)) * BATCH_GRANULE
    return {k: max(1, round(k * unit)) for k in multiples}
