"""The end of `python -m sweep.run`: the report's answer and a compact table, read back from the same records.

It goes through the report's own pipeline (records -> analysis), so the
terminal and the report cannot disagree. Every line fits 100 columns.
"""

import textwrap
from collections.abc import Sequence

from tabulate import tabulate

from sweep.errors import ConfigError
from sweep.report.confidence import BETTER, WORSE
from sweep.report.headline import WIDTH, answer
from sweep.report.records import Sources, load
from sweep.report.summary import BASELINE, Comparison, StrategySummary, comparisons, distinct, drift_verdict

SHORT_VERDICTS = {BETTER: "better", WORSE: "worse"}
NOT_DETECTED = "no diff."
HEADERS = ["strategy", "n", "accuracy", "vs baseline", "verdict", "step", "frozen"]
LEGEND = (f"n: finished repeats; accuracy: their mean test accuracy ±95% CI; vs baseline: paired difference to "
          f"{BASELINE} ±95% CI, verdict by paired t-test ({NOT_DETECTED} = no detectable difference at this "
          f"budget); step: side-by-side step time over {BASELINE}'s, median [interquartile range], ! = its "
          "spread crosses 1.0; frozen: weights / norm statistics stayed frozen, over the repeats.")
FIRST_COLUMN = 22  # longer strategy (or strategy and grid point) names wrap, so rows stay within 100 columns


def _plus_minus(value: float | None, half_width: float | None, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec) + (f" ±{half_width:.3f}" if half_width is not None else "")


def _frozen(summary: StrategySummary) -> str:
    confirmation = summary.confirmation
    frozen = confirmation.median("frozen_params")

    def short(metric: str) -> str:
        verdict = drift_verdict(confirmation.largest(metric), frozen)
        return {"stayed frozen": "yes", "nothing frozen": "n/a", "not measured": "-"}.get(verdict, "MOVED")

    return f"{short('frozen_weight_drift')} / {short('frozen_buffer_drift')}" if confirmation.runs else "-"


def _row(summary: StrategySummary) -> list[str]:
    confirmation, difference = summary.confirmation, summary.vs_baseline
    estimate = confirmation.accuracy
    side_by_side = confirmation.side_by_side
    step = "-" if side_by_side is None else "1 (baseline)" if summary.strategy == BASELINE else (
        f"{side_by_side.ratio.median:.2f} [{side_by_side.ratio.q1:.2f},{side_by_side.ratio.q3:.2f}]"
        + "!" * side_by_side.ratio.crosses(1.0))
    return [summary.label, str(len(confirmation.runs)),
            _plus_minus(estimate.mean if estimate else None, estimate.margin if estimate else None, ".3f"),
            _plus_minus(difference.difference.mean if difference else None,
                        difference.difference.margin if difference else None, "+.3f"),
            SHORT_VERDICTS.get(difference.verdict, NOT_DETECTED) if difference else "-",
            step, _frozen(summary)]


def table(found: Sequence[Comparison]) -> str:
    rows = [_row(s) for s in distinct(s for c in found for s in c.summaries)]
    return tabulate(rows, headers=HEADERS, tablefmt="simple", maxcolwidths=[FIRST_COLUMN] + [None] * (len(HEADERS) - 1))


def end_of_run(sources: Sources, experiment: str, lr_split: str) -> str:
    """The answer for this experiment and lr split, then one row per strategy; or why there is none yet."""
    try:
        records = load(sources, [experiment])
    except ConfigError as err:
        return f"No answer yet: {err}"
    found = [c for c in comparisons(records) if c.lr_split == lr_split]
    title = f"{experiment!r}, lr split {lr_split!r}"
    lines = answer(title, distinct(s for c in found for s in c.summaries)).lines()
    wrapped = [part for line in lines for part in textwrap.wrap(line, WIDTH, subsequent_indent="         ")]
    return "\n".join([*wrapped, "", table(found), *textwrap.wrap(LEGEND, WIDTH)])
