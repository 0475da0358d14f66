"""The sweep workers of this host: who runs a trial, whether that process still lives, and how many share the cores.

Workers on one host know of each other through a registry under the results
directory they share: one file per live worker process, named by its pid and
holding the process's start time, so a pid the system has since reused is not
mistaken for a worker. A worker removes its file when it exits; the file of a
killed one is removed by the next worker that counts.
"""

import atexit
import os
import socket
from pathlib import Path

import psutil

from sweep.paths import inside

HOST = socket.gethostname()
WORKER = f"{HOST}:{os.getpid()}"  # which process runs a trial: workers may share a study


def worker_is_dead(worker: str | None) -> bool:
    """True for a worker process of this host that no longer exists; other hosts' workers are never judged."""
    if worker is None:
        return False
    host, _, pid = worker.rpartition(":")
    if host != HOST:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _started_at(pid: int) -> float | None:
    """The process's start time, or None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


class WorkerRegistry:
    """The live sweep workers of this host that share `results_dir`."""

    def __init__(self, results_dir: Path) -> None:
        self.directory = inside(results_dir, "workers", HOST)
        self._entry = self.directory / str(os.getpid())

    def register(self) -> None:
        """Count this process among the workers until it exits."""
        if self._entry.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self._entry.with_suffix(".tmp")  # renamed whole: a worker counting never reads half an entry
        partial.write_text(repr(_started_at(os.getpid())))
        os.replace(partial, self._entry)
        atexit.register(self._entry.unlink, missing_ok=True)

    def live(self) -> int:
        """How many registered workers are alive, this one included whether registered yet or not."""
        alive = {os.getpid()}
        for entry in self.directory.glob("*") if self.directory.is_dir() else ():
            if not entry.name.isdigit():
                continue
            try:
                started = entry.read_text()
            except FileNotFoundError:  # its worker exited while we looked
                continue
            if repr(_started_at(int(entry.name))) == started:
                alive.add(int(entry.name))
            else:
                entry.unlink(missing_ok=True)
        return len(alive)
