"""What benchmark scripts share: the git revision they ran, and an older revision to run beside this one."""

import os
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import torch

from sweep import step_timing

REPO = Path(__file__).resolve().parents[1]


def git_revision(rev: str = "HEAD") -> str | None:
    """`rev` as `git describe` names it (with -dirty for an edited working tree), None outside a git checkout."""
    args = ["describe", "--always", "--dirty"] if rev == "HEAD" else ["rev-parse", "--short", rev]
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=REPO)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def machine() -> dict:
    """Where a timing ran (sweep.step_timing's description of a CPU machine) and how busy it was."""
    return {**step_timing.machine(torch.device("cpu")), "load_average_at_start": os.getloadavg()}


@contextmanager
def exported_revision(rev: str) -> Iterator[Path]:
    """A temporary copy of the repository at `rev` (`git archive`), to run the code as it was there."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], capture_output=True, check=True, cwd=REPO)
    with tempfile.TemporaryDirectory(prefix="freeze-sweep-baseline-") as tree:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
        yield Path(tree)
