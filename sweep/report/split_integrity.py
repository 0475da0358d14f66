"""Did the lr split hold? The lr traces against the configured ratios, and searched split parameters with no effect.

A schedule that sets every group's lr from one scalar (onecycle with one
max_lr) erases a split: the trials still carry the configured ratio, and a
search still reports a "best" one, though it set nothing. The trace says so.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sweep.blocknet import HEAD
from sweep.report.records import StudyRecord, TrialRecord
from sweep.schedules import SCALAR_LR_SCHEDULES
from sweep.trace import LR_PREFIX, SPLIT_DEVIATION, SPLIT_TOLERANCE

SPLIT_PARAMS = "lr_split."  # searched paths that belong to the split


def relative_lrs(trial: TrialRecord) -> dict[tuple[str, int], float]:
    """Each block's lr over the head's, per epoch: what a split sets, whatever the schedule's overall factor."""
    head = trial.trace(LR_PREFIX + HEAD)
    return {(key, epoch): value / head[epoch] for key in trial.traces if key.startswith(LR_PREFIX)
            for epoch, value in trial.trace(key).items() if head.get(epoch)}


def _same(a: dict[tuple[str, int], float], b: dict[tuple[str, int], float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-15) for k in a)


def had_no_effect(path: str, studies: Sequence[StudyRecord]) -> bool:
    """True when trials that searched different values of `path` ran with the same relative lrs, in every study
    where that can be told (two measured trials with distinct values and lr traces)."""
    judged = False
    for study in studies:
        traced = [t for t in study.trials if t.measured and path in t.searched and t.trace(LR_PREFIX + HEAD)]
        if len({t.searched[path] for t in traced}) < 2:
            continue
        judged = True
        first = relative_lrs(traced[0])
        if not all(_same(first, relative_lrs(t)) for t in traced[1:]):
            return False
    return judged


@dataclass
class SplitIntegrity:
    """One comparison's split against its lr traces."""

    lr_split: str
    schedule: str | None
    traced: int = 0  # measured trials with a split-deviation trace
    broken: list[TrialRecord] = field(default_factory=list)  # deviated by more than SPLIT_TOLERANCE
    max_deviation: float = 0.0
    no_effect: list[str] = field(default_factory=list)  # searched split parameters that set nothing

    @classmethod
    def of(cls, lr_split: str, studies: Sequence[StudyRecord], searched: Sequence[str]) -> "SplitIntegrity":
        trials = [t for s in studies for t in s.trials if t.measured]
        schedules = {t.params["schedule.name"] for t in trials if "schedule.name" in t.params}
        found = cls(lr_split, schedules.pop() if len(schedules) == 1 else None)
        for trial in trials:
            deviation = max(trial.trace(SPLIT_DEVIATION).values(), default=None)
            if deviation is None:
                continue
            found.traced += 1
            found.max_deviation = max(found.max_deviation, deviation)
            if deviation > SPLIT_TOLERANCE:
                found.broken.append(trial)
        found.no_effect = [p for p in searched if p.startswith(SPLIT_PARAMS) and had_no_effect(p, studies)]
        return found

    @property
    def reason(self) -> str:
        if self.schedule in SCALAR_LR_SCHEDULES:
            return f"schedule {self.schedule} sets every group's lr from one scalar max_lr"
        return "cause unexplained; see the lr traces"

    def finding(self) -> str | None:
        """The words for the report; None while the split held (or was not traced)."""
        if not self.broken:
            return None
        no_effect = (f" The searched {', '.join(self.no_effect)} had no effect on the lrs: its 'best' value means "
                     "nothing." if self.no_effect else "")
        return (f"The lr split {self.lr_split} did NOT hold in {len(self.broken)} of {self.traced} traced trials: the "
                f"trainable groups' lrs departed from its ratios by up to {self.max_deviation:.0%} ({self.reason})."
                + no_effect)
