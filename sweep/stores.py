"""Opening the stores that workers share, so that they heal, survive being opened together, and fail in one line.

- The Optuna journal: a record torn by a power cut or a full disk (a last line
  without its newline) would have the next append glued onto it, and from then
  on every reader fails. Whoever takes the journal's lock first cuts the torn
  tail off (or ends it, if the record is whole), so nothing is ever appended
  after half a record, and every complete record is kept.
- Fresh databases: workers started together all try to create the schema. A
  local SQLite file is serialised with a file lock beside it; a server
  database (PostgreSQL, MySQL) is retried while the losers see the winner's
  tables appear.
- A SQLite file another process holds in a write transaction is refused after
  a short wait, in one line, rather than after MLflow's 20 s busy timeout and
  a traceback; a store that stops answering in the middle of a sweep is one
  line too (the same command then resumes).
"""

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from sweep.errors import ConfigError, one_line, warn
from sweep.paths import schema_lock

T = TypeVar("T")

LOCK_WAIT_S = 3.0  # how long a store another process holds locked is waited for before giving up
SCHEMA_LOCK_WAIT_S = 120.0  # creating MLflow's schema (its migrations) takes seconds; a holder this slow is stuck
SCHEMA_ATTEMPTS = 6
SCHEMA_RACES = ("already exists", "duplicate", "UniqueViolation", "expected to match one row",
                "out-of-date database schema")
"""What losing the race to create a fresh database's schema looks like (PostgreSQL, SQLite, Alembic, MLflow)."""


def heal_torn_tail(journal: Path) -> None:
    """Make the journal end at a record boundary; call with the journal's lock held."""
    with open(journal, "r+b") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return
        file.seek(0)
        content = file.read()
        start = content.rfind(b"\n") + 1
        tail = content[start:]
        try:
            json.loads(tail)
        except ValueError:
            file.truncate(start)
            what = f"dropped its torn last record ({len(tail)} bytes)"
        else:
            file.write(b"\n")
            what = "ended its last record, which was whole but lacked its newline"
        file.flush()
        os.fsync(file.fileno())
    warn(f"{journal} was cut off mid-record (a crash, power cut or full disk); {what}, kept every complete record")


class HealingLock(JournalFileSymlinkLock):
    """Optuna's journal lock; its holder first heals a torn tail, so no append ever lands on half a record."""

    def __init__(self, journal: Path) -> None:
        super().__init__(str(journal))
        self.journal = journal

    def acquire(self) -> bool:
        super().acquire()
        try:
            heal_torn_tail(self.journal)
        except BaseException:
            self.release()
            raise
        return True


def open_journal(journal: Path) -> JournalStorage:
    """The journal as Optuna storage, a torn tail healed now (so the warning comes before any work)."""
    lock = HealingLock(journal)
    backend = JournalFileBackend(str(journal), lock_obj=lock)
    lock.acquire()
    lock.release()
    try:
        return JournalStorage(backend)
    except ValueError as err:  # json.JSONDecodeError, or Optuna's "Invalid log format."
        raise ConfigError(f"{journal} has a damaged record before its end ({one_line(err)[:120]}); it was not "
                          "written by this version, which heals torn records: restore it from a backup, or pass "
                          "experiment=NEW_NAME results_dir=NEW_DIR to start afresh") from None


@contextmanager
def first_use(database: Path | None) -> Iterator[None]:
    """Serialise opening a SQLite store (which may create its schema) among this host's processes."""
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(schema_lock(database))
    try:
        lock.acquire(timeout=SCHEMA_LOCK_WAIT_S)
    except Timeout:
        raise ConfigError(f"another process has held {lock.lock_file} for over {SCHEMA_LOCK_WAIT_S:.0f} s while "
                          "creating the store; stop it, or use another results_dir") from None
    try:
        yield
    finally:
        lock.release()


def retry_schema_race(open_store: Callable[[], T]) -> T:
    """Open a store, again if the first try lost the race to create its schema to another worker."""
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return open_store()
        except Exception as err:  # drivers raise many types; the message tells a lost race from a real failure
            if not any(race in str(err) for race in SCHEMA_RACES):
                raise
        time.sleep(random.uniform(0.2, 0.5) * attempt)  # jittered, so the losers do not collide again
    return open_store()


def check_not_locked(database: Path | None, what: str) -> None:
    """Refuse, after a short wait, a SQLite file another process holds in a write transaction."""
    if database is None or not database.is_file():
        return
    connection = sqlite3.connect(database, timeout=LOCK_WAIT_S, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as err:
        raise ConfigError(f"{what} {database} is locked by another process ({err} after {LOCK_WAIT_S:.0f} s); "
                          "wait for it to finish, or use another results_dir or tracking.uri") from None
    finally:
        connection.close()


def is_outage(err: BaseException) -> bool:
    """A database or tracking server that stopped answering, or a SQLite file locked past its busy timeout."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    if isinstance(err, OperationalError):  # Optuna's database storage
        return True
    return isinstance(err, MlflowException) and (err.error_code == "TEMPORARILY_UNAVAILABLE"  # MLflow's database
                                                 or str(err).startswith("API request to"))  # a tracking server


@contextmanager
def outage_is_one_line() -> Iterator[None]:
    """Mid-sweep, a store that stops answering ends the sweep in one line: its trials resume on the next run."""
    try:
        yield
    except Exception as err:
        if not is_outage(err):
            raise
        raise ConfigError(f"a store stopped answering mid-sweep ({one_line(err)[:200]}); once it answers again, run "
                          "the same command: the interrupted trials resume from their checkpoints") from None
