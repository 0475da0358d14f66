"""One strategy's Optuna study: its trials, their MLflow runs, progress, and the end-of-sweep summary."""

import json
import math
import shlex
import statistics
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from tabulate import tabulate
from tqdm import tqdm

from sweep.cli import override
from sweep.config import flatten, trial_spec, with_values
from sweep.data import Task
from sweep.errors import warn
from sweep.executors import Executor
from sweep.faults import crash_point
from sweep.feature_cache import FeatureCache
from sweep.job import TrialJob, TrialOutcome
from sweep.models import ModelDef
from sweep.paths import Workspace, default_uri
from sweep.schedules import SCALAR_LR_SCHEDULES
from sweep.search import (RUN_ATTR, WORKER_ATTR, SearchSettings, TrialBudget, check_study, done_trials,
                          open_study, study_name)
from sweep.grid import Grid, GridPoint
from sweep.step_timing import TimingSettings
from sweep.strategies import MECHANISMS
from sweep.trace import SPLIT_TOLERANCE
from sweep.tracking import (BACKBONE, GRID, GRID_POINT, GRID_STANDS_FOR, STUDY, STUDY_PARAMS, TRIAL_NUMBER,
                            DatasetInput, NewRun, Tracker, dataset_input)
from sweep.train import EpochMetrics
from sweep.trial import RunSettings
from sweep.workers import WORKER, WorkerRegistry, worker_is_dead

BASELINE = "full_finetune"


@dataclass
class StudyPlan:
    """Everything validated and opened before the first trial runs."""

    experiment: str
    strategies: list[str]
    settings: SearchSettings
    storage: BaseStorage
    trial_config: dict[str, Any]
    seed: int
    model_def: ModelDef
    task: Task
    tracker: Tracker
    workspace: Workspace
    run_settings: RunSettings  # threads None: share the cores among the workers of the host a trial runs on
    workers: WorkerRegistry
    executor: Executor
    timing: TimingSettings
    units: list[tuple[str, GridPoint]]  # (strategy, grid point) pairs that get a study; no grid: every point empty
    grid: Grid
    feature_cache: FeatureCache  # cached_prefix's features, shared by the trials of every study
    left_out: dict[str, str] = field(default_factory=dict)  # strategy -> why it cannot run this configuration exactly

    @property
    def lr_split(self) -> str:
        return self.trial_config["lr_split"]["name"]

    @cached_property
    def dataset(self) -> DatasetInput:
        return dataset_input(self.task)

    def fixed_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The flattened configuration every trial of a study of `config` shares: everything not searched."""
        searched = {d.path for d in self.settings.space}
        return {k: v for k, v in flatten(config).items() if k not in searched}

    def check_studies(self) -> None:
        for strategy, point in self.units:
            check_study(self.storage, study_name(self.experiment, strategy, self.lr_split, point.label),
                        self.fixed_config(point.apply(self.trial_config)))


@dataclass
class RunningTrial:
    """A trial handed to an executor and not yet told to Optuna."""

    trial: optuna.Trial
    job: TrialJob
    last_step: int | None  # the last epoch Optuna holds: a resumed attempt may report it again


class StrategyStudy:
    """The driver's side of one strategy's study: it asks, prunes and tells; an executor runs the trials."""

    def __init__(self, plan: StudyPlan, strategy: str, point: GridPoint = GridPoint()) -> None:
        self.plan = plan
        self.strategy = strategy
        self.point = point
        self.name = study_name(plan.experiment, strategy, plan.lr_split, point.label)
        self.config = point.apply(plan.trial_config)
        self.fixed_config = plan.fixed_config(self.config)
        self.study = open_study(plan.storage, self.name, plan.settings, self.fixed_config)
        self.identity = self._identity()
        self._bar: tqdm | None = None
        self._best = "-"  # best val accuracy for the progress bar; it can only change between trials
        self._parent_run_id: str | None = None
        self._to_resume: list[FrozenTrial] = []
        self._budget = TrialBudget(0, plan.settings.max_failures)  # each session sets its own
        self._running: dict[str, RunningTrial] = {}

    def _identity(self) -> dict[str, str]:
        """What tells this study's trials from its paired trials in other studies: MLflow params and tags, so
        MLflow's compare and parallel-coordinates views can separate them. A study's selection is fixed."""
        spec = trial_spec(self.config, self.strategy, self.plan.seed)
        frozen = spec.selection.describe() if MECHANISMS.get(self.strategy).freezes else "nothing"
        return dict(zip(STUDY_PARAMS, (self.strategy, self.plan.lr_split, frozen), strict=True))

    @property
    def checkpoints_dir(self) -> Path:
        return self.plan.workspace.study_checkpoints(self.name)

    @contextmanager
    def session(self, position: int | None = None) -> Iterator[None]:
        """While open, `next_job` tops the study up to `n_trials` finished or pruned trials (a second run adds none).

        Trials whose worker on this host died (killed, out of memory, power cut)
        come first, from their last checkpoint, as the same Optuna trial and the
        same MLflow run. A failed trial is replaced, until `search.max_failures`
        have failed in this session. The study's parent run and progress bar are
        open only when there is something to run; `position` stacks the bars of studies run at once.
        """
        settings = self.plan.settings
        self._to_resume = self._interrupted_trials()
        to_ask = max(settings.n_trials - len(done_trials(self.study)) - len(self._to_resume), 0)
        if not settings.space:  # nothing to search: the confirmation runs (search.repeats) are the runs
            to_ask = 0
        self._budget = TrialBudget(to_ask, settings.max_failures)
        if not to_ask and not self._to_resume:
            self.plan.tracker.end_study_run(self.name)  # one a worker killed after the last trial left RUNNING
            yield
            return
        with self.plan.tracker.study_run(self.name, self.parent_tags()) as self._parent_run_id, \
                tqdm(total=to_ask + len(self._to_resume), desc=self.strategy, unit="trial", position=position,
                     dynamic_ncols=True) as self._bar:
            yield
            crash_point("trials-done")

    def next_job(self) -> TrialJob | None:
        """The next trial to run, or None when this session has handed out all it should."""
        if self._to_resume:
            frozen = self._to_resume.pop(0)
            return self._start(optuna.Trial(self.study, frozen._trial_id), frozen.last_step)
        # Workers sharing the study stop once it holds n_trials done, whoever ran them.
        if len(done_trials(self.study)) < self.plan.settings.n_trials and self._budget.take():
            return self._start(self.study.ask(), None)
        return None

    def report_epoch(self, key: str, metrics: EpochMetrics) -> bool:
        """An epoch of a running trial, from wherever it runs; True: prune it."""
        running = self._running[key]
        self._bar.set_postfix(trial=running.trial.number, epoch=f"{metrics.epoch}/{running.job.spec.epochs}",
                              val=f"{metrics.val_accuracy:.3f}", best=self._best)
        if self.plan.settings.multi_objective:
            return False
        if running.last_step is None or metrics.epoch > running.last_step:
            running.trial.report(metrics.val_accuracy, metrics.epoch)
            running.last_step = metrics.epoch
        return running.trial.should_prune()

    def finish(self, key: str, outcome: TrialOutcome) -> None:
        """Tell Optuna how a trial ended, as `study.optimize(catch=...)` would: a failure fails that trial only."""
        trial = self._running.pop(key).trial
        self._link(trial, outcome)
        if outcome.error is not None:
            trial.set_user_attr("error", outcome.error)
            self._bar.write(f"{self.strategy}: trial {trial.number} failed: {outcome.error}", file=sys.stderr)
            self.study.tell(trial, state=TrialState.FAIL)
            if self._budget.failed():
                warn(f"{self.strategy}: no more trials after {self._budget.failures} failed in this run "
                     f"(search.max_failures={self.plan.settings.max_failures}); the study holds "
                     f"{len(done_trials(self.study))} of {self.plan.settings.n_trials}. Run the same command again "
                     "to retry")
            return
        else:
            result = outcome.result
            for name, value in result.final_metrics().items():
                trial.set_user_attr(name, value)
            if result.stopped_early:
                self.study.tell(trial, state=TrialState.PRUNED)
            elif self.plan.settings.multi_objective:
                self.study.tell(trial, (result.val_accuracy, result.train_time_s))
            else:
                self.study.tell(trial, result.val_accuracy)
        self._bar.update()

    def _interrupted_trials(self) -> list[FrozenTrial]:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [t for t in running if worker_is_dead(t.user_attrs.get(WORKER_ATTR))]

    @property
    def label(self) -> str:
        """The strategy, and its grid point if it has one: what a row of a table is called."""
        return f"{self.strategy} {self.point.short}" if self.point else self.strategy

    def parent_tags(self) -> dict[str, str]:
        """What the study's parent run says about the study from the start: its identity and grid point."""
        return self.identity | self.grid_tags()

    def grid_tags(self) -> dict[str, str]:
        """Where this study sits in the sweep's grid (none without one), for its parent run: the report draws the
        grid's curves from them. The baseline's study stands for every point that freezes nothing."""
        grid = self.plan.grid
        if not grid:
            return {}
        tags = {GRID: grid.as_tag(), GRID_POINT: json.dumps(self.point.as_dict())}
        if not self.point:
            tags[GRID_STANDS_FOR] = json.dumps([p.as_dict() for p in grid.freezing_nothing(self.config)])
        return tags

    def run_tags(self) -> dict[str, str]:
        """What every run of this study, trial or repeat, is tagged with."""
        return {**self.identity, "model.pretrained": str(self.plan.model_def.pretrained).lower(),
                BACKBONE: self.plan.model_def.describe(), STUDY: self.name}

    def checkpoint_dir(self, number: int) -> Path:
        return self.plan.workspace.checkpoint_dir(self.name, number)

    def _start(self, trial: optuna.Trial, last_step: int | None) -> TrialJob:
        """Sample (or, for an interrupted trial, recall) its hyperparameters, and say which MLflow run it continues."""
        values = {dim.path: dim.suggest(trial) for dim in self.plan.settings.space}
        config = with_values(self.config, values)
        spec = trial_spec(config, self.strategy, self.plan.seed + trial.number)
        trial.set_user_attr(WORKER_ATTR, WORKER)  # claims a resumed trial (a new one names its worker from the start)
        best = self._best_so_far()
        self._best = "-" if best is None else f"{best:.3f}"
        self._bar.set_postfix(trial=trial.number, epoch=f"0/{spec.epochs}", best=self._best)  # visible from the start
        run = trial.user_attrs.get(RUN_ATTR) or self._new_run(trial)  # not linked yet: the attempt finds or makes it
        checkpoint_dir = self.checkpoint_dir(trial.number)
        checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
        model_bar = (-math.inf if best is None else best) if self.plan.tracker.log_best_models else None
        job = TrialJob(f"{self.name}#{trial.number}", spec, self.plan.run_settings, run,
                       self.identity | flatten(config), self.plan.tracker.for_jobs, checkpoint_dir,
                       log_model_above=model_bar)
        self._running[job.key] = RunningTrial(trial, job, last_step)
        return job

    def _new_run(self, trial: optuna.Trial) -> NewRun:
        tags = {**self.run_tags(), TRIAL_NUMBER: str(trial.number)}
        return self.plan.tracker.new_trial_run(self._parent_run_id, f"{self.strategy}-{trial.number}", tags)

    def _link(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        """Link the trial to the MLflow run its attempt continued (before Optuna hears the outcome); and end that
        run FAILED if no attempt could (then look it up, should no attempt have said which it was)."""
        if outcome.run_id is not None and RUN_ATTR not in trial.user_attrs:
            trial.set_user_attr(RUN_ATTR, outcome.run_id)
        if not outcome.run_ended:
            run_id = trial.user_attrs.get(RUN_ATTR) or self.plan.tracker.find_trial_run(self.name, trial.number)
            if run_id is not None:
                self.plan.tracker.fail_trial_run(run_id)

    def _best_so_far(self) -> float | None:
        """One storage query, once per trial: with shared PostgreSQL studies this must stay off the epoch path."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return max(t.values[0] for t in complete) if complete else None


@dataclass
class StrategySummary:
    strategy: str
    finished: int
    pruned: int
    failed: int
    best_val_accuracy: float | None
    best_test_accuracy: float | None
    median_step_time_ms: float | None
    flops_per_step: float | None
    max_frozen_weight_drift: float | None
    max_frozen_buffer_drift: float | None
    measured: int
    split_broken: int  # trials whose lrs departed from the configured split
    max_split_deviation: float | None
    invariant_failed: int  # trials in which the optimizer could move frozen (or not move trainable) parameters

    @classmethod
    def of(cls, strategy: str, study: optuna.Study) -> "StrategySummary":
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        measured = [t for t in trials if "step_time_ms" in t.user_attrs]
        best = max(complete, key=lambda t: t.values[0], default=None)

        def median(key: str) -> float | None:
            values = [t.user_attrs[key] for t in measured if key in t.user_attrs]
            return statistics.median(values) if values else None

        def largest(key: str) -> float | None:
            return max((t.user_attrs[key] for t in measured if key in t.user_attrs), default=None)

        deviations = [t.user_attrs.get("max_lr_split_deviation") or 0.0 for t in measured]
        return cls(strategy, len(complete), sum(t.state == TrialState.PRUNED for t in trials),
                   sum(t.state == TrialState.FAIL for t in trials),
                   best.values[0] if best else None, best.user_attrs.get("test_accuracy") if best else None,
                   median("step_time_ms"), median("flops_per_step"), largest("frozen_weight_drift"),
                   largest("frozen_buffer_drift"), len(measured), sum(d > SPLIT_TOLERANCE for d in deviations),
                   max(deviations, default=None),
                   sum(t.user_attrs.get("invariant_failed_epochs", 0) > 0 for t in measured))

    def frozen_verdict(self, drift: float | None, absent: str = "-") -> str:
        """For the terminal: n/a (the baseline), yes, NO <largest change>, or `absent` where none was measured."""
        if self.strategy == BASELINE:
            return "n/a"
        if drift is None:
            return absent
        return "yes" if drift == 0 else f"NO {drift:.3g}"

    def norm_statistics_verdict(self) -> str:
        """"none": frozen weights were measured, but the frozen blocks hold no norm statistics."""
        return self.frozen_verdict(self.max_frozen_buffer_drift, "none" if self.max_frozen_weight_drift is not None
                                   else "-")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


WIDTH = 100  # the terminal summary fits 100 columns
LABEL_WIDTH = 22  # the longest strategy name; a strategy with its grid point wraps below it


def print_summary(plan: StudyPlan, studies: Sequence[StrategyStudy]) -> None:
    summaries = [StrategySummary.of(s.label, s.study) for s in studies]
    baseline_flops = baseline_flops_per_step(plan, summaries)
    rows = [[s.strategy, f"{s.finished}/{s.pruned}/{s.failed}", _fmt(s.best_val_accuracy, ".4f"),
             _fmt(s.best_test_accuracy, ".4f"), _fmt(s.median_step_time_ms, ".2f"),
             _fmt(s.flops_per_step / baseline_flops if s.flops_per_step and baseline_flops else None, ".3f"),
             s.frozen_verdict(s.max_frozen_weight_drift), s.norm_statistics_verdict()]
            for s in summaries]
    headers = ["strategy", "trials\nf/p/x", "best\nval acc", "its\ntest acc", "step\nms", "FLOPs\nvs base",
               "frozen\nweights", "frozen\nnorm stats"]
    heading = [f"experiment {plan.experiment!r}, lr split {plan.lr_split!r}, {plan.settings.n_trials} trials per "
               f"strategy (finished/pruned/failed), median step time, FLOPs per step vs {BASELINE}",
               f"model: {plan.model_def.describe()}"]
    print("\n" + "\n".join(textwrap.fill(line, WIDTH) for line in heading))
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                   maxcolwidths=[LABEL_WIDTH] + [None] * (len(headers) - 1)))  # a grid point's label wraps
    notes = _notes(plan, summaries)
    if notes:
        print("\n" + "\n".join(textwrap.fill(note, WIDTH, subsequent_indent="  ") for note in notes))


def print_next_steps(plan: StudyPlan) -> None:
    """Where to look next: the commands that open the runs and export the report, pasted into a shell as they read."""
    uri = plan.tracker.uri
    results = plan.workspace.results_dir
    report = ["python", "-m", "sweep.report", override("experiment", plan.experiment), override("results_dir", results)]
    if uri != default_uri(results):
        report.append(override("tracking.uri", uri))
    if plan.settings.storage is not None:
        report.append(override("search.storage", plan.settings.storage))
    print(f"\nBrowse the runs:   {shlex.join(['mlflow', 'ui', '--backend-store-uri', uri])}")  # pasted into a shell
    print(f"Export the report: {shlex.join(report)}")


def _names(summaries: Sequence[StrategySummary]) -> str:
    return ", ".join(s.strategy for s in summaries)


def _notes(plan: StudyPlan, summaries: list[StrategySummary]) -> list[str]:
    """What the table cannot say: frozen things that moved, and an lr split that did not hold."""
    notes = []
    moved_weights = [s for s in summaries if s.max_frozen_weight_drift]
    if moved_weights:
        failed = [f"{s.strategy} ({s.invariant_failed} of {s.measured} trials)" for s in moved_weights
                  if s.invariant_failed]
        schedule = plan.trial_config["schedule"]["name"]
        scalar = f" (schedule {schedule} rewrites every group's lr)" if schedule in SCALAR_LR_SCHEDULES else ""
        notes.append(f"Frozen weights MOVED in {_names(moved_weights)}."
                     + (f" The optimizer could move frozen parameters in {', '.join(failed)}: a param group of "
                        f"frozen parameters had lr > 0{scalar}." if failed else "")
                     + " The report names the cause.")
    moved_stats = [s for s in summaries if s.max_frozen_buffer_drift]
    if moved_stats:
        policy = plan.trial_config["freeze"]["norm_policy"]
        notes.append(f"Frozen norm statistics MOVED in {_names(moved_stats)} (BatchNorm running statistics, up to "
                     f"{max(s.max_frozen_buffer_drift for s in moved_stats):.3g})"
                     + (": freeze.norm_policy=train keeps updating them. Set freeze.norm_policy=eval to hold them "
                        "(Keras' trainable=False)." if policy == "train" else "."))
    broken = [s for s in summaries if s.split_broken]
    if broken:
        schedule = plan.trial_config["schedule"]["name"]
        searched = [d.path for d in plan.settings.space if d.path.startswith("lr_split.")]
        reason = (f"schedule {schedule} sets every group's lr from one scalar max_lr" if schedule in SCALAR_LR_SCHEDULES
                  else "see the lr traces in the report")
        notes.append(f"lr split {plan.lr_split!r} did NOT hold in {sum(s.split_broken for s in broken)} of "
                     f"{sum(s.measured for s in broken)} trials ({_names(broken)}): the groups' lrs departed from its "
                     f"ratios by up to {max(s.max_split_deviation for s in broken):.0%} ({reason})."
                     + (f" The searched {', '.join(searched)} did not set the lrs it was meant to."
                        if searched else ""))
    return notes


def baseline_flops_per_step(plan: StudyPlan, summaries: list[StrategySummary]) -> float | None:
    """FLOPs of full_finetune from this sweep or, if it ran in an earlier one, from its study."""
    for summary in summaries:
        if summary.strategy == BASELINE:
            return summary.flops_per_step
    try:
        study = optuna.load_study(study_name=study_name(plan.experiment, BASELINE, plan.lr_split),
                                  storage=plan.storage)
    except KeyError:
        return None
    return StrategySummary.of(BASELINE, study).flops_per_step
