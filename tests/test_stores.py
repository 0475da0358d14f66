"""Stores that heal and open safely: a torn journal tail, racing schema creation, a locked SQLite file."""

import json
import sqlite3

import optuna
import pytest
import sqlalchemy
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from sweep import stores
from sweep.errors import ConfigError
from sweep.stores import heal_torn_tail, open_journal, retry_schema_race


@pytest.fixture(autouse=True)
def quiet_optuna():
    """Optuna's INFO lines ("A new study created") would land among the warnings these tests count."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def journal_with_trials(path, n_trials: int) -> list[bytes]:
    study = optuna.create_study(storage=open_journal(path), study_name="s")
    for value in range(n_trials):
        study.add_trial(optuna.trial.create_trial(value=float(value)))
    return path.read_bytes().splitlines(keepends=True)


def one_warning(capsys) -> str:
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), lines
    return lines[0]


def test_a_torn_last_record_is_dropped_and_appends_after_it_stay_readable(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    records = journal_with_trials(journal, 3)
    journal.write_bytes(b"".join(records[:-1]) + records[-1][: len(records[-1]) // 2])  # a power cut mid-write

    storage = open_journal(journal)
    assert str(journal) in one_warning(capsys)
    assert journal.read_bytes() == b"".join(records[:-1])  # every complete record kept, byte for byte
    study = optuna.load_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=9.0))

    reread = optuna.load_study(study_name="s", storage=open_journal(journal))
    assert [t.value for t in reread.trials] == [0.0, 1.0, 9.0]
    assert all(json.loads(line) for line in journal.read_bytes().splitlines())
    assert capsys.readouterr().err == ""  # healed once; a sound journal says nothing


def test_a_whole_last_record_that_lost_only_its_newline_is_kept(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    records = journal_with_trials(journal, 2)
    journal.write_bytes(b"".join(records)[:-1])

    study = optuna.load_study(study_name="s", storage=open_journal(journal))
    assert "ended its last record" in one_warning(capsys)
    assert [t.value for t in study.trials] == [0.0, 1.0]
    assert journal.read_bytes() == b"".join(records)


def test_a_tear_that_appears_while_a_process_has_the_journal_open_is_healed_before_its_next_append(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    journal_with_trials(journal, 1)
    study = optuna.load_study(study_name="s", storage=open_journal(journal))
    with open(journal, "ab") as file:
        file.write(b'{"op_code":4,"worker_id":"another process, whose disk filled up')
    study.add_trial(optuna.trial.create_trial(value=5.0))
    one_warning(capsys)
    assert [t.value for t in optuna.load_study(study_name="s", storage=open_journal(journal)).trials] == [0.0, 5.0]


def test_damage_inside_the_journal_is_one_line_not_a_traceback(tmp_path):
    journal = tmp_path / "optuna.journal"
    records = journal_with_trials(journal, 3)
    journal.write_bytes(records[0] + records[1][:20] + b"".join(records[2:]))  # what older versions made of a tear
    with pytest.raises(ConfigError, match="has a damaged record before its end") as err:
        open_journal(journal)
    assert "\n" not in str(err.value)


def test_heal_leaves_a_sound_or_empty_journal_alone(tmp_path, capsys):
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(b"")
    heal_torn_tail(journal)
    journal.write_bytes(b'{"op_code":0}\n')
    heal_torn_tail(journal)
    assert journal.read_bytes() == b'{"op_code":0}\n' and capsys.readouterr().err == ""


def test_losing_the_race_to_create_a_schema_is_retried_and_other_errors_are_not(monkeypatch):
    monkeypatch.setattr(stores.time, "sleep", lambda seconds: None)
    attempts = []

    def lose_twice() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError('duplicate key value violates unique constraint "pg_type_typname_nsp_index"')
        return "store"

    assert retry_schema_race(lose_twice) == "store" and len(attempts) == 3

    def refused() -> str:
        attempts.append(1)
        raise RuntimeError("connection refused")

    attempts.clear()
    with pytest.raises(RuntimeError, match="refused"):
        retry_schema_race(refused)
    assert len(attempts) == 1


def test_a_sqlite_file_locked_by_another_writer_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(stores, "LOCK_WAIT_S", 0.1)
    database = tmp_path / "mlflow.db"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    stores.check_not_locked(database, "MLflow store")  # free: no error
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(ConfigError, match=f"MLflow store {database} is locked by another process"):
        stores.check_not_locked(database, "MLflow store")
    holder.execute("ROLLBACK")
    holder.close()


@pytest.mark.parametrize("outage", [
    sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("server closed the connection unexpectedly")),
    MlflowException("(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE),
    MlflowException("API request to http://tracking:5000/api/2.0/mlflow/runs/create failed with exception "
                    "HTTPConnectionPool(host='tracking', port=5000): Max retries exceeded"),
], ids=["database", "locked sqlite", "tracking server"])
def test_a_store_that_stops_answering_mid_sweep_is_one_line(outage):
    with pytest.raises(ConfigError, match="a store stopped answering mid-sweep") as err:
        with stores.outage_is_one_line():
            raise outage
    assert "\n" not in str(err.value) and "run the same command" in str(err.value)


def test_other_errors_mid_sweep_keep_their_traceback():
    with pytest.raises(KeyError), stores.outage_is_one_line():
        raise KeyError("a bug")
