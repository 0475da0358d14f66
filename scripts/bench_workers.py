"""Throughput of two sweep workers on one host against one, on the same job with the stores created first.

Each pair runs the job (`python -m sweep.run`, the default comparison unless overrides follow
`--`) once with one worker and once with two workers started together, each run as a fresh
experiment in one results_dir whose MLflow database, Optuna journal and pretrained weights a
warm-up run created first. The two sides of a pair run in random order, back to back, so a
noisy shared machine loads both alike. Throughput = trial and repeat runs finished / wall time
from the start to the last worker's exit. OMP_NUM_THREADS is removed from the workers'
environment, so they take their threads as a user's would (`train.threads`, README).

The JSON says where and how it ran, every run (wall time, runs finished, the torch thread counts
the trials recorded, load average) and the two-over-one throughput ratio of every pair with its
median and range.

    python scripts/bench_workers.py [--pairs 3] [--out results/bench/workers.json] [-- override ...]
"""

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchkit import REPO, git_revision, machine

WARM_UP = ["+strategy=requires_grad", "search.n_trials=1", "train.epochs=1"]
WORK_ROLES = ("trial", "repeat")  # MLflow runs that are a trial's work (repeats: confirmation runs, where made)


def sweep(results_dir: Path, experiment: str, workers: int, overrides: list[str], log_dir: Path) -> float:
    """Start `workers` workers of one job together; the wall time until the last one exits."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = [sys.executable, "-m", "sweep.run", *overrides, f"experiment={experiment}", f"results_dir={results_dir}"]
    started = time.perf_counter()
    processes = []
    for worker in range(workers):
        with open(log_dir / f"{experiment}-{worker}.log", "w") as log:
            processes.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in processes]
    wall_s = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"{experiment}: a worker exited with {codes}; see {log_dir}")
    return wall_s


def finished_runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    runs = [run for role in WORK_ROLES
            for run in client.search_runs([found.experiment_id], f"tags.`sweep.role` = '{role}'", max_results=10000)]
    return [r for r in runs if r.info.status == "FINISHED"]


def measure(results_dir: Path, client: MlflowClient, experiment: str, workers: int, overrides: list[str],
            log_dir: Path) -> dict:
    load_before = os.getloadavg()
    wall_s = sweep(results_dir, experiment, workers, overrides, log_dir)
    runs = finished_runs(client, experiment)
    threads = Counter(int(r.data.metrics["torch_threads"]) for r in runs if "torch_threads" in r.data.metrics)
    return {"experiment": experiment, "workers": workers, "wall_s": wall_s, "runs_finished": len(runs),
            "runs_per_s": len(runs) / wall_s, "torch_threads_of_runs": dict(sorted(threads.items())),
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench/workers.json"))
    parser.add_argument("--results-dir", type=Path, default=Path("results/bench/workers-runs"),
                        help="where the sweeps write (created; reused runs are refused by their experiment names)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the job, after --")
    args = parser.parse_args()

    results_dir = args.results_dir.resolve()
    log_dir = results_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y%m%d-%H%M%S")
    sweep(results_dir, f"warm-up-{started}", 1, WARM_UP, log_dir)  # the stores and the pretrained weights
    client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")

    order = random.Random(args.seed)
    pairs = []
    for number in range(args.pairs):
        runs = {}
        for workers in order.sample([1, 2], 2):
            runs[workers] = measure(results_dir, client, f"workers{workers}-{started}-{number}", workers,
                                    args.overrides, log_dir)
            print(f"pair {number}: {workers} worker(s) {runs[workers]['wall_s']:.1f} s, "
                  f"{runs[workers]['runs_finished']} runs, threads {runs[workers]['torch_threads_of_runs']}")
        pairs.append({"one": runs[1], "two": runs[2], "ratio_two_over_one": runs[2]["runs_per_s"] / runs[1]["runs_per_s"]})

    ratios = [p["ratio_two_over_one"] for p in pairs]
    report = {
        "benchmark": "runs finished per second: two sweep workers on one host started together vs one worker",
        "command": shlex.join([sys.executable, *sys.argv]),
        "job": shlex.join(["python", "-m", "sweep.run", *args.overrides]) + "  (fresh experiment per run)",
        "machine": machine(),
        "versions": {"python": sys.version.split()[0], "freeze-sweep": git_revision()},
        "pairs": pairs,
        "ratio_two_over_one": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                               "per_pair": ratios},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"two workers over one: median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}) "
          f"over {len(ratios)} pairs; wrote {args.out}")


if __name__ == "__main__":
    main()
