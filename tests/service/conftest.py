"""One real sweep, run once per test session through the real command, shared by the service and report tests."""

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
