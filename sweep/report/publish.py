"""Attaching a finished report to its experiments in MLflow."""

from pathlib import Path

from mlflow.tracking import MlflowClient

from sweep.errors import ConfigError, one_line
from sweep.tracking import ROLE, artifacts_beside

REPORT_RUN = "report"


def log_to_mlflow(tracking_uri: str, experiments: list[str], directory: Path, report_name: str,
                  results_dir: Path) -> list[str]:
    """Attach the report to each experiment, as artifacts of one run per experiment tagged `sweep.role=report`;
    return the experiments it was attached to.

    The same run is reused on every regeneration, so the experiment does not fill up with report runs;
    the files go under `reports/<report_name>`, so a report over several experiments does not overwrite one
    over a single experiment. An experiment whose artifacts MLflow would write outside the database's folder
    (a results directory copied or moved from elsewhere keeps the old absolute path) is left out.
    """
    client = MlflowClient(tracking_uri)
    attached = []
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if not artifacts_beside(tracking_uri, experiment.artifact_location, results_dir):
            continue
        found = client.search_runs([experiment.experiment_id], f"tags.`{ROLE}` = '{REPORT_RUN}'", max_results=1)
        run_id = found[0].info.run_id if found else client.create_run(
            experiment.experiment_id, run_name=REPORT_RUN, tags={ROLE: REPORT_RUN}).info.run_id
        try:
            client.log_artifacts(run_id, str(directory), artifact_path=f"reports/{report_name}")
        except Exception as err:  # artifact stores fail in many ways; all mean the report could not be attached
            raise ConfigError(f"cannot log the report to MLflow experiment {name!r} ({one_line(err)[:200]})") from None
        client.set_terminated(run_id)
        attached.append(name)
    return attached
