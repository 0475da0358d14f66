"""Putting a finished report in place, all or nothing, and attaching it to the experiments in MLflow."""

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweep.errors import ConfigError, one_line
from sweep.tracking import ROLE

REPORT_RUN = "report"


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """Yield an empty sibling of `target` to build in; on success it replaces `target`, on failure nothing is left.

    The finished folder is moved in with renames, so a reader sees the old report or the new one, never a mix.
    """
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "new")
    retired = _sibling(target, "old")
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            target.rename(retired)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired.exists() and not target.exists():
            retired.rename(target)
        for directory in created:  # innermost first
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _sibling(target: Path, role: str) -> Path:
    """A hidden, unique name beside `target` (same file system, so renames are atomic)."""
    return target.parent / f".{target.name}.{role}.{uuid.uuid4().hex[:12]}"


def log_to_mlflow(tracking_uri: str, experiments: list[str], directory: Path, report_name: str) -> list[str]:
    """Attach the report to each experiment, as artifacts of one run per experiment tagged `sweep.role=report`.

    The same run is reused on every regeneration, so the experiment does not fill up with report runs;
    the files go under `reports/<report_name>`, so a report over several experiments does not overwrite one
    over a single experiment.
    """
    client = MlflowClient(tracking_uri)
    run_ids = []
    for name in experiments:
        experiment_id = client.get_experiment_by_name(name).experiment_id
        found = client.search_runs([experiment_id], f"tags.`{ROLE}` = '{REPORT_RUN}'", max_results=1)
        run_id = found[0].info.run_id if found else client.create_run(
            experiment_id, run_name=REPORT_RUN, tags={ROLE: REPORT_RUN}).info.run_id
        try:
            client.log_artifacts(run_id, str(directory), artifact_path=f"reports/{report_name}")
        except Exception as err:  # artifact stores fail in many ways; all mean the report could not be attached
            raise ConfigError(f"cannot log the report to MLflow experiment {name!r} ({one_line(err)[:200]})") from None
        client.set_terminated(run_id)
        run_ids.append(run_id)
    return run_ids
