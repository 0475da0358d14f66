"""executor=ray against executor=local on one comparison: wall time, and what handing trials out costs per trial.

Runs `python -m sweep.run` with each executor once per round (the order alternates round by round, so a noisy
shared machine slows both sides alike), each into a fresh results_dir that links one pretrained-digits cache,
warmed first so that no run pays for pretraining. Ray runs with `executor.max_concurrent` trials at once on a
Ray instance the sweep starts on this machine. Every trial runs one torch thread (`train.threads=1`, as a Ray
trial reserving one CPU does anyway), so a trial computes the same on either side and the difference is
running two at once, and what it costs to hand trials out.

From the MLflow records of every run it takes, per trial, how long its run was open (the driver creates it
when it hands the trial out; the trial's own process ends it) minus the trial's own `wall_time_s`: the
per-trial cost of handing a trial out and getting it back (a Ray trial's per-epoch round trips to the driver
fall inside its `wall_time_s`, and so does its thread count: compare those sums with care). The rest of a
command's wall time is start-up before its first trial and the end after its last.

    python scripts/bench_executor.py [--rounds 2] [--n-trials 6] [--epochs 8] [--max-concurrent 2]
                                     [--out results/bench/executor.json]
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchkit import REPO, git_revision, machine

EXPERIMENT = "bench-executor"


def sweep(results: Path, *args: str) -> tuple[float, float]:
    """Run the sweep into `results`; (epoch time at start, wall seconds)."""
    started, clock = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sweep.run", f"experiment={EXPERIMENT}", f"results_dir={results}",
                           *args], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - clock
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({shlex.join(args)}):\n{done.stderr[-3000:]}")
    return started, wall


def measured(results: Path, started: float, wall_s: float) -> dict:
    """What one command spent where, from its MLflow records."""
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              "tags.`sweep.role` = 'trial'", max_results=10000)
    open_s = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    inside_s = [r.data.metrics["wall_time_s"] for r in runs]
    overhead_s = [o - i for o, i in zip(open_s, inside_s)]
    first_start = min(r.info.start_time for r in runs) / 1000
    last_end = max(r.info.end_time for r in runs) / 1000
    in_order = sorted(runs, key=lambda r: r.info.start_time)
    gaps_s = [(b.info.start_time - a.info.end_time) / 1000 for a, b in zip(in_order, in_order[1:])]
    return {
        "wall_s": wall_s,
        "trials": len(runs),
        "nodes": sorted({r.data.tags["sweep.node"] for r in runs}),
        "trial_wall_time_s_sum": sum(inside_s),
        "per_trial_overhead_s_median": statistics.median(overhead_s),
        "per_trial_overhead_s_max": max(overhead_s),
        # One trial ended, the next created: the driver's tell, ask, sampling and new MLflow run (sequential runs only).
        "between_trials_s_median": statistics.median(gaps_s) if gaps_s else None,
        "start_s": first_start - started,  # interpreter, imports, checks, stores (and Ray's start) to the first trial
        "end_s": started + wall_s - last_end,  # after the last trial: table, stores closed (and Ray's stop)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-trials", type=int, default=6, help="per strategy (the default comparison: 6)")
    parser.add_argument("--epochs", type=int, default=8, help="per trial (the default comparison: 8)")
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench/executor.json"))
    args = parser.parse_args()

    budget = [f"search.n_trials={args.n_trials}", f"train.epochs={args.epochs}", "train.threads=1"]
    executors = {"local": ["executor=local"],
                 "ray": ["executor=ray", f"executor.max_concurrent={args.max_concurrent}"]}
    runs: dict[str, list[dict]] = {name: [] for name in executors}
    with tempfile.TemporaryDirectory(prefix="bench-executor-") as scratch:
        cache = Path(scratch) / "cache"
        sweep(Path(scratch) / "warm-up", "+strategy=full_finetune", "search.n_trials=1", "train.epochs=1")
        (Path(scratch) / "warm-up" / "cache").rename(cache)
        for round_number in range(args.rounds):
            order = list(executors) if round_number % 2 == 0 else list(reversed(executors))
            for name in order:
                results = Path(scratch) / f"{name}-{round_number}"
                results.mkdir()
                (results / "cache").symlink_to(cache, target_is_directory=True)
                started, wall_s = sweep(results, *budget, *executors[name])
                runs[name].append(measured(results, started, wall_s))
                print(f"round {round_number} {name:5s} {wall_s:7.1f} s", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    summary = {name: {key: median(name, key) for key in ("wall_s", "trial_wall_time_s_sum",
                                                         "per_trial_overhead_s_median", "start_s", "end_s")}
               for name in executors}
    report = {
        "benchmark": "python -m sweep.run, every strategy, executor=local vs executor=ray on a local Ray instance",
        "command": shlex.join([sys.executable, *sys.argv]),
        "sweep_args": {name: budget + extra for name, extra in executors.items()},
        "machine": machine(),
        "versions": {"python": sys.version.split()[0], "revision": git_revision()},
        "rounds": args.rounds,
        "runs": runs,
        "median": summary,
        "wall_time_local_over_ray": summary["local"]["wall_s"] / summary["ray"]["wall_s"],
        "ray_per_trial_overhead_s": (summary["ray"]["per_trial_overhead_s_median"]
                                     - summary["local"]["per_trial_overhead_s_median"]),
        "ray_start_and_stop_s": (summary["ray"]["start_s"] + summary["ray"]["end_s"]
                                 - summary["local"]["start_s"] - summary["local"]["end_s"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name in executors:
        print(f"{name:5s} " + "  ".join(f"{key} {value:.2f}" for key, value in summary[name].items()))
    print(f"local/ray wall time {report['wall_time_local_over_ray']:.2f}; Ray per trial "
          f"{report['ray_per_trial_overhead_s']:.2f} s; Ray start and stop {report['ray_start_and_stop_s']:.1f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
