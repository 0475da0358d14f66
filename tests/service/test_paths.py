"""Where the commands write, through the real commands: under results_dir and nowhere else, no empty trial
folders, printed commands that paste into a shell as they read, and a copied results directory that never
writes at its old place."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import override
from sweep_commands import sweep_command, tree

AWKWARD = "my results; touch PASTED 'quoted'"
"""A results_dir a shell would split, run a command from, and unquote."""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("paths")
    results = base / AWKWARD
    results.mkdir()
    (results / "cache").symlink_to(cache_dir, target_is_directory=True)
    done = sweep_command("sweep.run", "+strategy=requires_grad", "search.n_trials=2", "train.epochs=1",
                         "experiment=paths", override("results_dir", results), cwd=base)
    assert done.returncode == 0, done.stderr
    return base, results, done.stdout


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """`command` pasted into bash, with this environment's python first on the PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def printed(stdout: str, label: str) -> str:
    return next(line.removeprefix(label).strip() for line in stdout.splitlines() if line.startswith(label))


def test_a_sweep_writes_under_results_dir_and_leaves_no_empty_trial_folder(sweep):
    base, results, _ = sweep
    assert [p.name for p in base.iterdir()] == [AWKWARD]
    assert list((results / "checkpoints").glob("*/trial-*")) == [], "a finished trial leaves no folder behind"


def test_the_printed_commands_paste_into_a_shell_as_they_read(sweep):
    base, results, stdout = sweep
    browse = shlex.split(printed(stdout, "Browse the runs:"))
    assert browse == ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{results / 'mlflow.db'}"]
    done = shell(printed(stdout, "Export the report:"), cwd=base)
    assert done.returncode == 0, done.stderr
    assert (results / "reports" / "paths" / "report.html").is_file()
    assert not list(base.rglob("PASTED")), "nothing in the printed command may run as a command of its own"
    sources = [line for line in (results / "reports" / "paths" / "report.md").read_text().splitlines()
               if line.startswith(("- tracking URI:", "- Optuna storage:"))]
    assert len(sources) == 2 and not any(str(base) in line for line in sources), \
        "a report names the stores under the working directory by relative paths"


def test_a_copied_results_dir_writes_nothing_at_its_old_place(sweep, tmp_path):
    base, results, _ = sweep
    copy = tmp_path / "copy"
    shutil.copytree(results, copy, symlinks=True)
    original = tree(results)
    done = sweep_command("sweep.report", "experiment=paths", f"results_dir={copy}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "not logged to MLflow experiment paths" in done.stderr and "Traceback" not in done.stderr
    assert (copy / "reports" / "paths" / "report.html").is_file()
    assert tree(results) == original, "the report of the copy must not write into the original"
