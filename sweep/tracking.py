"""MLflow records: one parent run per strategy study, one nested run per trial.

The tags and metric names here are the contract the report reads back.
"""

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import BAD_REQUEST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from torch import nn

from sweep.checkpoint import Step
from sweep.data import Task
from sweep.errors import ConfigError, choice_error, one_line
from sweep.faults import crash_point
from sweep.paths import sqlite_path
from sweep.stages import stage
from sweep.stores import check_not_locked, first_use, retry_schema_race
from sweep.train import EpochMetrics
from sweep.trial import TrialResult

ROLE = "sweep.role"
STUDY = "optuna.study_name"
TRIAL_NUMBER = "optuna.trial_number"
STATE = "sweep.state"  # finished | pruned | failed
DEVICE = "device"  # what a trial trained on: known only where it runs
NODE = "sweep.node"  # where a trial's latest attempt ran: the Ray node id, or the host name when run locally
WORKER_PROCESS = "sweep.worker"  # host:pid of the process that ran it
PARAM_LENGTH = 6000  # MLflow's limit on a param value
ATTEMPT_FIRST_EPOCH = "attempt_first_epoch"  # metric, step n: the first epoch the trial's attempt n trained (1: fresh)
BACKBONE = "model.backbone"  # where the backbone's weights come from, in words
BACKBONE_SHA256 = "backbone.sha256"  # of the backbone's state the trial started from
PHASES = "freeze.phases"  # what each phase froze, for how many epochs, in words
PHASE_SEPARATOR = " | "
LOG_MODEL_CHOICES = ("none", "best")  # tracking.log_model
STUDY_PARAMS = ("strategy", "lr_split", "freeze.selection")
"""Params (and tags) that say which study a trial belongs to; the rest of its params are its configuration."""
EXPERIMENT_KIND = "mlflow.experimentKind"
CLASSIC_TRAINING = "custom_model_development"  # the kind's value for training runs; without it MLflow 3 opens its
#                                                GenAI overview rather than the runs
REPEAT = "sweep.repeat"  # a confirmation run's index r, 0-based
CHOSEN_TRIAL = "sweep.chosen_trial"  # the trial whose configuration a repeat re-runs; NOTHING_SEARCHED if none
NOTHING_SEARCHED = "none"
SEED = "sweep.seed"  # the seed a repeat ran with
DRIVER = "sweep.driver"  # host:pid of the sweep process that claimed a repeat, to resume it once that process is gone
# The side-by-side timing, on each study's parent run: <name>.median, <name>.q1, <name>.q3
STEP_MS = "timing.step_ms"  # milliseconds per training step
RATIO = "timing.vs_full_finetune"  # within-round ratio of median steps to full_finetune's
QUANTILES = ("median", "q1", "q3")
SESSION = "timing.session"  # tag: figures with the same session were measured side by side
# A grid sweep (search.grid) tags each study's parent run, as JSON:
GRID = "sweep.grid"  # the whole grid, {key: [values]}
GRID_POINT = "sweep.grid_point"  # this study's point, {key: value}; {} for the baseline's study
GRID_STANDS_FOR = "sweep.grid_stands_for"  # the baseline's: the points that freeze nothing, [{key: value}]


DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
"""The SQLAlchemy dialects MLflow stores runs in; their artifacts go where MLflow's client puts them."""


def artifact_location(uri: str, results_dir: Path) -> str | None:
    """Where a new experiment keeps its artifacts (config.yaml, reports, models): beside a SQLite database, and
    under results_dir for another database (MLflow's default there is ./mlruns under wherever the command ran);
    None for a tracking server, which has its own artifact root."""
    if uri.partition("://")[0].split("+")[0] not in DATABASES:
        return None
    database = sqlite_path(uri)
    folder = database.resolve().parent if database is not None else results_dir.resolve()
    return (folder / "mlartifacts").as_uri()


def artifacts_beside(uri: str, location: str, results_dir: Path) -> bool:
    """Whether an experiment's recorded artifact location is where this store keeps artifacts. False for a
    SQLite database copied or moved from elsewhere: its experiments still name the old absolute path."""
    expected = artifact_location(uri, results_dir)
    return expected is None or location == expected or location.startswith(f"{expected}/")


def quiet_mlflow() -> None:
    """Keep MLflow's and its migrations' chatter out of the user's terminal, and fail fast on dead servers."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_reachable(uri: str) -> bool:
    """Talk to the tracking store once, so an unreachable, locked or malformed URI fails before any work.

    This first contact creates a fresh store's schema: serialised for a local
    SQLite file, retried for a database that workers started together. True: it
    created a SQLite database.
    """
    quiet_mlflow()
    database = sqlite_path(uri)
    check_not_locked(database, "MLflow store")
    try:
        with first_use(database):
            new = database is not None and not database.exists()
            if new:
                with stage(f"creating the MLflow database {database}"):
                    create_sqlite_store(database)
            retry_schema_race(lambda: MlflowClient(uri).search_experiments(max_results=1))
        return new
    except ConfigError:
        raise
    except Exception as err:  # MLflow raises many types here: all mean "this store cannot be used"
        remedy = "move it aside" if database is not None else "start the server"
        raise ConfigError(f"cannot use MLflow tracking URI {uri!r} ({one_line(err)[:200]}); {remedy} or pass "
                          "tracking.uri=URI (e.g. sqlite:////abs/path/mlflow.db or http://host:5000)") from None


def create_sqlite_store(database: Path) -> None:
    """MLflow's schema, made in a file beside `database` and then moved into place: a process killed while the
    migrations run (seconds, on a first run) leaves no half-made store that every later run would refuse.
    Call with the store's `first_use` lock held."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    creating = database.with_name(f"{database.name}.creating")
    creating.unlink(missing_ok=True)  # a killed creator's: with the lock held, no one else is making it
    SqlAlchemyStore(f"sqlite:///{creating}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()
    crash_point("store-migrated")
    os.replace(creating, database)


def as_params(values: Mapping[str, Any]) -> list[Param]:
    return [Param(key, str(value)[:PARAM_LENGTH]) for key, value in values.items()]


def as_metrics(values: Mapping[str, float], step: int = 0) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(key, value, now, step) for key, value in values.items()]


def as_tags(values: Mapping[str, str]) -> list[RunTag]:
    return [RunTag(key, str(value)) for key, value in values.items()]


def carrying(identity: Mapping[str, str]) -> str:
    """A runs search for the runs carrying every tag of `identity`."""
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in identity.items())


def earliest_run(client: MlflowClient, experiment_id: str, identity: Mapping[str, str]) -> Run | None:
    """The earliest run carrying every tag of `identity`, should workers racing each other have created several."""
    runs = client.search_runs([experiment_id], filter_string=carrying(identity),
                              order_by=["attributes.start_time ASC", "attributes.run_id ASC"], max_results=1)
    return runs[0] if runs else None


def earliest_of_each(runs: Iterable[Run], keys: Sequence[str]) -> list[Run]:
    """The earliest run (start time, then id) of each identity that the tags `keys` give: the run a claim picks
    (`Tracker._claim`). Two drivers may both have won one, should the run stamped earlier be stored later (a
    slow insert, a clock behind); both then ran the same seed, which must count once."""
    chosen: dict[tuple[str | None, ...], Run] = {}
    for run in sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id)):
        chosen.setdefault(tuple(run.data.tags.get(key) for key in keys), run)
    return list(chosen.values())


def shared_write(write: Callable[[], None]) -> None:
    """Do `write`, which skips what the store already holds, again if a worker writing the same records beat it.

    Workers sharing a study write the same records at once: each writes the study's summary onto its parent run as
    it ends the study, and the task's dataset (one per experiment) as its first trial starts. MLflow's SQL store
    reads what it holds, then inserts what is new, so the slower worker's insert fails on the key the faster one
    has just stored (BAD_REQUEST: the database's duplicate key). Done again, the write finds those records and
    stores the rest; a param of another value still fails (INVALID_PARAMETER_VALUE).
    """
    try:
        write()
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(BAD_REQUEST):
            raise
        write()


@dataclass(frozen=True)
class NewRun:
    """A trial's run before it is linked to its Optuna trial: its first attempt creates it, and a later one (after
    a kill, a Ray retry) finds it by the trial's tags. Created on the attempt's writer thread, off the driver's path."""

    experiment_id: str
    name: str
    tags: dict[str, str]

    def find_or_create(self, client: MlflowClient) -> Run:
        identity = {key: self.tags[key] for key in (ROLE, STUDY, TRIAL_NUMBER)}
        found = earliest_run(client, self.experiment_id, identity)
        if found is not None:
            return found
        run = client.create_run(self.experiment_id, run_name=self.name, tags=self.tags)
        crash_point("run-created")
        return run


def outcome_tags(run_name: str, state: str) -> dict[str, str]:
    """`sweep.state`; pruned and failed runs also say so in their name, which MLflow's runs table shows
    (an earlier attempt's outcome in the name is replaced). The name is only written when it changes:
    renaming a run costs a store round trip of its own."""
    name = run_name.split(" (")[0]
    renamed = name if state == "finished" else f"{name} ({state})"
    return {STATE: state} | ({MLFLOW_RUN_NAME: renamed} if renamed != run_name else {})


def dataset_input(task: Task) -> DatasetInput:
    """The task as an MLflow dataset input (name, digest, split sizes), shown in the runs table's Dataset column."""
    profile = json.dumps(task.split_sizes() | {"classes": task.num_classes})
    dataset = Dataset(task.name, task.digest(), source_type="code", source=json.dumps({"task": task.name}),
                      profile=profile)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])


@dataclass(frozen=True)
class JobTracking:
    """How an attempt at a trial, wherever it runs, records into the trial's run."""

    uri: str
    system_metrics: bool = False  # MLflow's system-metrics monitor on every trial run
    write_every_s: float = 5.0  # the longest a record waits to be written: how far MLflow's live view may lag


@dataclass(frozen=True)
class EarlierAttempts:
    """What the attempts before this one logged into a trial's run (nothing, for the first)."""

    run_name: str
    epochs: int  # the last epoch step logged
    keys: frozenset[str]  # every metric logged
    attempts: int  # attempts that trained an epoch


class TrialRun:
    """The nested MLflow run of one Optuna trial, continued by one attempt at it.

    Records are collected into one batch, which a writer thread writes in a single call (in the order
    given, so training goes on meanwhile) once `write_every_s` have passed since the last write, before
    a checkpoint is put in place (`when_recorded` queues that behind them), and at the end of the
    attempt, which waits for them all (then Optuna hears the outcome). A trial of short epochs so writes
    at its start, at its checkpoint and at its end, not once per epoch. Not MLflow's own asynchronous
    logging: ending any run stops its queue, which costs up to a second.

    A later attempt at a trial (after a killed sweep, a Ray retry, an unreadable checkpoint) repeats,
    identically, what the one before it did since its last checkpoint; what that attempt logged is not
    logged twice: neither an epoch's step nor a final metric. Each attempt records the first epoch it
    trained (`ATTEMPT_FIRST_EPOCH`), so the run shows where it resumed.
    """

    def __init__(self, run: str | NewRun, client: MlflowClient, writer: ThreadPoolExecutor,
                 write_every_s: float) -> None:
        self.run = run
        self.run_id = run if isinstance(run, str) else None  # a new run's once the writer has found or created it
        self.client = client
        self.writer = writer
        self.write_every_s = write_every_s
        self._attempt_logged = False
        self._pending: list[Future] = []
        self._earlier: Future[EarlierAttempts] | None = None
        self._metrics: list[Metric] = []
        self._tags: dict[str, str] = {}
        self._written_at = time.perf_counter()

    def open(self, tags: Mapping[str, str], params: Mapping[str, Any], dataset: DatasetInput) -> None:
        """Start the attempt while the first epoch trains: read what earlier attempts logged, and write this one's
        tags (its first records) and the run's params and dataset where they are missing."""
        self._earlier = self.writer.submit(self._continue, tags, params, dataset)
        self._pending.append(self._earlier)

    def _continue(self, tags: Mapping[str, str], params: Mapping[str, Any], dataset: DatasetInput) -> EarlierAttempts:
        run = self.client.get_run(self.run) if isinstance(self.run, str) else self.run.find_or_create(self.client)
        self.run_id = run.info.run_id
        metrics = run.data.metrics

        def history(key: str) -> list[Metric]:  # read only for the metrics the run holds: none, for a first attempt
            return self.client.get_metric_history(self.run_id, key) if key in metrics else []

        if run.info.status != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        missing = {key: value for key, value in params.items() if key not in run.data.params}
        shared_write(lambda: self.client.log_batch(self.run_id, params=as_params(missing), tags=as_tags(tags)))
        if not (run.inputs and run.inputs.dataset_inputs):  # a run just created has no inputs yet
            shared_write(lambda: self.client.log_inputs(self.run_id, [dataset]))
        return EarlierAttempts(run.info.run_name, max((m.step for m in history("val_accuracy")), default=0),
                               frozenset(metrics), len(history(ATTEMPT_FIRST_EPOCH)))

    @property
    def earlier(self) -> EarlierAttempts:
        return self._earlier.result()

    def found_run_id(self) -> str:
        """The run's id, once the writer thread has found or created the run."""
        self._earlier.result()
        return self.run_id

    def _write(self) -> None:
        """Hand the batch collected so far to the writer thread."""
        if self._metrics or self._tags:
            self._pending.append(self.writer.submit(self._log_batch, self._metrics, as_tags(self._tags)))
        self._metrics, self._tags = [], {}
        self._written_at = time.perf_counter()

    def _log_batch(self, metrics: list[Metric], tags: list[RunTag]) -> None:
        self.client.log_batch(self.run_id, metrics, tags=tags)  # on the writer thread: run_id is known there

    def when_recorded(self, step: Step) -> None:
        """Run `step` on the writer thread once the records collected so far are stored: they are handed over
        now, and training goes on while they are written."""
        self._write()
        self._pending.append(self.writer.submit(step))

    def log_epoch(self, metrics: EpochMetrics) -> None:
        """The epoch's curves and traces (`sweep.trace`)."""
        if not self._attempt_logged:
            self._metrics += as_metrics({ATTEMPT_FIRST_EPOCH: metrics.epoch}, step=self.earlier.attempts)
            self._attempt_logged = True
        if metrics.epoch > self.earlier.epochs:
            self._metrics += as_metrics({"val_accuracy": metrics.val_accuracy, "train_loss": metrics.train_loss,
                                         **metrics.trace}, step=metrics.epoch)
        if time.perf_counter() - self._written_at >= self.write_every_s:
            self._write()

    def log_result(self, result: TrialResult) -> None:
        """The trial's final figures and what it ran, with its outcome (finished or pruned)."""
        final = result.final_metrics()
        final.pop("val_accuracy")  # already logged per epoch; its latest value is the final one
        phases = PHASE_SEPARATOR.join(f"{p.phase}: {p.describe()}" for p in result.phases)
        self._metrics += as_metrics({k: v for k, v in final.items() if k not in self.earlier.keys})
        self._tags |= {BACKBONE_SHA256: result.backbone_sha256, PHASES: phases,
                       **outcome_tags(self.earlier.run_name, "pruned" if result.stopped_early else "finished")}

    def set_failed(self) -> None:
        self._tags |= outcome_tags(self.earlier.run_name, "failed")

    def end(self, status: str) -> None:
        self._write()
        self._pending.append(self.writer.submit(lambda: self.client.set_terminated(self.run_id, status)))

    def log_model(self, net: nn.Module, example: torch.Tensor) -> None:
        """The trained network as an MLflow model of this run (the active one), with the signature of one input
        example.

        Pickled: torch.export cannot trace the grad-mode switches of a frozen prefix, so loading it
        (mlflow.pytorch.load_model) needs this package importable.
        """
        with torch.no_grad():
            signature = infer_signature(example.numpy(), net.eval()(example).numpy())
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # its warning that pickle is not pt2
        mlflow.pytorch.log_model(net, name="model", signature=signature, serialization_format="pickle",
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def flush(self) -> None:
        """Write every record collected so far, and wait until it is written; a failed write raises here."""
        self._write()
        pending, self._pending = self._pending, []
        for write in pending:
            write.result()


class Tracker:
    def __init__(self, uri: str, experiment: str, results_dir: Path, system_metrics: bool = False,
                 log_model: str = "none", write_every_s: float = JobTracking.write_every_s) -> None:
        if log_model not in LOG_MODEL_CHOICES:
            raise choice_error("tracking.log_model", log_model, LOG_MODEL_CHOICES)
        self.log_best_models = log_model == "best"
        quiet_mlflow()
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        self.experiment_id = self._experiment_id(experiment, artifact_location(uri, results_dir))
        mlflow.set_experiment(experiment_id=self.experiment_id)
        self.uri = uri
        self.for_jobs = JobTracking(uri, system_metrics, write_every_s)
        self._study_runs: dict[str, str] = {}  # study name -> its parent run

    def _experiment_id(self, name: str, artifacts: str | None) -> str:
        """Get or create; a worker that loses the race to create it uses the winner's."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if EXPERIMENT_KIND not in found.tags:  # made by an older version
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, CLASSIC_TRAINING)
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts,
                                                 tags={EXPERIMENT_KIND: CLASSIC_TRAINING})
        except MlflowException:
            return self.client.get_experiment_by_name(name).experiment_id

    def _earliest(self, identity: dict[str, str]) -> str | None:
        run = earliest_run(self.client, self.experiment_id, identity)
        return run.info.run_id if run is not None else None

    @cached_property
    def _context_tags(self) -> dict[str, str]:
        """What MLflow tags a run it starts itself with (source, user, git commit), looked up once."""
        return run_context.resolve_tags()

    def _claim(self, name: str, identity: dict[str, str], tags: dict[str, str]) -> str | None:
        """Create the run `identity` names; a worker that lost the race deletes its copy and gets None."""
        tags = {**self._context_tags, **identity, **tags}
        mine = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        winner = self._earliest(identity)
        if winner != mine:
            self.client.delete_run(mine)
            return None
        return mine

    def study_run_id(self, study_name: str) -> str | None:
        """The study's parent run, None until its first trial or repeat. Once found it is remembered: a parent
        run never changes (a worker that loses the race to create it deletes only its own copy)."""
        if study_name not in self._study_runs:
            found = self._earliest({ROLE: "study", STUDY: study_name})
            if found is None:
                return None
            self._study_runs[study_name] = found
        return self._study_runs[study_name]

    def _create_study_run(self, study_name: str, tags: dict[str, str]) -> str:
        mine = self._claim(study_name, {ROLE: "study", STUDY: study_name}, tags)
        if mine is not None:
            self._study_runs[study_name] = mine
        return mine or self.study_run_id(study_name)

    def claim_repeat_run(self, parent_run_id: str, name: str, identity: dict[str, str],
                         tags: dict[str, str]) -> str | None:
        """The nested run of a new confirmation run, unless another driver already has the one `identity` names."""
        return self._claim(name, {ROLE: "repeat", **identity}, self._nested_tags("repeat", parent_run_id, name, tags))

    def repeat_runs(self, study_name: str) -> list[Run]:
        """Every confirmation run of a study, whichever configuration it confirmed."""
        return self.client.search_runs([self.experiment_id], carrying({ROLE: "repeat", STUDY: study_name}),
                                       max_results=1000)

    def end_study_run(self, study_name: str) -> None:
        """End a parent run left RUNNING by a worker killed after its study's last trial."""
        run_id = self.study_run_id(study_name)
        if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "FINISHED")

    def find_trial_run(self, study_name: str, trial_number: int) -> str | None:
        """The run of a trial that was never linked to it (its attempts' workers died)."""
        return self._earliest({ROLE: "trial", STUDY: study_name, TRIAL_NUMBER: str(trial_number)})

    def record_study(self, study_name: str, metrics: Mapping[str, float], params: Mapping[str, Any],
                     tags: Mapping[str, str], config: dict[str, Any], dataset: DatasetInput) -> None:
        """A study's summary onto its parent run (none if the study has not run a trial in this store)."""
        run_id = self.study_run_id(study_name)
        if run_id is None:
            return
        best_run = tags.get("best.run_id")
        models = self.client.search_logged_models([self.experiment_id], f"source_run_id = '{best_run}'",
                                                  max_results=1) if best_run and self.log_best_models else []
        tags = {**tags, **({"best.model_uri": models[0].model_uri} if models else {})}
        shared_write(lambda: self.client.log_batch(run_id, as_metrics(metrics), as_params(params), as_tags(tags)))
        shared_write(lambda: self.client.log_inputs(run_id, [dataset]))
        self.client.log_dict(run_id, config, "config.yaml")

    @contextmanager
    def study_run(self, study_name: str, tags: dict[str, str]) -> Iterator[str]:
        """The parent run of a study; running the sweep again, or another worker, continues the same parent.

        Only the client is used, never MLflow's active run: a driver keeps every strategy's parent open at once.
        """
        run_id = self.study_run_id(study_name)
        if run_id is None:
            run_id = self._create_study_run(study_name, tags)  # RUNNING as it is created
        else:
            self.client.update_run(run_id, status="RUNNING")
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")

    @staticmethod
    def _nested_tags(role: str, parent_run_id: str, name: str, tags: dict[str, str]) -> dict[str, str]:
        return {ROLE: role, MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: name, **tags}

    def new_trial_run(self, parent_run_id: str, name: str, tags: dict[str, str]) -> NewRun:
        """The nested run of a trial not yet linked to one: whichever attempt runs first creates it (and every
        attempt describes it: its params and dataset)."""
        return NewRun(self.experiment_id, name, {**self._context_tags,
                                                 **self._nested_tags("trial", parent_run_id, name, tags)})

    def fail_trial_run(self, run_id: str) -> None:
        """End the run of a trial that could not report its own end (every attempt's worker died)."""
        name = self.client.get_run(run_id).info.run_name
        self.client.log_batch(run_id, tags=as_tags(outcome_tags(name, "failed")))
        self.client.set_terminated(run_id, "FAILED")


@contextmanager
def continue_trial_run(tracking: JobTracking, run: str | NewRun, tags: Mapping[str, str],
                       params: Mapping[str, Any], dataset: DatasetInput, active: bool = False) -> Iterator[TrialRun]:
    """One attempt at a trial, in whatever process runs it; an exception escaping the block ends the run FAILED.

    The block ends once every record of the attempt is stored. `active`: make it MLflow's active run as well,
    for what needs one (`mlflow.pytorch.log_model`, the system-metrics monitor); otherwise only the client is
    used, which saves three store round trips.
    """
    quiet_mlflow()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer") as writer:  # one: records in order
        trial_run = TrialRun(run, MlflowClient(tracking.uri), writer, tracking.write_every_s)
        trial_run.open(tags, params, dataset)
        if active:
            mlflow.set_tracking_uri(tracking.uri)
            mlflow.start_run(run_id=trial_run.found_run_id(), log_system_metrics=tracking.system_metrics)
        status = "FAILED"
        try:
            yield trial_run
            status = "FINISHED"
        finally:
            trial_run.end(status)
            try:
                trial_run.flush()
            finally:
                if active:
                    mlflow.end_run(status)
