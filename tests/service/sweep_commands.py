"""Running the real commands from tests, as a user would. (A plain module: `conftest` is an ambiguous import name.)"""

import hashlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sweep.strategies import MECHANISMS

REPO = Path(__file__).resolve().parents[2]
TINY_BUDGET = ["search.n_trials=2", "train.epochs=2", "search.repeats=2", "experiment=tiny"]
ONE_REPEAT = "search.repeats=1"
"""Repeats are test_repeats.py's and test_grid_sweep.py's subject; the default three would triple most tests' sweeps."""
LEFT_OUT_BY_DEFAULT = ("cached_prefix",)
"""Not in the default comparison: the digits CNN has BatchNorm in its prefix and the default norm_policy is train."""
DEFAULT_STRATEGIES = [name for name in MECHANISMS.names() if name not in LEFT_OUT_BY_DEFAULT]


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def start_command(module: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m <module> args...` as a user would, with one thread so parallel CI stays fair;
    `env` adds to the environment. A sweep that does not set `search.repeats` gets one confirmation run per
    study (`ONE_REPEAT`)."""
    if module == "sweep.run" and not any(arg.startswith("search.repeats=") for arg in args):
        args = (*args, ONE_REPEAT)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> Completed:
    stdout, stderr = process.communicate(timeout=900)
    return Completed(process.returncode, stdout, stderr)


def sweep_command(module: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> Completed:
    """Run `python -m <module> args...` to the end."""
    return finish(start_command(module, *args, cwd=cwd, env=env))


def tree(root: Path) -> dict[str, str]:
    """Every directory and file under `root`, files by the sha256 of their bytes."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(Path(directory, name), root)] = "dir"
        for name in files:
            path = Path(directory, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
