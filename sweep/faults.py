"""Fault injection for the crash tests: `SWEEP_FAULT=<point>` makes the process SIGKILL itself at that point.

The points are the moments between two writes a kill could tear apart;
tests/service/test_crash_windows.py kills a sweep at each (the store's creation:
test_stores_service.py), runs it again and checks that nothing is left
half-done. Unset (always, outside tests), a point costs one environment lookup.

- `trial-created`: Optuna holds a new trial, nothing else of it exists yet
- `run-created`: the trial's MLflow run exists, the trial does not name it yet
- `checkpoint-saved`: an epoch's checkpoint has just been written
- `epoch-<N>-reported`: epoch N's metrics are logged, its checkpoint (if one is due) not yet written
- `trial-logged`: a trial's final metrics are logged, Optuna not yet told its outcome
- `trials-done`: a study's last trial is told, its MLflow parent run not yet ended
- `store-migrated`: a fresh SQLite tracking store's schema is made, not yet moved into place
"""

import os
import signal

VARIABLE = "SWEEP_FAULT"


def crash_point(name: str) -> None:
    """Die here, as a power cut or `kill -9` would, if the environment names this point."""
    if os.environ.get(VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
