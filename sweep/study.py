"""One strategy's Optuna study: its trials, their MLflow runs, progress, and the end-of-sweep summary."""

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from tabulate import tabulate
from tqdm import tqdm

from sweep.config import Workspace, flatten, trial_spec, with_values
from sweep.data import Task
from sweep.models import ModelDef
from sweep.search import (FINAL_STATES, SearchSettings, check_study, finished_trials, fingerprint_of, open_study,
                          study_name)
from sweep.threads import threads_for
from sweep.tracking import STUDY, TRIAL_NUMBER, Tracker, TrialRun
from sweep.train import EpochMetrics
from sweep.trial import RunSettings, resolve_device, run_trial
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
    run_settings: RunSettings  # threads None: share the cores among this host's live workers
    workers: WorkerRegistry

    def trial_settings(self) -> RunSettings:
        """Counted before each trial: a worker started alone gives up cores once others have started."""
        return replace(self.run_settings, threads=threads_for(self.run_settings.threads, self.workers.live()))

    @property
    def lr_split(self) -> str:
        return self.trial_config["lr_split"]["name"]

    def fingerprint(self) -> dict[str, str]:
        searched = {d.path for d in self.settings.space}
        return fingerprint_of({k: v for k, v in flatten(self.trial_config).items() if k not in searched})

    def check_studies(self) -> None:
        for strategy in self.strategies:
            check_study(self.storage, study_name(self.experiment, strategy, self.lr_split), self.fingerprint())


class StrategyStudy:
    def __init__(self, plan: StudyPlan, strategy: str) -> None:
        self.plan = plan
        self.strategy = strategy
        self.name = study_name(plan.experiment, strategy, plan.lr_split)
        self.study = open_study(plan.storage, self.name, plan.settings, plan.fingerprint())
        self._bar: tqdm | None = None
        self._best = "-"  # best val accuracy for the progress bar; it can only change between trials

    def run(self) -> None:
        """Top the study up to `n_trials` finished trials (a second run of the same command adds none).

        Trials whose worker on this host died (killed, out of memory, power cut)
        are finished first, from their last checkpoint, as the same Optuna
        trial and the same MLflow run.
        """
        interrupted = self._interrupted_trials()
        remaining = self.plan.settings.n_trials - len(finished_trials(self.study)) - len(interrupted)
        if remaining <= 0 and not interrupted:
            return
        tags = {"strategy": self.strategy, "lr_split": self.plan.lr_split}
        with self.plan.tracker.study_run(self.name, tags), tqdm(total=max(remaining, 0) + len(interrupted),
                                                                 desc=self.strategy, unit="trial",
                                                                 dynamic_ncols=True) as self._bar:
            for frozen in interrupted:
                self._resume(frozen)
                self._bar.update()
            if remaining > 0:
                # Workers sharing the study stop once it holds n_trials, whoever ran them.
                enough = optuna.study.MaxTrialsCallback(self.plan.settings.n_trials, states=FINAL_STATES)
                self.study.optimize(self._objective, n_trials=remaining, catch=(Exception,),
                                    callbacks=[lambda study, trial: self._bar.update(), enough])

    def _interrupted_trials(self) -> list[FrozenTrial]:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [t for t in running if worker_is_dead(t.user_attrs.get("worker"))]

    def _resume(self, frozen: FrozenTrial) -> None:
        """Run an interrupted trial again and tell Optuna its outcome, as `study.optimize` would have."""
        trial = optuna.Trial(self.study, frozen._trial_id)
        try:
            self.study.tell(trial, self._objective(trial))
        except optuna.TrialPruned:
            self.study.tell(trial, state=TrialState.PRUNED)
        except Exception:  # recorded as failed, like study.optimize(catch=...) does; the sweep goes on
            self.study.tell(trial, state=TrialState.FAIL)

    def checkpoint_dir(self, trial: optuna.Trial) -> Path:
        return self.plan.workspace.results_dir / "checkpoints" / self.name / f"trial-{trial.number}"

    def _objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        settings = self.plan.settings
        values = {dim.path: dim.suggest(trial) for dim in settings.space}
        config = with_values(self.plan.trial_config, values)
        spec = trial_spec(config, self.strategy, self.plan.seed + trial.number)
        tags = {"strategy": self.strategy, "lr_split": self.plan.lr_split, "device": str(resolve_device(spec.device)),
                "model.pretrained": str(self.plan.model_def.pretrained).lower(),
                STUDY: self.name, TRIAL_NUMBER: str(trial.number)}
        trial.set_user_attr("worker", WORKER)
        self._best = self._best_so_far()
        self._bar.set_postfix(trial=trial.number, epoch=f"0/{spec.epochs}", best=self._best)  # visible from the start
        with self.plan.tracker.trial_run(f"{self.strategy}-{trial.number}", tags, flatten(config),
                                         run_id=trial.user_attrs.get("mlflow_run_id")) as run:
            trial.set_user_attr("mlflow_run_id", run.run_id)
            try:
                result = run_trial(spec, self.plan.task, self.plan.model_def,
                                   on_epoch=lambda metrics: self._after_epoch(trial, run, metrics, spec.epochs),
                                   checkpoint_dir=self.checkpoint_dir(trial), settings=self.plan.trial_settings())
            except Exception as err:
                run.set_state("failed")
                trial.set_user_attr("error", f"{type(err).__name__}: {err}")
                self._bar.write(f"{self.strategy}: trial {trial.number} failed: {type(err).__name__}: {err}",
                                file=sys.stderr)
                raise
            run.log_result(result)
            for key, value in result.final_metrics().items():
                trial.set_user_attr(key, value)
            run.set_state("pruned" if result.stopped_early else "finished")
        if result.stopped_early:
            raise optuna.TrialPruned(f"val_accuracy {result.val_accuracy:.4f} at epoch {len(result.history)}")
        if settings.multi_objective:
            return result.val_accuracy, result.train_time_s
        return result.val_accuracy

    def _after_epoch(self, trial: optuna.Trial, run: TrialRun, metrics: EpochMetrics, epochs: int) -> bool:
        run.log_epoch(metrics)
        self._bar.set_postfix(trial=trial.number, epoch=f"{metrics.epoch}/{epochs}",
                              val=f"{metrics.val_accuracy:.3f}", best=self._best)
        if self.plan.settings.multi_objective:
            return False
        trial.report(metrics.val_accuracy, metrics.epoch)
        return trial.should_prune()

    def _best_so_far(self) -> str:
        """One storage query, once per trial: with shared PostgreSQL studies this must stay off the epoch path."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return f"{max(t.values[0] for t in complete):.3f}" if complete else "-"


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

    @classmethod
    def of(cls, strategy: str, study: optuna.Study) -> "StrategySummary":
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        measured = [t for t in trials if "step_time_ms" in t.user_attrs]
        best = max(complete, key=lambda t: t.values[0], default=None)

        def median(key: str) -> float | None:
            values = [t.user_attrs[key] for t in measured if key in t.user_attrs]
            return statistics.median(values) if values else None

        drifts = [t.user_attrs["frozen_weight_drift"] for t in measured if "frozen_weight_drift" in t.user_attrs]
        return cls(strategy, len(complete), sum(t.state == TrialState.PRUNED for t in trials),
                   sum(t.state == TrialState.FAIL for t in trials),
                   best.values[0] if best else None, best.user_attrs.get("test_accuracy") if best else None,
                   median("step_time_ms"), median("flops_per_step"), max(drifts) if drifts else None)

    def frozen_verdict(self) -> str:
        if self.strategy == BASELINE:
            return "n/a (nothing frozen)"
        if self.max_frozen_weight_drift is None:
            return "not measured"
        return "yes" if self.max_frozen_weight_drift == 0 else f"NO: moved by {self.max_frozen_weight_drift:.3g}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(plan: StudyPlan, studies: Sequence[StrategyStudy]) -> None:
    summaries = [StrategySummary.of(s.strategy, s.study) for s in studies]
    baseline_flops = _baseline_flops(plan, summaries)
    rows = [[s.strategy, s.finished, s.pruned, s.failed, _fmt(s.best_val_accuracy, ".4f"),
             _fmt(s.best_test_accuracy, ".4f"), _fmt(s.median_step_time_ms, ".2f"),
             _fmt(s.flops_per_step / baseline_flops if s.flops_per_step and baseline_flops else None, ".3f"),
             s.frozen_verdict()] for s in summaries]
    headers = ["strategy", "finished", "pruned", "failed", "best val acc", "its test acc", "median step ms",
               f"FLOPs vs {BASELINE}", "frozen stayed frozen"]
    print(f"\nexperiment {plan.experiment!r}, lr split {plan.lr_split!r}, {plan.settings.n_trials} trials per strategy")
    print(tabulate(rows, headers=headers, tablefmt="github"))
    uri = plan.tracker.uri
    results = plan.workspace.results_dir
    print(f"\nBrowse the runs:   mlflow ui --backend-store-uri {uri}")
    print(f"Export the report: python -m sweep.report experiment={plan.experiment} results_dir={results}"
          + ("" if uri.startswith(f"sqlite:///{results}") else f" tracking.uri={uri}"))


def _baseline_flops(plan: StudyPlan, summaries: list[StrategySummary]) -> float | None:
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
