"""What the confirmation runs say: each study's accuracy with its interval, paired differences, side-by-side cost.

The repeats of a study that count are those of its current choice: the best
finished trial (the rule `sweep.repeats.chosen` applies when it runs them), or
the fixed configuration when nothing was searched. Repeats are paired across
studies by seed. Costs come from the side-by-side timing logged on each study's
parent run (`sweep.timing`), and from the exact FLOPs the repeats counted.
"""

import statistics
from dataclasses import dataclass

from sweep.report.confidence import ACCURACY_BOUNDS, Estimate, PairedDifference
from sweep.report.records import StudyRecord, TrialRecord
from sweep.step_timing import Spread
from sweep.strategies import MECHANISMS
from sweep.tracking import CHOSEN_TRIAL, NOTHING_SEARCHED, QUANTILES, RATIO, SEED, SESSION, STEP_MS

FREEZE_KEYS = ("depth", "names", "indices", "regex")
EMPTY_PARAMS = ("", "[]", "None", "null")  # how an unset selector reads back from MLflow params


def _spread(metrics: dict[str, float], prefix: str) -> Spread | None:
    values = [metrics.get(f"{prefix}.{q}") for q in QUANTILES]
    return None if None in values else Spread(*values)


@dataclass(frozen=True)
class SideBySide:
    """A study's figures from the side-by-side timing: step time and ratio to full_finetune, with spread."""

    step_ms: Spread
    ratio: Spread
    session: str | None

    @classmethod
    def of(cls, study: StudyRecord) -> "SideBySide | None":
        step, ratio = _spread(study.parent_metrics, STEP_MS), _spread(study.parent_metrics, RATIO)
        return None if step is None or ratio is None else cls(step, ratio, study.parent_tags.get(SESSION))


def freeze_setting(params: dict[str, str], strategy_freezes: bool) -> str:
    """What was frozen, as the config spells it: `depth=2, norm_policy=train`; `nothing frozen` for the baseline."""
    if not strategy_freezes:
        return "nothing frozen"
    chosen = [f"{key}={params[f'freeze.{key}']}" for key in FREEZE_KEYS
              if params.get(f"freeze.{key}", "") not in EMPTY_PARAMS]
    policy = params.get("freeze.norm_policy")
    return ", ".join([*chosen, *([f"norm_policy={policy}"] if policy else [])]) or "not recorded"


@dataclass
class Confirmation:
    """The finished repeats of one study's current choice, and what they measured."""

    study: StudyRecord
    choice: str | None  # the chosen trial's number, NOTHING_SEARCHED, or None: no repeats recorded
    runs: list[TrialRecord]  # finished, measured
    failed: int
    side_by_side: SideBySide | None

    @classmethod
    def of(cls, study: StudyRecord, best: TrialRecord | None) -> "Confirmation":
        groups: dict[str, list[TrialRecord]] = {}
        for run in study.repeats:
            groups.setdefault(run.tags.get(CHOSEN_TRIAL, ""), []).append(run)
        wanted = [str(best.number)] if best is not None else []
        choice = next((c for c in (*wanted, NOTHING_SEARCHED) if c in groups), None)
        runs = groups.get(choice, []) if choice else []
        return cls(study, choice, [r for r in runs if r.state == "finished" and r.measured],
                   sum(r.state == "failed" for r in runs), SideBySide.of(study))

    @property
    def strategy(self) -> str:
        return self.study.strategy

    def accuracies(self) -> list[float]:
        return [r.metrics["test_accuracy"] for r in self.runs]

    @property
    def accuracy(self) -> Estimate | None:
        return Estimate.of(self.accuracies(), ACCURACY_BOUNDS) if self.runs else None

    @property
    def test_examples(self) -> int | None:
        sizes = {int(r.metrics["test_examples"]) for r in self.runs if "test_examples" in r.metrics}
        return sizes.pop() if len(sizes) == 1 else None

    def by_seed(self) -> dict[str, float]:
        return {r.tags[SEED]: r.metrics["test_accuracy"] for r in self.runs if SEED in r.tags}

    def versus(self, other: "Confirmation") -> PairedDifference | None:
        """This study's accuracy minus `other`'s, over the seeds both finished; None without a common seed."""
        mine, theirs = self.by_seed(), other.by_seed()
        seeds = sorted(mine.keys() & theirs.keys(), key=int)
        if not seeds:
            return None
        return PairedDifference.of([mine[s] for s in seeds], [theirs[s] for s in seeds])

    def largest(self, key: str) -> float | None:
        values = [r.metrics[key] for r in self.runs if key in r.metrics]
        return max(values) if values else None

    def median(self, key: str) -> float | None:
        values = [r.metrics[key] for r in self.runs if key in r.metrics]
        return statistics.median(values) if values else None

    def flops_vs(self, other: "Confirmation | None") -> float | None:
        """Exact FLOPs per step of this configuration over `other`'s (full_finetune's, usually)."""
        mine = self.median("flops_per_step")
        theirs = other.median("flops_per_step") if other is not None else None
        return mine / theirs if mine is not None and theirs else None

    @property
    def setting(self) -> str:
        freezes = self.strategy not in MECHANISMS or MECHANISMS.get(self.strategy).freezes
        return freeze_setting(self.runs[0].params, freezes) if self.runs else "not recorded"
