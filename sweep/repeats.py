"""Confirmation runs: each study's chosen configuration re-run with the same R seeds in every strategy.

The search picks a configuration per strategy on the validation set, from one
seed per trial: a lucky seed can win it. The repeats re-run that configuration
with `search.repeats` seeds of their own (`seed + search.repeat_seed_offset + r`),
the same R seeds in every strategy, so strategies are compared on paired runs
(same head initialisation, same data order) and the report can put a confidence
interval on each accuracy and on each difference. With nothing to search (every
searched key fixed) the search is skipped and the repeats are the runs.

Each repeat is an MLflow run (`sweep.role=repeat`) under the study's parent,
handed to the sweep's executor as a `TrialJob` like a trial (so it runs on Ray
too). Running the command again runs only the repeats the current choice is
missing (claimed run by run, so drivers racing each other never duplicate one),
and one whose driver died continues from its checkpoint as the same run.
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Run
from optuna.trial import TrialState
from tqdm import tqdm

from sweep.config import flatten, trial_spec, with_values
from sweep.job import TrialJob, TrialOutcome
from sweep.paths import inside
from sweep.study import StrategyStudy
from sweep.tracking import (CHOSEN_TRIAL, DRIVER, NOTHING_SEARCHED, REPEAT, SEED, STATE, STUDY,
                            earliest_of_each)
from sweep.train import EpochMetrics
from sweep.workers import WORKER, worker_is_dead

ENDED = ("finished", "failed")  # a failed repeat fails again with the same seed: it is not retried


@dataclass(frozen=True)
class Choice:
    """The configuration the repeats confirm: a trial's searched values, or the fixed config (`trial` None)."""

    trial: int | None
    values: dict[str, Any]

    @property
    def tag(self) -> str:
        return NOTHING_SEARCHED if self.trial is None else str(self.trial)


def chosen(study: optuna.Study, searched: bool) -> Choice | None:
    """The best finished trial by validation accuracy, the earliest among equals (as the report's "best");
    None when no trial has finished yet."""
    if not searched:
        return Choice(None, {})
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: (t.values[0], -t.number), default=None)
    return None if best is None else Choice(best.number, dict(best.params))


def repeat_seed(seed: int, offset: int, repeat: int) -> int:
    return seed + offset + repeat


class Repeats:
    """The confirmation runs of one strategy's study, handed to an executor as a study's trials are."""

    def __init__(self, study: StrategyStudy) -> None:
        self.study = study
        self.plan = study.plan
        self.ran = False  # whether this sweep ran any (then the side-by-side timing is measured again)
        self._choice: Choice | None = None
        self._to_resume: list[tuple[int, str]] = []  # (repeat, run id)
        self._missing: list[int] = []
        self._parent_run_id: str | None = None
        self._bar: tqdm | None = None
        self._running: dict[str, tuple[int, str]] = {}  # job key -> (repeat, run id)

    @contextmanager
    def session(self, position: int | None = None) -> Iterator[None]:
        """While open, `next_job` hands out the repeats the current choice is missing, interrupted ones first."""
        self._choice = chosen(self.study.study, searched=bool(self.plan.settings.space))
        if self._choice is None:
            print(f"{self.study.strategy}: no finished trial, so no configuration to repeat", file=sys.stderr)
            yield
            return
        mine = {int(run.data.tags[REPEAT]): run
                for run in earliest_of_each(self.plan.tracker.repeat_runs(self.study.name), (CHOSEN_TRIAL, REPEAT))
                if run.data.tags.get(CHOSEN_TRIAL) == self._choice.tag}
        self._to_resume = [(r, run.info.run_id) for r, run in sorted(mine.items()) if _interrupted(run)]
        self._missing = [r for r in range(self.plan.settings.repeats) if r not in mine]
        if not self._to_resume and not self._missing:
            yield
            return
        with self.plan.tracker.study_run(self.study.name, self.study.parent_tags()) as self._parent_run_id, \
                tqdm(total=len(self._to_resume) + len(self._missing), desc=f"{self.study.strategy} repeats",
                     unit="run", position=position, dynamic_ncols=True) as self._bar:
            yield

    def next_job(self) -> TrialJob | None:
        """The next repeat to run, or None when this session has handed out all it should."""
        if self._to_resume:
            return self._job(*self._to_resume.pop(0))
        while self._missing:
            repeat = self._missing.pop(0)
            run_id = self._claim(repeat)
            if run_id is not None:  # None: another driver runs it
                return self._job(repeat, run_id)
            self._bar.update()
        return None

    def report_epoch(self, key: str, metrics: EpochMetrics) -> bool:
        self._bar.set_postfix(repeat=self._running[key][0], epoch=metrics.epoch, val=f"{metrics.val_accuracy:.3f}")
        return False  # repeats are never pruned: each one is a sample the statistics need whole

    def finish(self, key: str, outcome: TrialOutcome) -> None:
        """A failure is said on one line and recorded; the other repeats and strategies go on."""
        self.ran = True
        repeat, run_id = self._running.pop(key)
        if outcome.error is not None:
            if not outcome.run_ended:
                self.plan.tracker.fail_trial_run(run_id)
            self._bar.write(f"{self.study.strategy}: repeat {repeat} failed: {outcome.error}", file=sys.stderr)
        self._bar.update()

    def checkpoint_dir(self, repeat: int) -> Path:
        return inside(self.study.checkpoints_dir, f"repeat-{repeat}-of-trial-{self._choice.tag}")

    def _config(self) -> dict[str, Any]:
        return with_values(self.study.config, self._choice.values)

    def _seed(self, repeat: int) -> int:
        return repeat_seed(self.plan.seed, self.plan.settings.repeat_seed_offset, repeat)

    def _claim(self, repeat: int) -> str | None:
        identity = {STUDY: self.study.name, CHOSEN_TRIAL: self._choice.tag, REPEAT: str(repeat)}
        tags = {**self.study.run_tags(), SEED: str(self._seed(repeat)), DRIVER: WORKER}
        return self.plan.tracker.claim_repeat_run(self._parent_run_id, f"{self.study.strategy}-repeat-{repeat}",
                                                  identity, tags)

    def _job(self, repeat: int, run_id: str) -> TrialJob:
        spec = trial_spec(self._config(), self.study.strategy, self._seed(repeat))
        checkpoint_dir = self.checkpoint_dir(repeat)
        checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
        job = TrialJob(f"{self.study.name}#repeat-{repeat}", spec, self.plan.run_settings, run_id,
                       self.study.identity | flatten(self._config()), self.plan.tracker.for_jobs, checkpoint_dir)
        self._running[job.key] = (repeat, run_id)
        return job


def _interrupted(run: Run) -> bool:
    """Claimed by a sweep process of this host that is gone, and never given a final state."""
    return run.data.tags.get(STATE) not in ENDED and worker_is_dead(run.data.tags.get(DRIVER))
