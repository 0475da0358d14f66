"""MLflow records: one parent run per strategy study, one nested run per trial.

The tags and metric names here are the contract the report reads back.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from sweep.errors import ConfigError, one_line
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
ATTEMPT_FIRST_EPOCH = "attempt_first_epoch"  # metric, step n: the first epoch the trial's attempt n trained (1: fresh)
PARAM_LENGTH = 6000  # MLflow's limit on a param value
BACKBONE = "model.backbone"  # where the backbone's weights come from, in words
BACKBONE_SHA256 = "backbone.sha256"  # of the backbone's state the trial started from
PHASES = "freeze.phases"  # what each phase froze, for how many epochs, in words
PHASE_SEPARATOR = " | "


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def artifact_location(uri: str) -> str | None:
    """Artifacts (the report) beside a SQLite database, not in MLflow's default ./mlruns under the current directory."""
    database = sqlite_path(uri)
    if database is None:
        return None  # a tracking server has its own artifact root
    return (database.resolve().parent / "mlartifacts").as_uri()


def artifacts_beside(uri: str, location: str) -> bool:
    """Whether an experiment's recorded artifact location is where this store keeps artifacts. False for a
    SQLite database copied or moved from elsewhere: its experiments still name the old absolute path."""
    expected = artifact_location(uri)
    return expected is None or location == expected or location.startswith(f"{expected}/")


def quiet_mlflow() -> None:
    """Keep MLflow's and its migrations' chatter out of the user's terminal, and fail fast on dead servers."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_reachable(uri: str) -> None:
    """Talk to the tracking store once, so an unreachable, locked or malformed URI fails before any work.

    This first contact creates a fresh store's schema: serialised for a local
    SQLite file, retried for a database that workers started together.
    """
    quiet_mlflow()
    database = sqlite_path(uri)
    check_not_locked(database, "MLflow store")
    try:
        with first_use(database):
            new = database is not None and not database.exists()
            with stage(f"creating the MLflow database {database}") if new else nullcontext():
                retry_schema_race(lambda: MlflowClient(uri).search_experiments(max_results=1))
    except ConfigError:
        raise
    except Exception as err:  # MLflow raises many types here: all mean "this store cannot be used"
        raise ConfigError(f"cannot use MLflow tracking URI {uri!r} ({one_line(err)[:200]}); start the server or pass "
                          "tracking.uri=URI (e.g. sqlite:////abs/path/mlflow.db or http://host:5000)") from None


class TrialRun:
    """The nested MLflow run of one Optuna trial.

    A later attempt at a trial (after a killed sweep, a Ray retry, an
    unreadable checkpoint) repeats, identically, what the one before it did
    since its last checkpoint; what that attempt logged is not logged twice:
    neither an epoch's step nor a final metric. Each attempt records the first
    epoch it trained (`ATTEMPT_FIRST_EPOCH`), so the run shows where it resumed.
    """

    def __init__(self, run_id: str, logged_epochs: int = 0, logged_keys: frozenset[str] = frozenset(),
                 attempt: int = 0) -> None:
        self.run_id = run_id
        self.logged_epochs = logged_epochs
        self.logged_keys = logged_keys
        self.attempt = attempt  # attempts at the trial that trained an epoch before this one
        self._attempt_logged = False

    @classmethod
    def continued(cls, client: MlflowClient, run_id: str) -> "TrialRun":
        """A trial's run, with what earlier attempts at the trial logged (nothing, for the first)."""
        epochs = client.get_metric_history(run_id, "val_accuracy")
        return cls(run_id, max((m.step for m in epochs), default=0), frozenset(client.get_run(run_id).data.metrics),
                   len(client.get_metric_history(run_id, ATTEMPT_FIRST_EPOCH)))

    def log_epoch(self, metrics: EpochMetrics) -> None:
        """The epoch's curves and traces (`sweep.trace`), in one call."""
        if not self._attempt_logged:
            mlflow.log_metric(ATTEMPT_FIRST_EPOCH, metrics.epoch, step=self.attempt)
            self._attempt_logged = True
        if metrics.epoch <= self.logged_epochs:
            return
        mlflow.log_metrics({"val_accuracy": metrics.val_accuracy, "train_loss": metrics.train_loss, **metrics.trace},
                           step=metrics.epoch)

    def log_result(self, result: TrialResult) -> None:
        final = result.final_metrics()
        final.pop("val_accuracy")  # already logged per epoch; its latest value is the final one
        mlflow.log_metrics({k: v for k, v in final.items() if k not in self.logged_keys})
        mlflow.set_tags({BACKBONE_SHA256: result.backbone_sha256,
                         PHASES: PHASE_SEPARATOR.join(f"{p.phase}: {p.describe()}" for p in result.phases)})

    def set_state(self, state: str) -> None:
        mlflow.set_tag(STATE, state)


class Tracker:
    def __init__(self, uri: str, experiment: str, system_metrics: bool = False) -> None:
        quiet_mlflow()
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        self.experiment_id = self._experiment_id(experiment)
        mlflow.set_experiment(experiment_id=self.experiment_id)
        self.system_metrics = system_metrics
        self.uri = uri

    def _experiment_id(self, name: str) -> str:
        """Get or create; a worker that loses the race to create it uses the winner's."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location(self.client.tracking_uri))
        except MlflowException:
            return self.client.get_experiment_by_name(name).experiment_id

    def _study_run_id(self, study_name: str) -> str | None:
        """The study's parent run: the earliest, should workers starting together have created several."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE}` = 'study' and tags.`{STUDY}` = '{study_name}'",
            order_by=["attributes.start_time ASC", "attributes.run_id ASC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def _create_study_run(self, study_name: str, tags: dict[str, str]) -> str:
        mine = self.client.create_run(self.experiment_id, run_name=study_name,
                                      tags={ROLE: "study", STUDY: study_name, **tags}).info.run_id
        winner = self._study_run_id(study_name)
        if winner != mine:
            self.client.delete_run(mine)
        return winner

    def end_study_run(self, study_name: str) -> None:
        """End a parent run left RUNNING by a worker killed after its study's last trial."""
        run_id = self._study_run_id(study_name)
        if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "FINISHED")

    def find_trial_run(self, study_name: str, trial_number: int) -> str | None:
        """The run a killed worker created for a trial before it could link the trial to it."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=1, filter_string=f"tags.`{ROLE}` = 'trial' and "
            f"tags.`{STUDY}` = '{study_name}' and tags.`{TRIAL_NUMBER}` = '{trial_number}'")
        return runs[0].info.run_id if runs else None

    @contextmanager
    def study_run(self, study_name: str, tags: dict[str, str]) -> Iterator[str]:
        """The parent run of a study; running the sweep again, or another worker, continues the same parent.

        Only the client is used, never MLflow's active run: a driver keeps every strategy's parent open at once.
        """
        run_id = self._study_run_id(study_name) or self._create_study_run(study_name, tags)
        self.client.update_run(run_id, status="RUNNING")
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")

    def create_trial_run(self, parent_run_id: str, name: str, tags: dict[str, str], params: dict[str, object]) -> str:
        """The nested run of a new trial, created by the driver so that every attempt, wherever it runs, continues it."""
        tags = run_context.resolve_tags({ROLE: "trial", MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: name,
                                         **tags})
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)[:PARAM_LENGTH]) for k, v in params.items()])
        return run_id

    def fail_trial_run(self, run_id: str) -> None:
        """End the run of a trial that could not report its own end (every attempt's worker died)."""
        self.client.set_tag(run_id, STATE, "failed")
        self.client.set_terminated(run_id, "FAILED")


@contextmanager
def continue_trial_run(uri: str, run_id: str, tags: dict[str, str], system_metrics: bool) -> Iterator[TrialRun]:
    """One attempt at a trial, in whatever process runs it; an exception escaping the block ends the run FAILED."""
    quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id, tags=tags, log_system_metrics=system_metrics) as run:
        yield TrialRun.continued(MlflowClient(uri), run.info.run_id)
