"""From result rows to the table and the claim's verdicts: no Keras, no
matplotlib, so it is quick to test and to read."""

import collections
import dataclasses
import itertools
import math
import statistics

from .config import SELECTION_SEED
from .config import Grid
from .config import NoiseMultiple
from .config import Thresholds

SGD_LINEAR = "SGD + linear scaling"
SGD_BEST = "SGD, best of sweep"
LARS_BEST = "LARS, best of sweep"
LINES = (SGD_LINEAR, SGD_BEST, LARS_BEST)


class Cell(collections.namedtuple("Cell", "mean std learning_rate seeds")):
    """Test accuracy in points over `seeds` seeds (mean NaN if any seed
    diverged; std NaN with one seed) at the rate chosen on validation."""


SGD_FAILS = "linear-scaled SGD fails"
LARS_WITHIN = "LARS ends close to the reference"
LARS_BEATS_SGD = "LARS beats the best SGD"


@dataclasses.dataclass
class Claim:
    statement: str
    held: bool | None  # None: not tested (a batch size or model was left out)
    detail: str
    part: str = ""  # SGD_FAILS, LARS_WITHIN or LARS_BEATS_SGD
    multiple: float = math.nan  # where it was checked, in noise scales (NaN: unknown)
    gap: float = math.nan  # the line's points below the reference (NaN: diverged, not run)
    allowance: float | None = None  # LARS_WITHIN: the shortfall allowed


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where the claim is checked: a batch of the grid and its allowance."""

    key: str  # "4x" or "4096": the same place in two models' grids
    where: str  # "4× the noise scale (batch 1408)", "batch 4096 (11.6× the noise scale)"
    batch: int | None  # None: not run, for `missing`
    allowance: float | None  # LARS's allowed shortfall; None: no rule applies
    multiple: float = math.nan
    missing: str = "batch size not run"


def checkpoints(grid, thresholds=None):
    """The `Checkpoint`s of one model's `Grid`: each batch above the
    reference (each placed multiple, for a placed grid), its allowance by
    `thresholds.allowance` of its multiple; or, when `thresholds.lars_gaps`
    is given, just its keys and allowances."""
    thresholds = thresholds or Thresholds()
    if thresholds.lars_gaps:
        return [_explicit(grid, key, gap) for key, gap in thresholds.lars_gaps]
    if grid.placed:
        return [
            Checkpoint(
                f"{k:g}x",
                _multiple_where(k, batch),
                batch,
                thresholds.allowance(k),
                k,
                missing=f"left out: {why}",
            )
            for k, batch, why in grid.placed
        ]
    return [
        Checkpoint(
            str(batch),
            _batch_where(batch, grid.multiple(batch)),
            batch,
            thresholds.allowance(grid.multiple(batch)),
            grid.multiple(batch),
        )
        for batch in grid.batch_sizes[1:]
    ]


def _explicit(grid, key, gap):
    if isinstance(key, NoiseMultiple):
        batch = grid.batch_at(key.k)
        missing = "batch size not run"
        if not grid.placed:
            missing = "the grid is fixed (--batch_sizes): no batch was placed by the noise scale"
        elif batch is None:
            missing = next(
                (f"left out: {why}" for k, b, why in grid.placed if k == key.k and why),
                f"{key} is not in --noise_multiples",
            )
        return Checkpoint(str(key), _multiple_where(key.k, batch), batch, gap, key.k, missing)
    return Checkpoint(str(key), _batch_where(key, grid.multiple(key)), key, gap, grid.multiple(key))


def _multiple_where(k, batch):
    return f"{k:g}× the noise scale" + (f" (batch {batch})" if batch else "")


def _batch_where(batch, multiple):
    if not math.isfinite(multiple):
        return f"batch {batch}"
    return f"batch {batch} ({multiple:.1f}× the noise scale)"


def chosen_rates(rows):
    """{(optimizer, batch): rate} for one model's rows: each swept line's
    rate with the best validation accuracy on the selection seed (seed 0),
    None where every rate diverged there."""
    lines = {}
    for r in rows:
        if r["seed"] == SELECTION_SEED:
            lines.setdefault((r["optimizer"], r["batch_size"]), []).append(r)
    chosen = {}
    for line, runs in lines.items():
        finite = [r for r in runs if not math.isnan(r["val_accuracy"])]
        best = max(finite, key=lambda r: r["val_accuracy"], default=None)
        chosen[line] = best and best["learning_rate"]
    return chosen


def summarize(rows, batch_sizes):
    """{line: {batch: Cell}} for one model's rows: test accuracy, mean and
    standard deviation over the seeds, at the rate `chosen_rates` takes.

    A configuration that diverged in any seed counts as diverged; a line
    whose every rate diverged on the selection seed shows its first rate.
    """
    configs = {}
    for r in rows:
        key = (r["optimizer"], r["batch_size"], r["learning_rate"], r["linear_scaled"])
        configs.setdefault(key, []).append(r)
    chosen = chosen_rates(rows)
    summary = {line: {} for line in LINES}
    for (optimizer, batch, lr, linear), runs in configs.items():
        if batch not in batch_sizes:
            continue
        cell = Cell(*_mean_and_std([r["test_accuracy"] for r in runs]), lr, len(runs))
        if linear:
            summary[SGD_LINEAR][batch] = cell
        line = SGD_BEST if optimizer == "sgd" else LARS_BEST
        rate = chosen.get((optimizer, batch))
        if rate == lr:
            summary[line][batch] = cell
        elif rate is None and batch not in summary[line]:
            summary[line][batch] = cell._replace(mean=math.nan)
    return summary


def _mean(values):
    return math.nan if any(math.isnan(v) for v in values) else statistics.fmean(values)


def _mean_and_std(values):
    """In points; NaN if any is NaN; std NaN for a single value."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    points = [100 * v for v in values]
    std = statistics.stdev(points) if len(points) > 1 else math.nan
    return statistics.fmean(points), std


def _accuracy(summary, line, batch):
    cell = summary[line].get(batch)
    return None if cell is None else cell.mean


def check_claims(summary, grid=None, thresholds=None):
    """Each part of the paper's claim at each `checkpoints(grid, thresholds)`,
    and whether it held on these results (`grid` default: the batches of
    `summary`, noise scale unknown; `thresholds` default: `Thresholds()`)."""
    thresholds = thresholds or Thresholds()
    grid = grid or Grid(tuple(sorted(summary[SGD_LINEAR])))
    baseline_batch = min(summary[SGD_LINEAR])
    baseline = summary[SGD_LINEAR][baseline_batch].mean
    places = checkpoints(grid, thresholds)

    def judged(statement, part, place, line, held_if_diverged, held):
        accuracy = None if place.batch is None else _accuracy(summary, line, place.batch)
        claim = Claim(statement, None, place.missing, part, place.multiple)
        if part == LARS_WITHIN:
            claim.allowance = place.allowance
        if accuracy is None:
            return claim
        claim.gap = baseline - accuracy
        if math.isnan(accuracy):
            claim.held, claim.detail = held_if_diverged, "diverged"
        elif held is None:
            claim.detail = _gap_detail(accuracy, baseline) + "; no allowance without a noise scale"
        else:
            claim.held, claim.detail = held(claim.gap), _gap_detail(accuracy, baseline)
        return claim

    claims = []
    for place in places:
        claims.append(
            judged(
                f"Linear-scaled SGD fails at {place.where} (diverges, or ends "
                f">= {thresholds.sgd_failure_gap:g} points below batch {baseline_batch})",
                SGD_FAILS,
                place,
                SGD_LINEAR,
                held_if_diverged=True,
                held=lambda gap: gap >= thresholds.sgd_failure_gap,
            )
        )
    for place in places:
        allowed = place.allowance
        within = "close to" if allowed is None else f"within {allowed:g} points of"
        claims.append(
            judged(
                f"LARS ends {within} batch {baseline_batch} at {place.where}",
                LARS_WITHIN,
                place,
                LARS_BEST,
                held_if_diverged=False,
                held=None if allowed is None else lambda gap, allowed=allowed: gap <= allowed,
            )
        )
    for place in places:
        statement = f"LARS beats the best SGD of the sweep at {place.where}"
        claim = Claim(statement, None, place.missing, LARS_BEATS_SGD, place.multiple)
        if place.batch is not None:
            lars = _accuracy(summary, LARS_BEST, place.batch)
            sgd = _accuracy(summary, SGD_BEST, place.batch)
            if lars is not None and sgd is not None:
                claim.held = not math.isnan(lars) and (math.isnan(sgd) or lars > sgd)
                claim.gap = baseline - lars
                claim.detail = f"LARS {_cell(lars)} vs SGD {_cell(sgd)}"
        claims.append(claim)
    return claims


def headline(claims):
    """The verdicts in one sentence, by multiple of the noise scale: how far
    LARS stayed within its allowance, and from where linear-scaled SGD
    failed. None when no claim was checked at a known multiple."""

    def tested(part):
        return sorted(
            (c for c in claims if c.part == part and c.held is not None and _known(c.multiple)),
            key=lambda c: c.multiple,
        )

    lars, sgd = tested(LARS_WITHIN), tested(SGD_FAILS)
    if not lars and not sgd:
        return None
    sentences = []
    if lars:
        held = list(itertools.takewhile(lambda c: c.held, lars))
        if held:
            worst = max(held, key=lambda c: c.gap)
            sentence = (
                f"LARS stayed within its allowance up to {_times(held[-1].multiple)} the noise "
                f"scale (at worst {_shortfall(worst)} at {_times(worst.multiple)})"
            )
            if len(held) < len(lars):
                sentence += f", not at {_missed(lars[len(held)])}"
        else:
            sentence = (
                f"LARS missed its allowance from the first multiple tested, {_missed(lars[0])}"
            )
        sentences.append(sentence)
    if sgd:
        failing = list(itertools.takewhile(lambda c: c.held, reversed(sgd)))
        if len(failing) == len(sgd):
            sentences.append(
                f"linear-scaled SGD failed at every multiple tested, from {_times(sgd[0].multiple)}"
            )
        elif failing:
            sentences.append(f"linear-scaled SGD failed from {_times(failing[-1].multiple)} on")
        else:
            sentences.append(
                f"linear-scaled SGD did not fail at {_times(sgd[-1].multiple)}, the largest tested"
            )
    text = "; ".join(sentences)
    return text[0].upper() + text[1:] + "."


def _known(multiple):
    return math.isfinite(multiple)


def _shortfall(claim):
    if math.isnan(claim.gap):
        return "diverged"
    side = "below" if claim.gap >= 0 else "above"
    return f"{abs(claim.gap):.1f} points {side} the reference"


def _missed(claim):
    allowed = "" if claim.allowance is None else f", {claim.allowance:g} allowed"
    return f"{_times(claim.multiple)} ({_shortfall(claim)}{allowed})"


def _times(multiple):
    return f"{multiple:.3g}×"


def compare_batch_norm(summaries, grids=None, thresholds=None):
    """Whether LARS holds accuracy better with batch norm: at each checkpoint
    both models share (the same batch, or the same multiple of each model's
    own noise scale), is its shortfall from the model's own reference SGD
    smaller for cnn_bn than for cnn? Not tested unless both models ran."""
    thresholds = thresholds or Thresholds()
    grids = grids or {
        model: Grid(tuple(sorted(summary[SGD_LINEAR]))) for model, summary in summaries.items()
    }
    places = {model: checkpoints(grid, thresholds) for model, grid in grids.items()}
    keys = [p.key for p in places.get("cnn", places[next(iter(places))])]
    claims = []
    for key in keys:
        where = {m: next((p for p in ps if p.key == key), None) for m, ps in places.items()}
        first = next(p for p in where.values() if p)
        by_multiple = first.key.endswith("x")
        label = _multiple_where(first.multiple, None) if by_multiple else f"batch {key}"
        statement = (
            f"With batch norm LARS ends closer to the smallest batch at {label} than without"
        )
        if not {"cnn", "cnn_bn"} <= set(summaries):
            claims.append(Claim(statement, None, "run with --model=cnn,cnn_bn to test it"))
            continue
        gaps = {}
        for model in ("cnn", "cnn_bn"):
            summary, place = summaries[model], where[model]
            reference = summary[SGD_LINEAR][min(summary[SGD_LINEAR])].mean
            lars = (
                None
                if not place or place.batch is None
                else _accuracy(summary, LARS_BEST, place.batch)
            )
            gaps[model] = None if lars is None else reference - lars
        if None in gaps.values():
            claims.append(Claim(statement, None, "batch size not run for both models"))
            continue
        if any(math.isnan(g) for g in gaps.values()):
            held = math.isnan(gaps["cnn"]) and not math.isnan(gaps["cnn_bn"])
        else:
            held = gaps["cnn_bn"] < gaps["cnn"]
        detail = f"gap {_points(gaps['cnn_bn'])} with BN, {_points(gaps['cnn'])} without"
        if by_multiple:
            detail += f" (batch {where['cnn_bn'].batch} and {where['cnn'].batch})"
        claims.append(Claim(statement, held, detail))
    return claims


def _points(gap):
    return "diverged" if math.isnan(gap) else f"{gap:.1f} points"


def _gap_detail(accuracy, baseline):
    gap = baseline - accuracy
    side = "below" if gap >= 0 else "above"
    return f"{accuracy:.1f}% vs {baseline:.1f}%: {abs(gap):.1f} points {side}"


def _cell(accuracy):
    return "diverged" if math.isnan(accuracy) else f"{accuracy:.1f}%"


def format_cell(cell):
    """ "85.4 ± 0.6% (lr 48)", "diverged (lr 3.2)" or "—"."""
    if cell is None:
        return "—"
    if math.isnan(cell.mean):
        return f"diverged (lr {cell.learning_rate:g})"
    spread = "" if math.isnan(cell.std) else f" ± {cell.std:.1f}"
    return f"{cell.mean:.1f}{spread}% (lr {cell.learning_rate:g})"


def markdown_table(summary, batch_sizes, grid=None):
    """The three lines at each batch; with a `grid` whose noise scale is
    known, each batch's multiple of it in the header."""

    def label(batch):
        if grid is None or not math.isfinite(grid.noise_scale):
            return f"B={batch}"
        return f"B={batch} ({grid.multiple(batch):.2g}×)"

    header = "| method | " + " | ".join(label(b) for b in batch_sizes) + " |"
    rule = "|---|" + "---:|" * len(batch_sizes)
    lines = [header, rule]
    for line in LINES:
        cells = [format_cell(summary[line].get(b)) for b in batch_sizes]
        lines.append(f"| {line} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
