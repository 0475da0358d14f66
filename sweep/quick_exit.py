"""Ending a command without the interpreter's teardown once it has said its last line.

After the last atexit handler, Python frees torch's, MLflow's and Optuna's modules object by
object: about two seconds on a 2-core machine (`scripts/bench_job.py`'s "exit") in which the
prompt does not come back and nothing of the job is left to do. Once every handler has run
(MLflow's, Ray's, the worker registry's, logging's), the process ends at once with the
command's own status. A command that ends in an uncaught exception keeps the normal teardown.
"""

import atexit
import logging
import os
import sys
from collections.abc import Callable


class QuickExit:
    """Made before anything registers an atexit handler it should follow: its own runs last."""

    def __init__(self) -> None:
        self.status: int | None = None  # set once the command ended with a status
        atexit.register(self._exit_now)

    def run(self, command: Callable[[], None]) -> None:
        try:
            command()
        except SystemExit as stop:
            self.status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
            raise
        self.status = 0

    def _exit_now(self) -> None:
        if self.status is None:
            return
        logging.shutdown()  # its handler may have been registered before this one
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`| head`): nothing more can reach it anyway
                pass
        os._exit(self.status)
