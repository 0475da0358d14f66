"""Stores that heal and that workers open together: a fresh results directory, a torn journal, a locked database."""

import shutil
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sweep.faults import VARIABLE
from sweep_commands import Completed, finish, start_command, sweep_command

ARGS = ["+strategy=requires_grad", "search.n_trials=2", "train.epochs=1", "experiment=together"]
STUDY = "together.requires_grad.head_backbone"


def journal_study(results_dir: Path) -> optuna.Study:
    from sweep.stores import open_journal

    return optuna.load_study(study_name=STUDY, storage=open_journal(results_dir / "optuna.journal"))


@pytest.fixture(scope="module")
def together(tmp_path_factory, cache_dir) -> tuple[Path, list[Completed]]:
    """Four workers started at once on a results directory that does not exist yet."""
    results_dir = tmp_path_factory.mktemp("together") / "results"
    results_dir.mkdir()
    (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)
    workers = [start_command("sweep.run", *ARGS, f"results_dir={results_dir}") for _ in range(4)]
    return results_dir, [finish(worker) for worker in workers]


def test_four_workers_started_together_on_fresh_stores_all_succeed(together):
    results_dir, workers = together
    for worker in workers:
        assert worker.returncode == 0, worker.stderr
    trials = journal_study(results_dir).trials
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert 2 <= len(trials) <= 2 + 3  # each extra worker may finish the trial it began as the study filled
    client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "together"]
    runs = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    assert len(client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'study'")) == 1


def test_a_store_locked_by_another_process_is_one_line_and_nothing_is_written(together):
    results_dir, _ = together
    before = {p: p.read_bytes() for p in results_dir.rglob("*") if p.is_file()}
    holder = sqlite3.connect(results_dir / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write transaction
    try:
        done = sweep_command("sweep.run", *ARGS, f"results_dir={results_dir}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: MLflow store {results_dir / 'mlflow.db'} is locked by another process")
    assert {p: p.read_bytes() for p in results_dir.rglob("*") if p.is_file()} == before


def test_a_torn_last_journal_record_is_dropped_with_one_warning_and_both_commands_go_on(together, tmp_path):
    results_dir = tmp_path / "results"
    shutil.copytree(together[0], results_dir, symlinks=True)
    journal = results_dir / "optuna.journal"
    records = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(records[:-1]) + records[-1][:-30])  # a power cut in the middle of the last write

    run = sweep_command("sweep.run", *ARGS, f"results_dir={results_dir}")
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"{journal} was cut off mid-record" in warnings[0], run.stderr
    assert journal.read_bytes().startswith(b"".join(records[:-1]))  # every complete record kept
    assert {t.state for t in journal_study(results_dir).trials} == {TrialState.COMPLETE}

    report = sweep_command("sweep.report", "experiment=together", f"results_dir={results_dir}",
                           f"report.out_dir={tmp_path / 'report'}")
    assert report.returncode == 0, report.stderr
    assert "cut off mid-record" not in report.stderr and (tmp_path / "report" / "report.html").is_file()  # healed once


def test_a_store_whose_creation_was_killed_is_not_left_half_made_and_the_next_run_makes_it(tmp_path):
    """MLflow's migrations take seconds on a first run: a kill in them must not leave a store every later run
    refuses. The schema is made beside the store and moved into place; a kill before the move leaves no store."""
    database = tmp_path / "results" / "mlflow.db"
    uri = f"sqlite:///{database}"
    killed = sweep_command("sweep.fresh_store", uri, env={VARIABLE: "store-migrated"})
    assert killed.returncode == -signal.SIGKILL
    assert not database.exists()
    creating = database.with_name("mlflow.db.creating")
    creating.write_bytes(b"SQLite format 3\0 and then nothing: a kill in the middle of the migrations")
    again = sweep_command("sweep.fresh_store", uri)
    assert again.returncode == 0, again.stderr
    assert not creating.exists()
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]
