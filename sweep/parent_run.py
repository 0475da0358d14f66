"""What a study's parent run in MLflow says about the study when a sweep ends, so MLflow alone compares studies.

Metrics: `trials.<state>` counts, best and median validation and test accuracy, the median step time,
FLOPs per step relative to full_finetune, and the largest drift of frozen weights and of frozen norm
statistics. Params: the study's identity and fixed configuration (the same for every sweep that adds
trials to it, or the study refuses them). Tags: the drift verdicts in words, the best trial, its run and
its searched values (`best.<param>`), and the study's grid point (`sweep.grid*`, with search.grid). The
side-by-side timing, when this sweep measured one (`sweep.timing`): `timing.*` metrics and tags. Artifact:
`config.yaml`, the sweep's composed configuration.
"""

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from sweep.search import RUN_ATTR, STATE_NAMES
from sweep.study import BASELINE, StrategyStudy, StrategySummary, StudyPlan, baseline_flops_per_step

if TYPE_CHECKING:
    from sweep.timing import StudyTiming

COUNTED_STATES = ("finished", "pruned", "failed", "running")


@dataclass
class StudyRecord:
    metrics: dict[str, float]
    params: dict[str, Any]
    tags: dict[str, str]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _largest(trials: Sequence[FrozenTrial], key: str) -> float | None:
    return max((t.user_attrs[key] for t in trials if key in t.user_attrs), default=None)


def drift_verdict(strategy: str, drift: float | None) -> str:
    if strategy == BASELINE:
        return "nothing frozen"
    if drift is None:
        return "not measured"
    return "stayed frozen" if drift == 0 else f"moved (largest change {drift:.3g})"


def study_record(study: StrategyStudy, summary: StrategySummary, flops_of_baseline: float | None,
                 timing: "StudyTiming | None" = None) -> StudyRecord:
    trials = study.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = Counter(STATE_NAMES.get(t.state, "running") for t in trials)
    weight_drift, buffer_drift = _largest(trials, "frozen_weight_drift"), _largest(trials, "frozen_buffer_drift")
    metrics = {f"trials.{state}": counts[state] for state in COUNTED_STATES} | {
        "best.val_accuracy": summary.best_val_accuracy,
        "best.test_accuracy": summary.best_test_accuracy,  # of the trial with the best validation accuracy
        "median.val_accuracy": _median([t.values[0] for t in complete]),
        "median.test_accuracy": _median([t.user_attrs["test_accuracy"] for t in complete
                                         if "test_accuracy" in t.user_attrs]),
        "median.step_time_ms": summary.median_step_time_ms,
        f"flops_vs_{BASELINE}": (summary.flops_per_step / flops_of_baseline
                                 if summary.flops_per_step and flops_of_baseline else None),
        "max.frozen_weight_drift": weight_drift,
        "max.frozen_buffer_drift": buffer_drift,
    }
    tags = {"verdict.frozen_weights": drift_verdict(study.strategy, weight_drift),
            "verdict.frozen_statistics": drift_verdict(study.strategy, buffer_drift), **study.grid_tags()}
    if timing is not None:
        metrics |= timing.metrics
        tags |= timing.tags
    if complete:
        best = max(complete, key=lambda t: t.values[0])
        tags |= {"best.trial": str(best.number), "best.run_id": best.user_attrs.get(RUN_ATTR, "")}
        tags |= {f"best.{path}": str(value) for path, value in best.params.items()}
    return StudyRecord({k: v for k, v in metrics.items() if v is not None},
                       study.identity | study.fixed_config, tags)


def record_studies(plan: StudyPlan, studies: Sequence[StrategyStudy], composed_config: dict[str, Any],
                   timings: Mapping[str, "StudyTiming"]) -> None:
    """Write each study's record, with its side-by-side timing if this sweep measured one (`timings`, by study
    name), onto its parent run (a study that never ran a trial or repeat has none)."""
    summaries = [StrategySummary.of(s.label, s.study) for s in studies]
    flops = baseline_flops_per_step(plan, summaries)
    for study, summary in zip(studies, summaries):
        record = study_record(study, summary, flops, timings.get(study.name))
        plan.tracker.record_study(study.name, record.metrics, record.params, record.tags, composed_config,
                                  plan.dataset)
