"""The answer a reader came for, said first: which strategy and freeze setting, how accurate, at what cost.

Among the settings compared (strategies, and grid points when the sweep had a
grid) the most accurate over the confirmation runs is found; every setting whose
paired difference to it is not detectably negative (paired t-test, 95%) is good
enough, and the cheapest of those is recommended: by the side-by-side step time
when every candidate was timed in the same session, else by exact FLOPs per
step. The report opens with these lines and `python -m sweep.run` ends with them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from sweep.report.confidence import WORSE, Estimate, PairedDifference
from sweep.report.summary import BASELINE, StrategySummary, drift_verdict

WIDTH = 100  # the terminal's: every line fits


@dataclass(frozen=True)
class Cost:
    ratio: float  # to full_finetune
    basis: str  # "side-by-side step time" or "FLOPs per step"


@dataclass
class Answer:
    """The recommendation for one experiment and lr split, or why there is none."""

    title: str
    recommended: StrategySummary | None = None
    best: StrategySummary | None = None
    good_enough: int = 0  # settings not detectably worse than the best, the best included
    compared: int = 0  # settings with confirmation runs
    vs_best: PairedDifference | None = None
    cost: Cost | None = None
    baseline: StrategySummary | None = None
    missing: str = ""

    def lines(self) -> list[str]:
        if self.recommended is None:
            return [f"No answer for {self.title}: {self.missing}."]
        chosen, confirmation = self.recommended, self.recommended.confirmation
        return [f"Answer for {self.title}: {chosen.strategy}, {confirmation.setting}",
                f"  test accuracy {accuracy(confirmation.accuracy, confirmation.test_examples)}",
                f"  cost: {self._cost()}",
                f"  frozen weights: {chosen_verdict(chosen, 'frozen_weight_drift')}; "
                f"frozen norm statistics: {chosen_verdict(chosen, 'frozen_buffer_drift')}",
                *self._why()]

    def _cost(self) -> str:
        if self.recommended.strategy == BASELINE:
            return f"{BASELINE} is the baseline every cost is relative to"
        side_by_side = self.recommended.confirmation.side_by_side
        flops = flops_ratio(self.recommended, self.baseline)
        parts = [] if flops is None else [f"FLOPs {flops:.2f}x {BASELINE}"]
        if side_by_side is not None:
            ratio = side_by_side.ratio
            parts.append(f"step time {ratio.median:.2f}x (IQR {ratio.q1:.2f}-{ratio.q3:.2f}, side by side)"
                         + (", its spread crosses 1.0" if ratio.crosses(1.0) else ""))
        return "; ".join(parts) or "not recorded"

    def _why(self) -> list[str]:
        if self.recommended is self.best:
            others = self.good_enough - 1
            tail = ("every other is detectably worse" if not others else
                    f"the cheapest by {self.cost.basis} of the {self.good_enough} not detectably worse" if self.cost else
                    f"no cost recorded to prefer one of the {others} others not detectably worse")
            return [f"  why: the most accurate of {self.compared} settings compared; {tail}"]
        best, difference = self.best.confirmation, self.vs_best.difference
        return [f"  why: the cheapest by {self.cost.basis} of the {self.good_enough} of {self.compared} settings "
                "not detectably worse than",
                f"       the most accurate, {self.best.strategy} ({best.setting}) at {best.accuracy.mean:.4f};",
                f"       difference {interval(difference)}, paired t-test"]


def accuracy(estimate: Estimate | None, test_examples: int | None) -> str:
    """`0.9611 (95% CI 0.9473-0.9749, 3 repeats; 180 test examples, one = 0.0056)`."""
    if estimate is None:
        return "not recorded"
    spread = f"95% CI {estimate.low:.4f}-{estimate.high:.4f}, " if estimate.low is not None else "no CI from "
    size = f"; {test_examples} test examples, one = {1 / test_examples:.4f}" if test_examples else ""
    return f"{estimate.mean:.4f} ({spread}{estimate.n} repeat{'s' if estimate.n != 1 else ''}{size})"


def interval(estimate: Estimate) -> str:
    """`-0.0056 (95% CI -0.0295 to +0.0184)`: signed, since it is a difference."""
    if estimate.low is None:
        return f"{estimate.mean:+.4f} (one pair: no CI)"
    return f"{estimate.mean:+.4f} (95% CI {estimate.low:+.4f} to {estimate.high:+.4f})"


def chosen_verdict(summary: StrategySummary, drift_metric: str) -> str:
    confirmation = summary.confirmation
    return drift_verdict(confirmation.largest(drift_metric), confirmation.median("frozen_params"))


def flops_ratio(summary: StrategySummary, baseline: StrategySummary | None) -> float | None:
    return summary.confirmation.flops_vs(baseline.confirmation if baseline is not None else None)


def _cost(summary: StrategySummary, baseline: StrategySummary | None, by_step_time: bool) -> Cost | None:
    if by_step_time:
        return Cost(summary.confirmation.side_by_side.ratio.median, "side-by-side step time")
    flops = flops_ratio(summary, baseline)
    return None if flops is None else Cost(flops, "FLOPs per step")


def answer(title: str, summaries: Sequence[StrategySummary]) -> Answer:
    """The recommendation among `summaries` (one experiment and lr split: every strategy and grid point)."""
    found = Answer(title)
    confirmed = [s for s in summaries if s.confirmation.runs]
    if not confirmed:
        found.missing = "no confirmation runs recorded (search.repeats); the tables below show the search alone"
        return found
    baseline = next((s for s in confirmed if s.strategy == BASELINE), None)
    best = max(confirmed, key=lambda s: s.confirmation.accuracy.mean)
    differences = {id(s): s.confirmation.versus(best.confirmation) for s in confirmed if s is not best}
    good_enough = [s for s in confirmed if s is best or (differences[id(s)] is not None
                                                        and differences[id(s)].verdict != WORSE)]
    sessions = {s.confirmation.side_by_side.session if s.confirmation.side_by_side else None for s in good_enough}
    by_step_time = None not in sessions and len(sessions) == 1
    costs = {id(s): _cost(s, baseline, by_step_time) for s in good_enough}
    costed = [s for s in good_enough if costs[id(s)] is not None]
    recommended = min(costed, key=lambda s: (costs[id(s)].ratio, -s.confirmation.accuracy.mean), default=best)
    found.recommended, found.best, found.good_enough, found.compared = recommended, best, len(good_enough), len(confirmed)
    found.vs_best, found.cost, found.baseline = differences.get(id(recommended)), costs.get(id(recommended)), baseline
    return found
