"""Transfer curves: each strategy's accuracy and cost along a grid's axis (search.grid).

A grid sweep runs a study per freezing strategy and grid point. A point that
freezes nothing has no study of its own: full_finetune's study stands for it
(its parent run lists the points it stands for), so every strategy's line
starts there, as Yosinski et al.'s curves start at "nothing frozen". Each point
of a line carries its confirmation runs, so accuracies come with intervals and
points of one line are compared paired by seed with the line's most accurate.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

from sweep.grid import Grid, GridPoint
from sweep.report.confidence import PairedDifference
from sweep.report.summary import BASELINE, Comparison, StrategySummary, distinct


@dataclass(frozen=True)
class CurvePoint:
    point: GridPoint
    summary: StrategySummary  # whose confirmation runs and timing give this point's figures
    stand_in: bool  # full_finetune standing for a point that freezes nothing


@dataclass
class TransferCurve:
    """One experiment and lr split of a grid sweep: a line per freezing strategy along the grid's points."""

    experiment: str
    lr_split: str
    grid: Grid
    lines: dict[str, list[CurvePoint]]
    baseline: StrategySummary | None

    @property
    def title(self) -> str:
        return f"{self.experiment}, lr split {self.lr_split}"

    @property
    def axis(self) -> str:
        return " x ".join(self.grid.axes)

    @property
    def numeric(self) -> bool:
        """One key whose values are all numbers (depth): drawn to scale; anything else is drawn as categories."""
        values = next(iter(self.grid.axes.values())) if len(self.grid.axes) == 1 else []
        return bool(values) and all(isinstance(v, Real) and not isinstance(v, bool) for v in values)

    def position(self, point: GridPoint) -> float:
        return float(point.values[0][1]) if self.numeric else float(self.grid.points.index(point))

    def best_of(self, strategy: str) -> CurvePoint | None:
        confirmed = [p for p in self.lines[strategy] if p.summary.confirmation.runs]
        return max(confirmed, key=lambda p: p.summary.confirmation.accuracy.mean, default=None)

    def versus_best(self, strategy: str, point: CurvePoint) -> PairedDifference | None:
        """This point's accuracy minus the line's most accurate point's, paired by seed; None for that point."""
        best = self.best_of(strategy)
        if best is None or best is point:
            return None
        return point.summary.confirmation.versus(best.summary.confirmation)


def curves(comparisons: Sequence[Comparison]) -> list[TransferCurve]:
    """A curve for every experiment and lr split whose comparisons have grid points."""
    groups: dict[tuple[str, str], list[StrategySummary]] = {}
    for comparison in comparisons:
        if comparison.point:
            groups.setdefault((comparison.experiment, comparison.lr_split), []).extend(comparison.summaries)
    return [_curve(experiment, lr_split, distinct(summaries)) for (experiment, lr_split), summaries in groups.items()]


def _curve(experiment: str, lr_split: str, summaries: list[StrategySummary]) -> TransferCurve:
    baseline = next((s for s in summaries if s.strategy == BASELINE and not s.point), None)
    grid = next(s.confirmation.study.grid for s in summaries if s.point)
    stands_for = baseline.confirmation.study.stands_for if baseline else []
    lines: dict[str, list[CurvePoint]] = {}
    for point in grid.points:
        for summary in summaries:
            if summary.point == point:
                lines.setdefault(summary.strategy, []).append(CurvePoint(point, summary, False))
    for strategy, line in lines.items():
        line += [CurvePoint(p, baseline, True) for p in stands_for if p in grid.points]
        line.sort(key=lambda p: grid.points.index(p.point))
    return TransferCurve(experiment, lr_split, grid, lines, baseline)
