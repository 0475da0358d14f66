"""Fixtures of the service tests: one real sweep, run once per test session through the real command and shared
by the service and report tests; pretrained weights; a throwaway PostgreSQL server."""

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep_commands import TINY_BUDGET, Completed, sweep_command


@dataclass
class TinySweep:
    results_dir: Path
    first: Completed

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.results_dir / 'mlflow.db'}"

    @property
    def journal(self) -> Path:
        return self.results_dir / "optuna.journal"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Pretrained digits weights, shared by every sweep in the session (pretraining runs once)."""
    return tmp_path_factory.mktemp("shared-results")


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, cache_dir) -> TinySweep:
    """Every strategy, 2 trials of 2 epochs each, into a fresh results_dir."""
    results_dir = tmp_path_factory.mktemp("tiny-sweep")
    (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)
    first = sweep_command("sweep.run", *TINY_BUDGET, f"results_dir={results_dir}")
    assert first.returncode == 0, first.stderr
    return TinySweep(results_dir, first)


PG_CTLS = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))


def as_server_user(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root; Debian's package provides the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway server on a Unix socket (no TCP port), with empty databases for Optuna and MLflow."""
    if not PG_CTLS:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries missing; .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    bin_dir = PG_CTLS[-1].parent
    home = Path(tempfile.mkdtemp(prefix="sweep-pg-"))  # not under pytest's root-only tmp: the server user must enter
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    data, socket_dir = home / "data", home
    subprocess.run(as_server_user(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
                   check=True, capture_output=True)
    subprocess.run(as_server_user(str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "log"),
                                  "-o", f"-k {socket_dir} -c listen_addresses=''", "start"),
                   check=True, capture_output=True)
    try:
        for database in ("optuna", "mlflow"):
            subprocess.run([str(bin_dir / "createdb"), "-h", str(socket_dir), "-U", "postgres", database],
                           check=True, capture_output=True)
        yield {db: f"postgresql://postgres@/{db}?host={socket_dir}" for db in ("optuna", "mlflow")}
    finally:
        subprocess.run(as_server_user(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
