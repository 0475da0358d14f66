"""Aggregation: one row per (experiment, lr split, strategy), every number recomputable from trials.csv.

The rules (the report states them too):
- counts come from Optuna's trial states;
- compute spent (totals), the drift maxima and the medians of per-step costs (step time, samples/s, FLOPs per
  step, memory) cover every trial that recorded the metric, whatever its state: a pruned trial's time was
  spent, its steps cost what any step costs, and a frozen layer that moved in it did move;
- the best trial and the medians and range of per-trial outcomes (accuracies, train time) cover finished
  trials only, so a trial cut short does not drag them down.
"""

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sweep.report.causes import (BUFFER_DRIFT_CAUSES, DIFFERENCE_CAUSES, WEIGHT_DRIFT_CAUSES, Explanation, explain,
                                 explain_drift)
from sweep.report.confidence import PairedDifference
from sweep.report.confirmation import Confirmation
from sweep.grid import GridPoint
from sweep.report.equivalence import Verdict, choose_reference, verdicts
from sweep.report.records import COUNTED, Records, StudyRecord, TrialRecord
from sweep.report.split_integrity import SplitIntegrity
from sweep.study import BASELINE


@dataclass(frozen=True)
class Aggregate:
    """`<name>_<metric>` columns: `reduce` over the trials that recorded the metric."""

    name: str
    reduce: Callable[[list[float]], float]
    finished_only: bool
    metrics: tuple[str, ...]


AGGREGATES = (
    Aggregate("total", sum, False, ("train_time_s", "wall_time_s", "train_flops_est")),
    Aggregate("median", statistics.median, True, ("val_accuracy", "test_accuracy", "train_time_s", "trainable_params",
                                                   "frozen_params")),
    Aggregate("median", statistics.median, False, ("step_time_ms", "samples_per_s", "flops_per_step", "held_bytes",
                                                    "peak_rss_bytes", "peak_rss_growth_bytes",
                                                    "peak_cuda_allocated_bytes")),
    Aggregate("max", max, False, ("frozen_weight_drift", "frozen_buffer_drift")),
)
RELATIVE = ("step_time_ms", "flops_per_step")  # median over the baseline's median


def drift_verdict(max_drift: float | None, frozen_params: float | None, none_there: str = "not measured") -> str:
    """`none_there`: what a missing drift means while something was frozen."""
    if max_drift is None:
        return "nothing frozen" if frozen_params == 0 else none_there
    return "stayed frozen" if max_drift == 0 else f"moved by {max_drift:.3g}"


@dataclass
class StrategySummary:
    experiment: str
    lr_split: str
    strategy: str
    counts: dict[str, int]
    values: dict[str, float | None]
    best: TrialRecord | None
    verdict: Verdict
    confirmation: Confirmation  # the repeats of the chosen configuration
    difference: Explanation | None = None  # why it differs from the reference, where it does
    weight_drift: Explanation | None = None  # why frozen weights moved, where they did
    buffer_drift: Explanation | None = None  # why frozen norm statistics moved, where they did
    no_effect: list[str] = field(default_factory=list)  # searched parameters that set nothing (split_integrity)
    vs_baseline: PairedDifference | None = None  # accuracy minus full_finetune's, paired by seed
    vs_reference: PairedDifference | None = None  # accuracy minus the equivalence reference's, paired by seed

    @classmethod
    def of(cls, study: StudyRecord, verdict: Verdict, no_effect: Sequence[str] = ()) -> "StrategySummary":
        trials = study.trials
        finished = [t for t in trials if t.state == "finished" and t.measured]
        values: dict[str, float | None] = {}
        for aggregate in AGGREGATES:
            for key in aggregate.metrics:
                pool = finished if aggregate.finished_only else trials
                recorded = [v for v in (t.metric(key) for t in pool) if v is not None]
                values[f"{aggregate.name}_{key}"] = aggregate.reduce(recorded) if recorded else None
        tests = [t.metrics["test_accuracy"] for t in finished]
        values["min_test_accuracy"] = min(tests, default=None)
        values["max_test_accuracy"] = max(tests, default=None)
        best = max(finished, key=lambda t: (t.metrics["val_accuracy"], -t.number), default=None)
        values["best_val_accuracy"] = best.metrics["val_accuracy"] if best else None
        values["best_test_accuracy"] = best.metrics["test_accuracy"] if best else None
        counts = {state: sum(t.state == state for t in trials) for state in COUNTED}
        return cls(study.experiment, study.lr_split, study.strategy, counts, values, best, verdict,
                   Confirmation.of(study, best),
                   explain(verdict.pairs_that_differ, DIFFERENCE_CAUSES) if verdict.pairs_that_differ else None,
                   explain_drift(trials, "frozen_weight_drift", WEIGHT_DRIFT_CAUSES),
                   explain_drift(trials, "frozen_buffer_drift", BUFFER_DRIFT_CAUSES), list(no_effect))

    def value(self, key: str) -> float | None:
        return self.values.get(key)

    @property
    def weight_verdict(self) -> str:
        return drift_verdict(self.value("max_frozen_weight_drift"), self.value("median_frozen_params"))

    @property
    def buffer_verdict(self) -> str:
        weights_measured = self.value("max_frozen_weight_drift") is not None
        return drift_verdict(self.value("max_frozen_buffer_drift"), self.value("median_frozen_params"),
                             "no norm statistics in the frozen blocks" if weights_measured else "not measured")

    @property
    def cause(self) -> str:
        """Why it differs from the reference; empty where it does not."""
        return self.difference.text() if self.difference else ""

    @property
    def point(self) -> GridPoint:
        return self.confirmation.study.point

    @property
    def label(self) -> str:
        """The strategy, and its grid point if it has one: what its row is called."""
        return f"{self.strategy} {self.point.short}" if self.point else self.strategy

    def confirmation_row(self) -> dict[str, Any]:
        """summary.csv's figures of the confirmation runs and the side-by-side timing."""
        estimate, timed = self.confirmation.accuracy, self.confirmation.side_by_side
        row: dict[str, Any] = {"repeats_finished": len(self.confirmation.runs),
                               "repeats_failed": self.confirmation.failed,
                               "test_examples": self.confirmation.test_examples}
        row |= {f"repeat_test_accuracy_{k}": getattr(estimate, k) if estimate else None for k in ("mean", "low", "high")}
        for name, difference in ((BASELINE, self.vs_baseline), ("reference", self.vs_reference)):
            found = difference.difference if difference else None
            row |= {f"vs_{name}_{k}": getattr(found, k) if found else None for k in ("mean", "low", "high")}
            row |= {f"vs_{name}_p": difference.p_value if difference else None,
                    f"vs_{name}_verdict": difference.verdict if difference else None}
        row |= {f"side_by_side_vs_{BASELINE}_{k}": getattr(timed.ratio, k) if timed else None
                for k in ("median", "q1", "q3")}
        return row

    def as_row(self, searched: Sequence[str]) -> dict[str, Any]:
        """The summary.csv row: counts, values, verdicts and the best trial's searched hyperparameters."""
        best_params = self.best.searched if self.best else {}
        return {"experiment": self.experiment, "lr_split": self.lr_split, "strategy": self.strategy,
                "grid_point": self.point.label,
                "trials": sum(self.counts.values()), **self.counts,
                "best_trial": self.best.number if self.best else None, **self.values,
                "frozen_weights": self.weight_verdict, "frozen_buffers": self.buffer_verdict,
                "frozen_weights_cause": self.weight_drift.text() if self.weight_drift else None,
                "frozen_buffers_cause": self.buffer_drift.text() if self.buffer_drift else None,
                "equivalence": self.verdict.status, "equivalence_reference": self.verdict.reference,
                "equivalence_paired_trials": self.verdict.paired,
                "equivalence_max_test_accuracy_diff": self.verdict.max_test_diff,
                "equivalence_detail": self.verdict.detail(), "equivalence_cause": self.cause or None,
                **self.confirmation_row(), **{f"best.{path}": best_params.get(path) for path in searched}}


def distinct(summaries: Iterable[StrategySummary]) -> list[StrategySummary]:
    """One per study: full_finetune's study is in the comparison of every grid point, listed once."""
    seen: dict[str, StrategySummary] = {}
    for summary in summaries:
        seen.setdefault(summary.confirmation.study.name, summary)
    return list(seen.values())


def searched_paths(studies: Sequence[StudyRecord]) -> list[str]:
    """Searched hyperparameters, as config paths."""
    return sorted({path for s in studies for path in s.distributions})


@dataclass
class Comparison:
    """The strategies of one experiment under one lr split (and at one grid point): what pairing and relative
    costs are defined over."""

    experiment: str
    lr_split: str
    studies: list[StudyRecord]
    summaries: list[StrategySummary]
    split: SplitIntegrity
    point: GridPoint = GridPoint()

    @classmethod
    def of(cls, experiment: str, lr_split: str, studies: list[StudyRecord],
           point: GridPoint = GridPoint()) -> "Comparison":
        found = verdicts(studies)
        split = SplitIntegrity.of(lr_split, studies, searched_paths(studies))
        summaries = [StrategySummary.of(s, found[s.strategy], split.no_effect) for s in studies]
        baseline = next((s for s in summaries if s.strategy == BASELINE), None)
        reference = next((s for s in summaries if s.strategy == choose_reference([s.strategy for s in summaries])))
        for summary in summaries:
            for key in RELATIVE:
                mine, theirs = summary.value(f"median_{key}"), baseline.value(f"median_{key}") if baseline else None
                summary.values[f"{key}_vs_{BASELINE}"] = mine / theirs if mine is not None and theirs else None
            summary.values["confirmed_flops_vs_baseline"] = summary.confirmation.flops_vs(
                baseline.confirmation if baseline else None)
            if baseline is not None and summary is not baseline:
                summary.vs_baseline = summary.confirmation.versus(baseline.confirmation)
            if summary is not reference:
                summary.vs_reference = summary.confirmation.versus(reference.confirmation)
        return cls(experiment, lr_split, studies, summaries, split, point)

    @property
    def title(self) -> str:
        return f"{self.experiment}, lr split {self.lr_split}" + (f", {self.point.label}" if self.point else "")

    @property
    def searched(self) -> list[str]:
        return searched_paths(self.studies)

    @property
    def trials(self) -> list[TrialRecord]:
        return [t for s in self.studies for t in s.trials]


def comparisons(records: Records) -> list[Comparison]:
    """One per experiment, lr split and grid point (search.grid), in the grid's order."""
    groups: dict[tuple[str, str, GridPoint], list[StudyRecord]] = {}
    for study in records.studies:
        groups.setdefault((study.experiment, study.lr_split, study.point), []).append(study)
    _share_baselines(groups)

    def order(item: tuple[tuple[str, str, GridPoint], list[StudyRecord]]) -> tuple:
        (experiment, lr_split, point), studies = item
        points = studies[0].grid.points
        return records.experiments.index(experiment), lr_split, points.index(point) if point in points else -1
    return [Comparison.of(experiment, lr_split, studies, point)
            for (experiment, lr_split, point), studies in sorted(groups.items(), key=order)]


def _share_baselines(groups: dict[tuple[str, str, GridPoint], list[StudyRecord]]) -> None:
    """full_finetune's study, which no freeze key changes, joins the comparison of every grid point of its
    experiment and lr split, where it is the baseline too; its own comparison goes if nothing else is in it."""
    for (experiment, lr_split, point), studies in list(groups.items()):
        plain = groups.get((experiment, lr_split, GridPoint()), [])
        baseline = next((s for s in plain if s.strategy == BASELINE), None)
        if point and baseline is not None and not any(s.strategy == BASELINE for s in studies):
            studies.append(baseline)
    for (experiment, lr_split, point), studies in list(groups.items()):
        gridded = any(key[:2] == (experiment, lr_split) and key[2] for key in groups)
        if not point and gridded and all(s.strategy == BASELINE for s in studies):
            del groups[experiment, lr_split, point]
