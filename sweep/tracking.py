"""MLflow records: one parent run per strategy study, one nested run per trial.

The tags and metric names here are the contract the report reads back.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweep.errors import ConfigError, one_line
from sweep.stages import stage
from sweep.train import EpochMetrics
from sweep.trial import TrialResult

ROLE = "sweep.role"
STUDY = "optuna.study_name"
TRIAL_NUMBER = "optuna.trial_number"
STATE = "sweep.state"  # finished | pruned | failed


def default_uri(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def artifact_location(uri: str) -> str | None:
    """Artifacts (the report) beside a SQLite database, not in MLflow's default ./mlruns under the current directory."""
    database = sqlite_path(uri)
    if database is None:
        return None  # a tracking server has its own artifact root
    return (database.resolve().parent / "mlartifacts").as_uri()


def quiet_mlflow() -> None:
    """Keep MLflow's and its migrations' chatter out of the user's terminal, and fail fast on dead servers."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_reachable(uri: str) -> None:
    """Talk to the tracking store once, so an unreachable or malformed URI fails before any work."""
    quiet_mlflow()
    database = sqlite_path(uri)
    new = database is not None and not database.exists()
    try:
        with stage(f"creating the MLflow database {database}") if new else nullcontext():
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises many types here: all mean "this store cannot be used"
        raise ConfigError(f"cannot use MLflow tracking URI {uri!r} ({one_line(err)[:200]}); start the server or pass "
                          "tracking.uri=URI (e.g. sqlite:////abs/path/mlflow.db or http://host:5000)") from None


class TrialRun:
    """The nested MLflow run of one Optuna trial."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_epoch(self, metrics: EpochMetrics) -> None:
        mlflow.log_metrics({"val_accuracy": metrics.val_accuracy, "train_loss": metrics.train_loss},
                           step=metrics.epoch)

    def log_result(self, result: TrialResult) -> None:
        final = result.final_metrics()
        final.pop("val_accuracy")  # already logged per epoch; its latest value is the final one
        mlflow.log_metrics(final)

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

    @contextmanager
    def study_run(self, study_name: str, tags: dict[str, str]) -> Iterator[str]:
        """The parent run of a study; running the sweep again, or another worker, continues the same parent."""
        run_id = self._study_run_id(study_name) or self._create_study_run(study_name, tags)
        with mlflow.start_run(run_id=run_id) as run:
            yield run.info.run_id

    @contextmanager
    def trial_run(self, name: str, tags: dict[str, str], params: dict[str, object],
                  run_id: str | None = None) -> Iterator[TrialRun]:
        """A nested run (`run_id`: continue an interrupted trial's); an exception escaping the block ends it FAILED."""
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=True,
                              tags={ROLE: "trial", **tags}, log_system_metrics=self.system_metrics) as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            yield TrialRun(run.info.run_id)
