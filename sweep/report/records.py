"""The sweep's records read back: MLflow runs (params, metrics, curves) joined to the Optuna trials they belong to.

Only what the stores hold is used, so a report can be made on any machine that
reaches the tracking server and the Optuna storage. Optuna's trial states are
authoritative for counts; MLflow holds everything measured.
"""

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweep.errors import ConfigError
from sweep.grid import Grid, GridPoint
from sweep.paths import sqlite_path
from sweep.search import RUN_ATTR, is_database_url, journal_file, journal_path, storage_opener
from sweep.strategies import MECHANISMS
from sweep.trace import is_trace
from sweep.tracking import (BACKBONE_SHA256, CHOSEN_TRIAL, GRID, GRID_POINT, GRID_STANDS_FOR, REPEAT, ROLE, STATE,
                            STUDY, STUDY_PARAMS, TRIAL_NUMBER, check_reachable, earliest_of_each)

STATES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
UNFINISHED = "running"  # RUNNING or WAITING in Optuna: still going, or its process died
COUNTED = (*STATES.values(), UNFINISHED)
CURVES = ("val_accuracy", "train_loss")  # logged once per epoch, step = epoch number


@dataclass
class Sources:
    """Where the records are: the same settings, with the same defaults, as `python -m sweep.run`."""

    tracking_uri: str
    storage_url: str | None
    results_dir: Path

    @property
    def tracking_label(self) -> str:
        """The tracking URI for the report's reader: a database under the working directory as a relative path
        (`sqlite:///results/mlflow.db`), so a report committed to a repository names no machine's folders."""
        database = sqlite_path(self.tracking_uri)
        return self.tracking_uri if database is None else f"sqlite:///{_from_cwd(database)}"

    @property
    def storage_label(self) -> str:
        return self.storage_url or str(_from_cwd(journal_path(self.results_dir)))


def _from_cwd(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


@dataclass
class TrialRecord:
    experiment: str
    lr_split: str
    strategy: str
    number: int
    state: str
    run_id: str | None = None
    experiment_id: str | None = None  # MLflow's, for a link to the run
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # the trial's whole flattened config, as MLflow holds it
    searched: dict[str, float] = field(default_factory=dict)  # what Optuna sampled
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of every metric
    curves: dict[str, list[float]] = field(default_factory=dict)  # per epoch, in epoch order
    traces: dict[str, dict[int, float]] = field(default_factory=dict)  # sweep.trace's metrics: epoch -> value

    def metric(self, key: str) -> float | None:
        """A recorded metric, or one derived from them (`DERIVED`)."""
        derived = DERIVED.get(key)
        return derived(self) if derived else self.metrics.get(key)

    def trace(self, key: str) -> dict[int, float]:
        """A trace by epoch; empty where it was not recorded (records older than tracing, or nothing to trace)."""
        return self.traces.get(key, {})

    @property
    def backbone_sha256(self) -> str | None:
        return self.tags.get(BACKBONE_SHA256) or None

    @property
    def configuration(self) -> dict[str, str]:
        """Its params less those naming its study (`STUDY_PARAMS`): what a paired trial of another strategy shares."""
        return {k: v for k, v in self.params.items() if k not in STUDY_PARAMS}

    @property
    def measured(self) -> bool:
        """The trial got as far as its final measurements (finished, or pruned after training)."""
        return "test_accuracy" in self.metrics

    @property
    def epochs_run(self) -> int:
        return len(self.curves.get("val_accuracy", []))

    def train_flops(self) -> float | None:
        """FLOPs spent training: FLOPs of one batch per sample, times the samples trained, plus the one-off
        prefix FLOPs of a `cached_prefix` cache when this trial built it (its build time is in train_time_s too).

        `samples_per_s` is samples / train_time_s by construction, so their product is the samples trained.
        FLOPs of conv and linear layers grow linearly with the batch, so per-sample FLOPs are exact.
        """
        needed = [self.metric(k) for k in ("flops_per_step", "samples_per_s", "train_time_s")]
        batch_size = self.params.get("train.batch_size")
        if None in needed or batch_size is None or not self.epochs_run:
            return None
        flops, rate, seconds = needed
        samples = round(rate * seconds)
        probe_batch = min(int(batch_size), samples // self.epochs_run)  # the probe batch is the first one
        cache_build = self.metrics.get("cache_prefix_flops", 0.0) * self.metrics.get("cache_built", 0.0)
        return flops / probe_batch * samples + cache_build if probe_batch else None


DERIVED: dict[str, Callable[[TrialRecord], float | None]] = {"train_flops_est": TrialRecord.train_flops}


@dataclass
class StudyRecord:
    experiment: str
    lr_split: str
    strategy: str
    name: str
    study: optuna.Study
    trials: list[TrialRecord]
    repeats: list[TrialRecord] = field(default_factory=list)  # confirmation runs, of every configuration confirmed
    parent_metrics: dict[str, float] = field(default_factory=dict)  # the parent run's: the side-by-side timing
    parent_tags: dict[str, str] = field(default_factory=dict)

    @property
    def point(self) -> GridPoint:
        """Its grid point (search.grid); the empty point outside a grid."""
        return GridPoint(tuple(json.loads(self.parent_tags.get(GRID_POINT, "{}")).items()))

    @property
    def grid(self) -> Grid:
        """The grid of the sweep that last ran it; empty outside a grid."""
        return Grid(json.loads(self.parent_tags.get(GRID, "{}")))

    @property
    def stands_for(self) -> list[GridPoint]:
        """The baseline's: the grid points that freeze nothing, where every strategy is this study's run."""
        return [GridPoint(tuple(p.items())) for p in json.loads(self.parent_tags.get(GRID_STANDS_FOR, "[]"))]

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """The searched hyperparameters and their ranges."""
        found: dict[str, BaseDistribution] = {}
        for trial in self.study.get_trials(deepcopy=False):
            found.update(trial.distributions)
        return found


@dataclass
class Records:
    sources: Sources
    experiments: list[str]
    studies: list[StudyRecord]

    @property
    def trials(self) -> list[TrialRecord]:
        return [t for s in self.studies for t in s.trials]


def strategy_order(strategies: Sequence[str]) -> list[str]:
    """The registry's order (requires_grad ... full_finetune), strategies unknown to this version last."""
    known = [s for s in MECHANISMS.names() if s in strategies]
    return known + sorted(set(strategies) - set(known))


def check_sources(sources: Sources) -> None:
    """Refuse to read stores that are not there: MLflow and Optuna would silently create empty ones."""
    database = sqlite_path(sources.tracking_uri)
    if database is not None and not database.is_file():
        raise ConfigError(f"no MLflow records at {database}: run `python -m sweep.run` first, or pass "
                          "results_dir=DIR or tracking.uri=URI of the sweep")
    check_reachable(sources.tracking_uri)
    url = sources.storage_url
    if url is None or not is_database_url(url):
        journal = journal_path(sources.results_dir) if url is None else journal_file(url, Path.cwd())
        if not journal.is_file():
            raise ConfigError(f"no Optuna journal at {journal}; pass search.storage=URL (or the journal's path) of "
                              "the sweep's storage")


def load(sources: Sources, experiments: list[str]) -> Records:
    check_sources(sources)
    storage = storage_opener(sources.storage_url, sources.results_dir, Path.cwd())()
    client = MlflowClient(sources.tracking_uri)
    studies = [study for experiment in experiments for study in _load_experiment(client, storage, sources, experiment)]
    return Records(sources, experiments, studies)


def _experiment_id(client: MlflowClient, name: str, sources: Sources) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments(max_results=50) if e.name != "Default")
        raise ConfigError(f"no experiment {name!r} in {sources.tracking_uri}; "
                          f"known: {', '.join(known) if known else 'none'}")
    return experiment.experiment_id


def _runs(client: MlflowClient, experiment_id: str, role: str) -> list[Run]:
    """Every run of a role, page by page (a tracking server returns at most 1000 at a time)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{ROLE}` = '{role}'", max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _load_experiment(client: MlflowClient, storage: BaseStorage, sources: Sources, name: str) -> list[StudyRecord]:
    experiment_id = _experiment_id(client, name, sources)
    trial_runs = _runs(client, experiment_id, "trial")
    by_id = {run.info.run_id: run for run in trial_runs}
    by_number = {(run.data.tags.get(STUDY), run.data.tags.get(TRIAL_NUMBER)): run for run in trial_runs}
    parents = {run.data.tags[STUDY]: run for run in earliest_of_each(_runs(client, experiment_id, "study"), (STUDY,))}
    study_tags = {study_name: run.data.tags for study_name, run in parents.items()}
    repeat_runs: dict[str, list[Run]] = {}
    for run in earliest_of_each(_runs(client, experiment_id, "repeat"), (STUDY, CHOSEN_TRIAL, REPEAT)):
        repeat_runs.setdefault(run.data.tags.get(STUDY), []).append(run)
    order = strategy_order([tags["strategy"] for tags in study_tags.values()])
    studies = []
    for study_name, tags in sorted(study_tags.items(), key=lambda item: (item[1]["lr_split"],
                                                                         order.index(item[1]["strategy"]))):
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise ConfigError(f"study {study_name!r} recorded in MLflow is not in the Optuna storage "
                              f"{sources.storage_label}; pass search.storage=URL of the sweep") from None
        trials = []
        for trial in study.get_trials(deepcopy=False):
            run = by_id.get(trial.user_attrs.get(RUN_ATTR)) or by_number.get((study_name, str(trial.number)))
            trials.append(_trial_record(client, name, tags, trial, run))
        repeats = sorted((_repeat_record(name, tags, run) for run in repeat_runs.get(study_name, [])),
                         key=lambda r: (r.tags.get(CHOSEN_TRIAL, ""), r.number))
        parent = parents[study_name].data
        studies.append(StudyRecord(name, tags["lr_split"], tags["strategy"], study_name, study, trials, repeats,
                                   _finite(parent.metrics), dict(parent.tags)))
    _check_finished(name, [t for s in studies for t in (*s.trials, *s.repeats)])
    return studies


def _check_finished(experiment: str, trials: list[TrialRecord]) -> None:
    """A report needs at least one finished trial or repeat; say what the experiment holds instead."""
    if any(t.state == "finished" for t in trials):
        return
    counts = {state: sum(t.state == state for t in trials) for state in COUNTED}
    held = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no trials"
    raise ConfigError(f"experiment {experiment!r} has no finished trials yet ({held}): nothing to compare")


def _trial_record(client: MlflowClient, experiment: str, study_tags: dict[str, str], trial: FrozenTrial,
                  run: Run | None) -> TrialRecord:
    record = TrialRecord(experiment, study_tags["lr_split"], study_tags["strategy"], trial.number,
                         STATES.get(trial.state, UNFINISHED), searched=dict(trial.params))
    if run is None:
        return record
    record.run_id = run.info.run_id
    record.experiment_id = run.info.experiment_id
    record.tags = dict(run.data.tags)
    record.params = dict(run.data.params)
    record.metrics = _finite(run.data.metrics)
    for key in CURVES:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        record.curves[key] = [m.value for m in history]
    for key in filter(is_trace, record.metrics):
        record.traces[key] = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
    return record


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not math.isnan(v)}


def _repeat_record(experiment: str, study_tags: dict[str, str], run: Run) -> TrialRecord:
    """A confirmation run: numbered by its repeat index; its state from its tag (none yet: still running or
    its process died). Its curves are not read: the report uses its final figures only."""
    tags = dict(run.data.tags)
    return TrialRecord(experiment, study_tags["lr_split"], study_tags["strategy"], int(tags.get(REPEAT, -1)),
                       tags.get(STATE, UNFINISHED), run.info.run_id, run.info.experiment_id, tags,
                       dict(run.data.params), metrics=_finite(run.data.metrics))
