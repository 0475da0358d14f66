"""Where the main job's time goes: `python -m sweep.run` split into imports, MLflow, Optuna, training and the rest.

The job runs in a child process that wraps a few functions with a clock before any of the
sweep's code is imported: every import statement, MLflow's fluent API and client (and the
job's waits for its MLflow writer thread and for the creation of a fresh store), Optuna's
storages, study and trial, the training step, evaluation, checkpoints, FLOPs counting and
memory measuring. Time is charged to the innermost wrapped call running on the main thread
(an import inside an MLflow call is an import), the rest is "other" (Hydra, data loading,
building models, the sweep's own code), and Python's own start-up is what the parent's wall
clock saw before the child's first line; exit is the wall time left after the child's last
atexit handler (interpreter teardown, unless the job ends without it). Wrapping costs a few
microseconds per call.

Runs this working tree and, with `--baseline REV`, a copy of revision REV, interleaved round
by round in random order, each job in a fresh results directory (so it creates its stores, as
a first `make run` does) sharing that side's pretrained weights (made by an untimed warm-up).

    python scripts/bench_job.py [--baseline REV] [--rounds 3] [--out results/bench/job.json] [-- override ...]
"""

import argparse
import atexit
import builtins
import functools
import importlib
import inspect
import json
import os
import random
import runpy
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

CHILD_FLAG = "--child"
OTHER = "other (Hydra, data, building models, the sweep's code)"
START_UP = "Python start-up"
EXIT = "exit (interpreter teardown after the job)"
# module -> (attribute path, category); "Class.*" wraps every public method the class defines or inherits.
TARGETS = {
    "mlflow.tracking.fluent": [("*", "MLflow")],
    "mlflow.tracking.client": [("MlflowClient.*", "MLflow")],
    "optuna.storages": [("JournalStorage.*", "Optuna"), ("RDBStorage.*", "Optuna")],
    "optuna.study.study": [("Study.*", "Optuna")],
    "optuna.trial._trial": [("Trial.*", "Optuna")],
    "sweep.train": [("Trainer.step", "training steps"), ("Trainer.accuracy", "evaluation (validation, test)")],
    # waiting for the records its writer thread stores, and for the store's creation (by a child process, or here)
    "sweep.tracking": [("TrialRun.flush", "MLflow"), ("TrialRun.earlier", "MLflow"), ("check_reachable", "MLflow")],
    "sweep.checkpoint": [("Checkpoint.save", "checkpoints"), ("Checkpoint.load", "checkpoints"),
                         ("Checkpoint.restore", "checkpoints"), ("Checkpoint.discard", "checkpoints")],
    "sweep.measure": [("flops_per_step", "FLOPs counting"), ("make_peak_memory", "memory measuring"),
                      ("ProcessPeakRss.start", "memory measuring"), ("ProcessPeakRss.stop", "memory measuring")],
}


class ExclusiveClock:
    """Seconds per category, each moment charged to the innermost category running on the main thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack = [OTHER]
        self._mark = time.perf_counter()
        self._main = threading.get_ident()

    def _switch(self) -> None:
        now = time.perf_counter()
        self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    def timed(self, function, category: str):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if threading.get_ident() != self._main:
                return function(*args, **kwargs)
            self._switch()
            self._stack.append(category)
            try:
                return function(*args, **kwargs)
            finally:
                self._switch()
                self._stack.pop()

        wrapper.__bench_wrapped__ = True
        return wrapper

    def totals(self) -> dict[str, float]:
        self._switch()
        return dict(self.seconds)


def _wrap_attribute(clock: ExclusiveClock, owner, name: str, category: str, module_name: str) -> None:
    value = inspect.getattr_static(owner, name)
    if isinstance(value, property) and not getattr(value.fget, "__bench_wrapped__", False):
        setattr(owner, name, property(clock.timed(value.fget, category)))
        return
    function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    if not callable(function) or getattr(function, "__bench_wrapped__", False) or inspect.isclass(function):
        return
    if inspect.isclass(owner) or getattr(function, "__module__", None) == module_name:
        wrapped = clock.timed(function, category)
        setattr(owner, name, type(value)(wrapped) if isinstance(value, (staticmethod, classmethod)) else wrapped)


def _wrap(clock: ExclusiveClock, module, path: str, category: str) -> None:
    owner_name, _, member = path.rpartition(".")
    owner = getattr(module, owner_name, None) if owner_name else module
    if owner is None:
        return
    if member == "*":
        names = [n for n in (dir(owner) if inspect.isclass(owner) else vars(owner)) if not n.startswith("_")]
        for name in names:
            _wrap_attribute(clock, owner, name, category, module.__name__)
    elif hasattr(owner, member):
        _wrap_attribute(clock, owner, member, category, module.__name__)


def _initializing(module) -> bool:
    """Still running its top level (an import inside it just returned): its names are not all defined yet."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def instrument(clock: ExclusiveClock) -> None:
    """Time imports, and wrap each target module's functions as soon as it is imported (before anyone binds them)."""
    pending = dict(TARGETS)
    original_import = builtins.__import__

    def wrap_loaded() -> None:
        for module_name in [m for m in pending if m in sys.modules and not _initializing(sys.modules[m])]:
            targets = pending.pop(module_name)
            for path, category in targets:
                _wrap(clock, sys.modules[module_name], path, category)
            if module_name == "mlflow.tracking.fluent" and "mlflow" in sys.modules:  # re-exported as mlflow.<name>
                fluent, package = sys.modules[module_name], sys.modules["mlflow"]
                for name in vars(fluent):
                    if not name.startswith("_") and hasattr(package, name):
                        setattr(package, name, getattr(fluent, name))

    timed_import = clock.timed(original_import, "imports")

    def importing(*args, **kwargs):
        module = timed_import(*args, **kwargs)
        if pending:
            wrap_loaded()
        return module

    builtins.__import__ = importing
    importlib.import_module = clock.timed(importlib.import_module, "imports")


def child(out: Path, argv: list[str]) -> None:
    """Run the job with the clock on; at exit, write the split and when this process started its first line."""
    began = time.time()
    clock = ExclusiveClock()
    instrument(clock)

    def write() -> None:
        out.write_text(json.dumps({"first_line_at": began, "seconds": clock.totals()}))

    atexit.register(write)  # a job the interpreter tears down: after every other handler
    end_process = os._exit

    def write_and_end(status: int) -> None:  # a job that ends without the teardown (sweep/quick_exit.py)
        write()
        end_process(status)

    os._exit = write_and_end
    sys.argv = ["sweep.run", *argv]
    runpy.run_module("sweep.run", run_name="__main__", alter_sys=True)  # as `python -m sweep.run`, under the clock


def timed_job(tree: Path, cache: Path, overrides: list[str], work: Path, omp: str | None) -> dict:
    """One job in a fresh results dir: wall time, and the split the child measured."""
    results = Path(tempfile.mkdtemp(prefix="job-", dir=work))
    (results / "cache").symlink_to(cache, target_is_directory=True)
    split = results / "split.json"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(tree)}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    load = os.getloadavg()
    launched = time.time()
    done = subprocess.run([sys.executable, __file__, CHILD_FLAG, str(split), *overrides, f"results_dir={results}"],
                          cwd=tree, env=env, capture_output=True, text=True)
    wall_s = time.time() - launched
    if done.returncode:
        raise SystemExit(f"the job failed in {tree}:\n{done.stderr[-3000:]}")
    measured = json.loads(split.read_text())
    seconds = {START_UP: measured["first_line_at"] - launched, **measured["seconds"]}
    seconds[EXIT] = wall_s - sum(seconds.values())
    return {"wall_s": wall_s, "seconds": seconds, "load_average_before": load}


def summarise(jobs: list[dict]) -> dict:
    categories = sorted({c for job in jobs for c in job["seconds"]})
    median_s = {c: statistics.median(job["seconds"].get(c, 0.0) for job in jobs) for c in categories}
    share = {c: statistics.median(job["seconds"].get(c, 0.0) / job["wall_s"] for job in jobs) for c in categories}
    return {"median_wall_s": statistics.median(job["wall_s"] for job in jobs), "median_s": median_s,
            "median_share_of_wall": share}


def main() -> None:
    if sys.argv[1:2] == [CHILD_FLAG]:
        child(Path(sys.argv[2]), sys.argv[3:])
        return
    from benchkit import REPO, exported_revision, git_revision, machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git revision to compare with (e.g. the commit before a change)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench/job.json"))
    parser.add_argument("--work-dir", type=Path, default=Path("results/bench/job-runs"),
                        help="the jobs' results directories go here")
    parser.add_argument("--omp-num-threads", help="OMP_NUM_THREADS for the jobs (default: unset, as for a user)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the job, after --")
    args = parser.parse_args()

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        trees = {"current": REPO}
        if args.baseline:
            trees["baseline"] = stack.enter_context(exported_revision(args.baseline))
        caches = {side: Path(tempfile.mkdtemp(prefix=f"cache-{side}-", dir=work)) for side in trees}
        for side, tree in trees.items():  # untimed: pretrains the digits CNN into the side's cache
            timed_job(tree, caches[side], ["+strategy=requires_grad", "search.n_trials=1", "train.epochs=1"], work,
                      args.omp_num_threads)
        jobs: dict[str, list[dict]] = {side: [] for side in trees}
        order = random.Random(0)
        for round_number in range(args.rounds):
            for side in order.sample(list(trees), len(trees)):
                jobs[side].append(timed_job(trees[side], caches[side], args.overrides, work, args.omp_num_threads))
                print(f"round {round_number}: {side} {jobs[side][-1]['wall_s']:.1f} s")

    report = {
        "benchmark": "the main job's wall time split by what it was doing (exclusive: innermost wrapped call)",
        "command": shlex.join([sys.executable, *sys.argv]),
        "job": shlex.join(["python", "-m", "sweep.run", *args.overrides]) + "  (fresh results_dir, weights cached)",
        "OMP_NUM_THREADS": args.omp_num_threads,
        "machine": machine(),
        "versions": {"python": sys.version.split()[0], "current": git_revision(),
                     "baseline": git_revision(args.baseline) if args.baseline else None},
        "jobs": jobs,
        "summary": {side: summarise(side_jobs) for side, side_jobs in jobs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for side, summary in report["summary"].items():
        print(f"{side}: median wall {summary['median_wall_s']:.1f} s")
        for category, share in sorted(summary["median_share_of_wall"].items(), key=lambda item: -item[1]):
            print(f"  {category:55s} {summary['median_s'][category]:7.2f} s  {100 * share:5.1f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
