"""From result rows to the table and the claim's verdicts: no Keras, no
matplotlib, so it is quick to test and to read."""

import collections
import dataclasses
import math
import statistics

from .config import Thresholds

SGD_LINEAR = "SGD + linear scaling"
SGD_BEST = "SGD, best of sweep"
LARS_BEST = "LARS, best of sweep"
LINES = (SGD_LINEAR, SGD_BEST, LARS_BEST)


class Cell(collections.namedtuple("Cell", "mean std learning_rate")):
    """Test accuracy in points over seeds (mean NaN if any seed diverged; std
    NaN with one seed) at the rate chosen on validation."""


@dataclasses.dataclass
class Claim:
    statement: str
    held: bool | None  # None: not tested (a batch size or model was left out)
    detail: str


def summarize(rows, batch_sizes):
    """{line: {batch: Cell}} for one model's rows.

    A configuration that diverged in any seed counts as diverged. Swept lines
    take the rate with the best mean validation accuracy.
    """
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
            validation = _mean([r["val_accuracy"] for r in runs])
            cell = Cell(*_mean_and_std([r["test_accuracy"] for r in runs]), lr)
            candidates[optimizer].append((validation, cell))
            if linear:
                summary[SGD_LINEAR][batch] = cell
        for line, optimizer in ((SGD_BEST, "sgd"), (LARS_BEST, "lars")):
            finite = [c for c in candidates[optimizer] if not math.isnan(c[0])]
            if finite:
                summary[line][batch] = max(finite, key=lambda c: c[0])[1]
            elif candidates[optimizer]:
                summary[line][batch] = candidates[optimizer][0][1]._replace(mean=math.nan)
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


def check_claims(summary, thresholds=None):
    """Each part of the paper's claim, and whether it held on these results
    (`thresholds` default: `Thresholds()`)."""
    thresholds = thresholds or Thresholds()
    baseline_batch = min(summary[SGD_LINEAR])
    baseline = summary[SGD_LINEAR][baseline_batch].mean

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
                _accuracy(summary, SGD_LINEAR, batch),
                held_if_diverged=True,
                held=lambda gap: gap >= thresholds.sgd_failure_gap,
            )
        )
    for batch, lars_gap in thresholds.lars_gaps:
        claims.append(
            judged(
                f"LARS ends within {lars_gap:g} points of batch {baseline_batch} at batch {batch}",
                _accuracy(summary, LARS_BEST, batch),
                held_if_diverged=False,
                held=lambda gap, allowed=lars_gap: gap <= allowed,
            )
        )
    for batch, _ in thresholds.lars_gaps:
        lars = _accuracy(summary, LARS_BEST, batch)
        sgd = _accuracy(summary, SGD_BEST, batch)
        statement = f"LARS beats the best SGD of the sweep at batch {batch}"
        if lars is None or sgd is None:
            claims.append(Claim(statement, None, "batch size not run"))
        else:
            held = not math.isnan(lars) and (math.isnan(sgd) or lars > sgd)
            claims.append(Claim(statement, held, f"LARS {_cell(lars)} vs SGD {_cell(sgd)}"))
    return claims


def compare_batch_norm(summaries, thresholds=None):
    """Whether LARS holds accuracy better with batch norm: at each gap batch,
    is its shortfall from the model's own batch-128 SGD smaller for cnn_bn
    than for cnn? Not tested unless both models ran."""
    thresholds = thresholds or Thresholds()
    claims = []
    for batch, _ in thresholds.lars_gaps:
        statement = (
            f"With batch norm LARS ends closer to the smallest batch at batch {batch} than without"
        )
        if not {"cnn", "cnn_bn"} <= set(summaries):
            claims.append(Claim(statement, None, "run with --model=cnn,cnn_bn to test it"))
            continue
        gaps = {}
        for model in ("cnn", "cnn_bn"):
            summary = summaries[model]
            reference = summary[SGD_LINEAR][min(summary[SGD_LINEAR])].mean
            lars = _accuracy(summary, LARS_BEST, batch)
            gaps[model] = None if lars is None else reference - lars
        if None in gaps.values():
            claims.append(Claim(statement, None, "batch size not run"))
            continue
        if any(math.isnan(g) for g in gaps.values()):
            held = math.isnan(gaps["cnn"]) and not math.isnan(gaps["cnn_bn"])
        else:
            held = gaps["cnn_bn"] < gaps["cnn"]
        detail = f"gap {_points(gaps['cnn_bn'])} with BN, {_points(gaps['cnn'])} without"
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


def markdown_table(summary, batch_sizes):
    header = "| method | " + " | ".join(f"B={b}" for b in batch_sizes) + " |"
    rule = "|---|" + "---:|" * len(batch_sizes)
    lines = [header, rule]
    for line in LINES:
        cells = [format_cell(summary[line].get(b)) for b in batch_sizes]
        lines.append(f"| {line} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
