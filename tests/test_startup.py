"""Start-up: the command-line modules import no heavy library, so `--help` and mistakes answer at once.

Checked through `sys.modules` in a fresh interpreter, not by timing (timings: scripts/bench_startup.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.data import DATASETS
from sweep.models import MODELS

REPO_ROOT = Path(__file__).resolve().parents[1]


def imported_after(statement: str) -> set[str]:
    """Top-level packages in sys.modules after running `statement` in a fresh interpreter."""
    code = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module, banned", [
    ("sweep.run", {"torch", "torchvision", "mlflow", "sklearn", "optuna"}),
    ("sweep.report", {"torch", "torchvision", "sklearn", "mlflow", "optuna", "matplotlib"}),
    ("sweep.models, sweep.data", {"torchvision", "sklearn"}),
])
def test_importing_does_not_load_heavy_libraries(module, banned):
    assert not imported_after(f"import {module}") & banned


def test_torchvision_entries_load_on_first_use():
    loaded = imported_after("from sweep.models import MODELS; from sweep.data import DATASETS; "
                            "MODELS.get('resnet18'); DATASETS.get('cifar10')")
    assert "torchvision" in loaded
    assert {"resnet18", "vit_b_16"} <= set(MODELS) and {"cifar10", "imagefolder"} <= set(DATASETS)
