"""Start-up of the commands: wall time of `python -m sweep.run +strategy=bogus`, `--help` and `import sweep.run`.

Runs this working tree and, with `--baseline REV`, the same commands on a copy of revision REV,
interleaved in random order round after round, so a noisy shared machine slows both sides alike.
The JSON says where and how it ran, every timing, the medians, and baseline/current ratios.

    python scripts/bench_startup.py --baseline 623f35a [--rounds 7] [--out results/bench/startup.json]
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
from contextlib import ExitStack
from pathlib import Path

from benchkit import REPO, exported_revision, git_revision, machine

COMMANDS = {
    "config error (+strategy=bogus)": ["-m", "sweep.run", "+strategy=bogus"],
    "--help": ["-m", "sweep.run", "--help"],
    "import sweep.run": ["-c", "import sweep.run"],
}


def wall_time_s(tree: Path, args: list[str]) -> float:
    """One run of `python args...` with `tree` first on the path, as a user's fresh shell would run it."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, check=False)
    return time.perf_counter() - started


def interleaved_times(trees: dict[str, Path], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Every (tree, command) once per round, in a random order; one warm-up run per tree first."""
    order = random.Random(0)
    times: dict[str, dict[str, list[float]]] = {side: {name: [] for name in COMMANDS} for side in trees}
    for tree in trees.values():  # the first interpreter start reads everything from disk
        wall_time_s(tree, COMMANDS["import sweep.run"])
    for _ in range(rounds):
        runs = [(side, name) for side in trees for name in COMMANDS]
        for side, name in order.sample(runs, len(runs)):
            times[side][name].append(wall_time_s(trees[side], COMMANDS[name]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git revision to compare with (e.g. the commit before a change)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/bench/startup.json"))
    args = parser.parse_args()

    with ExitStack() as stack:
        trees = {"current": REPO}
        if args.baseline:
            trees["baseline"] = stack.enter_context(exported_revision(args.baseline))
        times = interleaved_times(trees, args.rounds)

    median_s = {side: {name: statistics.median(t) for name, t in by_name.items()} for side, by_name in times.items()}
    report = {
        "benchmark": "wall time from process start to exit, one torch thread",
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "versions": {"python": sys.version.split()[0], "current": git_revision(),
                     "baseline": git_revision(args.baseline) if args.baseline else None},
        "commands": {name: shlex.join(["python", *argv]) for name, argv in COMMANDS.items()},
        "rounds": args.rounds,
        "times_s": times,
        "median_s": median_s,
    }
    if args.baseline:
        report["ratio_baseline_over_current"] = {name: median_s["baseline"][name] / median_s["current"][name]
                                                 for name in COMMANDS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name in COMMANDS:
        line = "  ".join(f"{side} {median_s[side][name]:6.2f} s" for side in trees)
        print(f"{name:32s} {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
