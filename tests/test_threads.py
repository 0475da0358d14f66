"""Workers on one host share its cores: the thread count a trial gets, and the registry that counts the workers."""

import os
import subprocess
import sys

import pytest
import torch

from sweep.threads import available_cores, threads_for
from sweep.trial import RunSettings, TrialSpec, run_trial
from sweep.workers import HOST, WorkerRegistry


REGISTERED_WORKER = """
import sys, time
from pathlib import Path
from sweep.workers import WorkerRegistry
WorkerRegistry(Path(sys.argv[1])).register()
print("registered", flush=True)
if sys.argv[2] == "stay":
    time.sleep(600)
"""


def start_worker(results_dir, then: str) -> subprocess.Popen:
    """A process that registers as a worker of `results_dir`, then stays alive or exits normally."""
    process = subprocess.Popen([sys.executable, "-c", REGISTERED_WORKER, str(results_dir), then],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "registered\n"
    return process


@pytest.fixture
def sleeper():
    """A live process that is not a registered worker."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def test_train_threads_reaches_torch_inside_the_trial_and_is_recorded(digits_model_def, digits_task):
    torch.set_num_threads(2)  # what the process has: the trial must run with its own count instead
    inside = []
    spec = TrialSpec(strategy="requires_grad", epochs=1, device="cpu")
    result = run_trial(spec, digits_task, digits_model_def, on_epoch=lambda _: inside.append(torch.get_num_threads()),
                       settings=RunSettings(threads=1))
    assert inside == [1] and result.torch_threads == 1
    assert result.final_metrics()["torch_threads"] == 1
    assert torch.get_num_threads() == 2  # restored for whatever the process does next


def test_threads_explicit_then_omp_num_threads_then_the_cores_shared_among_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert available_cores() == 8
    assert [threads_for(None, workers) for workers in (1, 2, 3, 8, 9)] == [8, 4, 2, 1, 1]
    assert threads_for(3, 2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads_for(None, 2) == 5 and threads_for(3, 2) == 3


def test_the_registry_counts_live_workers_only(tmp_path):
    registry = WorkerRegistry(tmp_path)
    assert registry.live() == 1 and not (tmp_path / "workers").exists()  # counting writes nothing
    registry.register()
    entries = tmp_path / "workers" / HOST
    assert [p.name for p in entries.iterdir()] == [str(os.getpid())]

    other = start_worker(tmp_path, "stay")
    try:
        assert registry.live() == 2
    finally:
        other.kill()  # SIGKILL: no chance to remove its entry
        other.wait()
    assert (entries / str(other.pid)).exists()
    assert registry.live() == 1
    assert [p.name for p in entries.iterdir()] == [str(os.getpid())]  # the killed worker's entry is cleared away

    assert start_worker(tmp_path, "exit").wait() == 0
    assert [p.name for p in entries.iterdir()] == [str(os.getpid())]  # a worker that exits removes its own entry


def test_a_reused_pid_is_not_a_worker(tmp_path, sleeper):
    entries = tmp_path / "workers" / HOST
    entries.mkdir(parents=True)
    (entries / str(sleeper.pid)).write_text("1.0")  # same pid, but a process that started at another time
    assert WorkerRegistry(tmp_path).live() == 1
    assert not (entries / str(sleeper.pid)).exists()
