"""The sweep's cost figures: every study's chosen configuration timed side by side, logged to its parent run.

Per-trial step times come from trials that ran one after another while the
machine's load came and went, so they compare badly across strategies. After
the search and the repeats, the sweep builds each study's chosen configuration
once more and times its training step round-robin with all the others on the
same batches in this one process (`sweep.step_timing`), `full_finetune`
included even when the sweep did not run it, since every ratio is to it. Each
study's parent run gets (through `sweep.parent_run`) the median step time with its interquartile range and
the within-round ratio to `full_finetune` with its spread, tagged with the
session they were measured in.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from sweep.config import trial_spec, with_values
from sweep.repeats import chosen
from sweep.step_timing import Spread, TimingSettings, engine_step, machine, round_ratios, step_ms, time_rounds
from sweep.study import BASELINE, StrategyStudy, StudyPlan
from sweep.threads import intra_op_threads, threads_for
from sweep.tracking import QUANTILES, RATIO, SESSION, STEP_MS
from sweep.trial import TrialSpec, resolve_device

OWN_BASELINE = "(baseline)"  # the key of full_finetune's variant when the sweep has no full_finetune study


def spread_metrics(prefix: str, spread: Spread) -> dict[str, float]:
    return {f"{prefix}.{q}": getattr(spread, q) for q in QUANTILES}


def is_timed(plan: StudyPlan, study: StrategyStudy) -> bool:
    run_id = plan.tracker.study_run_id(study.name)
    return run_id is not None and f"{STEP_MS}.median" in plan.tracker.client.get_run(run_id).data.metrics


@dataclass(frozen=True)
class StudyTiming:
    """One study's side-by-side figures, for its parent run (`sweep.parent_run` writes them)."""

    metrics: dict[str, float]
    tags: dict[str, str]


def time_studies(plan: StudyPlan, studies: Sequence[StrategyStudy],
                 settings: TimingSettings) -> dict[str, StudyTiming]:
    """Time every study whose configuration is chosen: its figures by study name; empty if nothing was measured."""
    specs: dict[str, TrialSpec] = {}
    for study in studies:
        choice = chosen(study.study, searched=bool(plan.settings.space))
        if choice is not None and plan.tracker.study_run_id(study.name) is not None:
            specs[study.name] = trial_spec(with_values(study.config, choice.values), study.strategy, plan.seed)
    if settings.rounds == 0 or not specs:
        return {}
    baseline = next((s.name for s in studies if s.strategy == BASELINE and s.name in specs), None)
    if baseline is None:
        baseline = OWN_BASELINE
        specs[baseline] = trial_spec(plan.trial_config, BASELINE, plan.seed)
    device = resolve_device(next(iter(specs.values())).device)
    # Batches as trials get them: a training split smaller than one batch is still one (smaller) batch.
    loader = DataLoader(plan.task.train, batch_size=next(iter(specs.values())).batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(plan.seed))
    batches = [(x.to(device), y.to(device)) for x, y in (b for _, b in zip(range(settings.steps), loader))]
    with intra_op_threads(threads_for(plan.run_settings.threads, plan.workers.live())):  # as trials ran here
        steps = {key: engine_step(spec, plan.task, plan.model_def) for key, spec in specs.items()}
        rounds = time_rounds([[key] for key in steps], steps, batches, settings.rounds, settings.warmup_rounds,
                             plan.seed, device)
        where = machine(device)
    tags = {SESSION: uuid.uuid4().hex[:12], "timing.rounds": str(settings.rounds), "timing.steps": str(len(batches)),
            "timing.torch_threads": str(where["torch_threads"]), "timing.device": str(where["device"])}
    return {study.name: StudyTiming({**spread_metrics(STEP_MS, step_ms(rounds, study.name)),
                                     **spread_metrics(RATIO, round_ratios(rounds, study.name, baseline))}, tags)
            for study in studies if study.name in specs}
