"""A trial as a self-contained job: what the driver hands an executor, and what comes back.

The driver (the `sweep.run` process) asks Optuna for a trial and packs everything
the trial needs into a `TrialJob`. `run_job` trains it wherever the executor runs
it, in this process or on a Ray worker of another machine, and talks to the driver
only through `on_epoch` and its outcome: nothing here touches the Optuna storage,
so workers need no database. Every attempt at a trial (the first, which creates its
MLflow run, one after a killed sweep, one Ray retries on another node) continues
the same MLflow run from the trial's last checkpoint; the outcome names the run, and
the driver links the trial to it before Optuna hears how it ended.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow.entities import DatasetInput
from torch import nn

from sweep.data import Task
from sweep.errors import ConfigError
from sweep.faults import crash_point
from sweep.feature_cache import FeatureCache
from sweep.models import ModelDef
from sweep.threads import threads_for
from sweep.tracking import DEVICE, NODE, WORKER_PROCESS, JobTracking, NewRun, TrialRun, continue_trial_run
from sweep.train import EpochMetrics
from sweep.trial import RunSettings, TrialResult, TrialSpec, resolve_device, run_trial

ReportEpoch = Callable[[EpochMetrics], bool]
"""Hands one epoch's values to the driver; True: the driver prunes the trial, stop training."""


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a sweep trains on: built once by the driver, shipped once to a cluster."""

    model_def: ModelDef
    task: Task
    dataset: DatasetInput  # the task as MLflow records it: every trial's run names it
    feature_cache: FeatureCache | None = None  # cached_prefix's features; each process holds its own in memory


@dataclass(frozen=True)
class TrialJob:
    key: str  # which trial an epoch report belongs to: "<study name>#<trial number>"
    spec: TrialSpec
    settings: RunSettings  # as configured: threads None are counted where the trial runs
    run: str | NewRun  # the trial's MLflow run: its id once the driver has linked it, else how to find or create it
    params: dict[str, object]  # the run's params: the first attempt to find them missing logs them
    tracking: JobTracking
    checkpoint_dir: Path  # under results_dir; its parent exists before the job is handed out
    log_model_above: float | None = None  # log the trained model if its val accuracy beats this; None: never


@dataclass(frozen=True)
class Placement:
    """Where an attempt at a trial runs, as its executor knows it."""

    node: str  # the host, or the Ray node
    worker: str  # host:pid of the process
    sharing: int = 1  # workers that share this host's cores (train.threads unset); 1 where the executor gave cores

    def tags(self) -> dict[str, str]:
        return {NODE: self.node, WORKER_PROCESS: self.worker}


@dataclass(frozen=True)
class TrialOutcome:
    result: TrialResult | None = None
    error: str | None = None  # "Type: message" when the trial failed
    run_id: str | None = None  # the MLflow run the attempt continued, for the driver to link its trial to
    run_ended: bool = True  # False: no attempt could end the MLflow run (its workers died); the driver must

    @classmethod
    def lost(cls, error: str) -> "TrialOutcome":
        return cls(error=error, run_ended=False)


def run_job(job: TrialJob, inputs: TrialInputs, on_epoch: ReportEpoch, placement: Placement) -> TrialOutcome:
    """One attempt at a trial: train it (from its checkpoint, if an earlier attempt left one) into its MLflow run.

    The run is tagged with this attempt's node and worker. A failure is returned, not raised: it is the
    trial's, not the executor's, and retrying elsewhere would fail the same way.
    """
    tags = {DEVICE: str(resolve_device(job.spec.device)), **placement.tags()}
    # Counted before each trial: a worker started alone gives up cores once others have started.
    settings = replace(job.settings, threads=threads_for(job.settings.threads, placement.sharing))
    run = None
    try:
        with continue_trial_run(job.tracking, job.run, tags, job.params, inputs.dataset,
                                active=job.tracking.system_metrics or job.log_model_above is not None) as run:
            result = _train(job, settings, inputs, run, on_epoch)
            run.log_result(result)
            crash_point("trial-logged")
    except Exception as err:  # any error inside a trial fails that trial only; the sweep goes on
        return TrialOutcome(error=f"{type(err).__name__}: {err}", run_id=run and run.run_id)
    return TrialOutcome(result, run_id=run.run_id)


def _train(job: TrialJob, settings: RunSettings, inputs: TrialInputs, run: TrialRun,
           on_epoch: ReportEpoch) -> TrialResult:
    def log_and_report(metrics: EpochMetrics) -> bool:
        run.log_epoch(metrics)
        return on_epoch(metrics)

    def log_model_if_best(net: nn.Module, result: TrialResult) -> None:
        """tracking.log_model=best: the model of a finished trial that beats its study's best when it started."""
        if job.log_model_above is not None and not result.stopped_early and result.val_accuracy > job.log_model_above:
            run.log_model(net, inputs.task.val[0][0].unsqueeze(0))

    try:
        if not job.checkpoint_dir.parent.is_dir():
            raise ConfigError(f"{job.checkpoint_dir.parent} is missing where this trial runs: on a cluster, "
                              "results_dir must be a directory every node shares, so a retried trial finds its "
                              "checkpoint")
        return run_trial(job.spec, inputs.task, inputs.model_def, on_epoch=log_and_report,
                         checkpoint_dir=job.checkpoint_dir, settings=settings, feature_cache=inputs.feature_cache,
                         when_recorded=run.when_recorded, on_trained=log_model_if_best)
    except Exception:
        run.set_failed()
        raise

