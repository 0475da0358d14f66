"""MLflow records: one parent run per strategy study, one nested run per trial.

The tags and metric names here are the contract the report reads back.
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from sweep.errors import ConfigError
from sweep.train import EpochMetrics
from sweep.trial import TrialResult

ROLE = "sweep.role"
STUDY = "optuna.study_name"
TRIAL_NUMBER = "optuna.trial_number"
STATE = "sweep.state"  # finished | pruned | failed


def default_uri(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts (the report) beside a SQLite database, not in MLflow's default ./mlruns under the current directory."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server has its own artifact root
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def quiet_mlflow() -> None:
    """Keep MLflow's and its migrations' chatter out of the user's terminal, and fail fast on dead servers."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_reachable(uri: str) -> None:
    """Talk to the tracking store once, so an unreachable or malformed URI fails before any work."""
    quiet_mlflow()
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises many types here: all mean "this store cannot be used"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot use MLflow tracking URI {uri!r} ({reason[:200]}); start the server or pass "
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
        if mlflow.get_experiment_by_name(experiment) is None:
            try:
                mlflow.create_experiment(experiment, artifact_location=artifact_location(uri))
            except mlflow.exceptions.MlflowException:
                pass  # another worker created it first; set_experiment below still fails on a real problem
        self.experiment_id = mlflow.set_experiment(experiment).experiment_id
        self.system_metrics = system_metrics
        self.uri = uri

    def _existing_study_run(self, study_name: str) -> str | None:
        runs = MlflowClient(self.uri).search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE}` = 'study' and tags.`{STUDY}` = '{study_name}'",
            max_results=1)
        return runs[0].info.run_id if runs else None

    @contextmanager
    def study_run(self, study_name: str, tags: dict[str, str]) -> Iterator[str]:
        """The parent run of a study; running the sweep again continues the same parent."""
        run_id = self._existing_study_run(study_name)
        if run_id is None:
            with mlflow.start_run(run_name=study_name, tags={ROLE: "study", STUDY: study_name, **tags}) as run:
                yield run.info.run_id
        else:
            with mlflow.start_run(run_id=run_id) as run:
                yield run.info.run_id

    @contextmanager
    def trial_run(self, name: str, tags: dict[str, str], params: dict[str, object]) -> Iterator[TrialRun]:
        """A nested run; an exception escaping the block ends it with status FAILED."""
        with mlflow.start_run(run_name=name, nested=True, tags={ROLE: "trial", **tags},
                              log_system_metrics=self.system_metrics) as run:
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            yield TrialRun(run.info.run_id)
