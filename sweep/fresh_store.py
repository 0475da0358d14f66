"""A fresh MLflow database, made by a child process while the job imports torch and checks its config.

Creating MLflow's schema runs its migrations: about a second of CPU that used to stand between the
checks and the first trial. A child process does it on another core meanwhile (a thread would share
the GIL and the import lock with the very imports it should overlap). The job still opens the store
itself where it first needs it (`check_reachable`), which finds it made, or makes it should the child
have failed. A mistake found before then takes back what the child made, so it leaves nothing behind.

    python -m sweep.fresh_store URI    # the child: exit status 0 if it created the database
"""

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from sweep.errors import ConfigError
from sweep.paths import first_missing, remove_empty_dirs, schema_lock, sqlite_path

EXISTED = 3  # the child's exit status when another process had created the database first


class FreshStore:
    """The child creating a SQLite tracking store that does not exist yet, and how to take it back."""

    def __init__(self, uri: str, database: Path) -> None:
        self.database = database
        self.new_dir = first_missing(database.parent)  # the outermost directory the child will create, if any
        self.lock = schema_lock(database)
        self.lock_existed = self.lock.exists()
        # Its stage line shows; its errors do not (the job's own check says them). In a session of its own, so
        # Ctrl-C does not stop it mid-migration: it finishes the schema, then exits.
        self.child = subprocess.Popen([sys.executable, "-m", __name__, uri], stderr=subprocess.DEVNULL,
                                      start_new_session=True)

    def created(self) -> bool:
        """Wait for the child: whether it created the database."""
        return self.child.wait() == 0

    def take_back(self) -> None:
        """Remove the database the child created, unless something has been recorded in it since (another sweep
        of the same results_dir started alongside), and the lock file and directories it created for it."""
        from sweep.stores import first_use  # imports Optuna: only on this error path

        if not self.created():
            return
        with first_use(self.database):
            if not _untouched(self.database):
                return
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{self.database}{suffix}").unlink(missing_ok=True)
        if not self.lock_existed:
            self.lock.unlink(missing_ok=True)
        if self.new_dir is not None:
            remove_empty_dirs(self.database.parent, self.new_dir)


def _untouched(database: Path) -> bool:
    """No experiment but MLflow's Default, and no run: nothing but the schema."""
    with closing(sqlite3.connect(database)) as connection:
        (experiments,), (runs,) = (connection.execute(f"SELECT count(*) FROM {table}").fetchone()
                                   for table in ("experiments", "runs"))
    return experiments <= 1 and runs == 0


@contextmanager
def made_meanwhile(uri: str) -> Iterator[None]:
    """Create the tracking store `uri` names while the block runs, if it is a SQLite file that does not exist yet;
    a mistake (`ConfigError`) ending the block takes it back."""
    database = sqlite_path(uri)
    if database is None or database.exists():
        yield
        return
    fresh = FreshStore(uri, database)
    try:
        yield
    except ConfigError:
        fresh.take_back()
        raise
    finally:
        fresh.child.wait()  # no child outlives the job


def main(uri: str) -> None:
    from sweep.tracking import check_reachable

    try:
        created = check_reachable(uri)
    except ConfigError:
        sys.exit(2)  # the job's own check says why, in its one line
    sys.exit(0 if created else EXISTED)


if __name__ == "__main__":
    main(sys.argv[1])
