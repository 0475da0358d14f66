"""Time an epoch of cached_prefix against no_grad_forward and requires_grad at the same selection.

Two cases, each with `freeze.norm_policy=eval` (which cached_prefix needs) for all three:
- digits: the embedded task and CNN, head only (freeze.depth=4); target >= 10x per epoch over no_grad_forward.
- resnet18: `model.weights=null model.input_size=64` on a generated ImageFolder (PNG files written to a
  temporary folder, removed afterwards), stem..layer3 frozen (freeze.depth=4); target >= 3x.

Every contender is a real trial (`run_trial`, the engine path a sweep takes), so an
epoch is what a sweep pays for one: the training pass and the validation pass. Trials
run in rounds, one per strategy in a fresh random order each round, so a noisy
machine slows all of them alike; an epoch's time is the interval between two epoch
callbacks (the first epoch, which also counts FLOPs, is left out). Each cached_prefix
trial builds its cache afresh (a private one), and the build is also timed alone
(opening the feed: reading and decoding the data and running the prefix) and then
amortised over `--trial-epochs`. The JSON says where and how it ran and every figure.

    python scripts/bench_cached_prefix.py [--out results/bench/cached_prefix.json] [--rounds 5]
"""

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchkit import git_revision, machine
from sweep.data import Task, make_task
from sweep.feature_cache import FeatureCache
from sweep.models import ModelDef, make_model_def
from sweep.selection import Selection
from sweep.trial import TrialSpec, run_trial, set_up

STRATEGIES = ("cached_prefix", "no_grad_forward", "requires_grad")
BASELINE = "no_grad_forward"


@dataclass(frozen=True)
class Case:
    model: str
    model_options: dict
    data: str
    depth: int
    target: float  # no_grad_forward epoch / cached_prefix epoch must reach this
    what: str


CASES = {
    "digits_head_only": Case("digits_cnn", {}, "digits", 4, 10.0, "embedded digits CNN, head only (conv1..fc frozen)"),
    "resnet18_stem_to_layer3": Case("resnet18", {"weights": None, "input_size": 64}, "imagefolder", 4, 3.0,
                                    "resnet18 weights=null input 64, generated ImageFolder, stem..layer3 frozen"),
}


def write_image_folder(root: Path, classes: int, per_class: int, side: int, seed: int) -> Path:
    """Smooth random colour images (a gradient plus noise), `side` pixels square, as PNG files."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side)[:, None, None]
    for label in range(classes):
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True)
        tint = rng.uniform(0, 1, 3)
        for index in range(per_class):
            pixels = 255 * np.clip(0.6 * ramp * tint + 0.4 * rng.uniform(0, 1, (side, side, 3)), 0, 1)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:03d}.png")
    return root


@dataclass
class Timings:
    epoch_s: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STRATEGIES})
    paired_ratio: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STRATEGIES})
    build_wall_s: list[float] = field(default_factory=list)
    build_device_s: list[float] = field(default_factory=list)
    cache_bytes: int = 0
    test_accuracy: dict[str, float] = field(default_factory=dict)
    flops_per_step: dict[str, int] = field(default_factory=dict)


def spec(strategy: str, case: Case, epochs: int, seed: int) -> TrialSpec:
    return TrialSpec(strategy=strategy, selection=Selection(depth=case.depth), norm_policy="eval", epochs=epochs,
                     seed=seed, device="cpu")


def epoch_times(strategy: str, case: Case, task: Task, model_def: ModelDef, epochs: int, seed: int, timings: Timings):
    """One trial; the seconds between consecutive epoch callbacks."""
    stamps: list[float] = []

    def stamp(metrics) -> bool:
        stamps.append(time.perf_counter())
        return False  # never stop early

    result = run_trial(spec(strategy, case, epochs, seed), task, model_def, on_epoch=stamp)
    timings.test_accuracy[strategy] = result.test_accuracy
    timings.flops_per_step[strategy] = result.flops_per_step
    if strategy == "cached_prefix":
        timings.build_device_s.append(result.feed_metrics["cache_build_s"])
        timings.cache_bytes = int(result.feed_metrics["cache_bytes"])
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])]


def time_build(case: Case, task: Task, model_def: ModelDef, seed: int) -> float:
    setup = set_up(spec("cached_prefix", case, 1, seed), task, model_def)
    started = time.perf_counter()
    setup.feed.open(FeatureCache())
    return time.perf_counter() - started


def run_case(case: Case, task: Task, model_def: ModelDef, rounds: int, warmup: int, epochs: int,
             order: random.Random) -> Timings:
    timings = Timings()
    for index in range(warmup + rounds):
        strategies = order.sample(STRATEGIES, len(STRATEGIES))
        measured = {s: epoch_times(s, case, task, model_def, epochs, index, timings) for s in strategies}
        build = time_build(case, task, model_def, index)
        if index < warmup:
            continue
        timings.build_wall_s.append(build)
        for strategy, seconds in measured.items():
            timings.epoch_s[strategy] += seconds
            round_median = statistics.median(seconds)
            timings.paired_ratio[strategy].append(statistics.median(measured[BASELINE]) / round_median)
    return timings


def summary(case: Case, timings: Timings, trial_epochs: int) -> dict:
    median_epoch = {s: statistics.median(t) for s, t in timings.epoch_s.items()}
    build_s = statistics.median(timings.build_wall_s)
    amortised = median_epoch["cached_prefix"] + build_s / trial_epochs
    speedup = statistics.median(timings.paired_ratio["cached_prefix"])
    return {
        "what": case.what,
        "model": case.model, "model_options": case.model_options, "data": case.data,
        "freeze_depth": case.depth, "norm_policy": "eval",
        "median_epoch_s": median_epoch,
        "epoch_s_quartiles": {s: statistics.quantiles(t, n=4) for s, t in timings.epoch_s.items()},
        "speedup_over_no_grad_forward_per_epoch": speedup,
        "speedup_is": "median over rounds of (no_grad_forward's median epoch / cached_prefix's) in the same round",
        "speedup_of_median_epochs": {s: median_epoch[BASELINE] / median_epoch[s] for s in STRATEGIES},
        "cache_build_wall_s": build_s,
        "cache_build_wall_s_all": timings.build_wall_s,
        "cache_build_device_s": statistics.median(timings.build_device_s),
        "cache_build_device_s_is": "the trial's cache_build_s metric: the prefix's forwards alone, timed like steps",
        "trial_epochs_for_amortising": trial_epochs,
        "amortised_cached_epoch_s": amortised,
        "speedup_over_no_grad_forward_amortised": median_epoch[BASELINE] / amortised,
        "cache_bytes": timings.cache_bytes,
        "flops_per_step": timings.flops_per_step,
        "flops_ratio_no_grad_forward_over_cached_prefix": timings.flops_per_step[BASELINE] /
        timings.flops_per_step["cached_prefix"],
        "flops_ratio_is": "the speed-up compute alone would give: same batches, the prefix's forward left out",
        "test_accuracy_last_round": timings.test_accuracy,
        "target_speedup": case.target,
        "meets_target": speedup >= case.target,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/cached_prefix.json"))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one trial per strategy each)")
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per timed trial (the first is not timed)")
    parser.add_argument("--trial-epochs", type=int, default=8, help="epochs the cache build is amortised over")
    parser.add_argument("--images", type=int, default=300, help="images in the generated ImageFolder")
    parser.add_argument("--image-side", type=int, default=96, help="their side in pixels: decoding costs no_grad_forward "
                                                                   "every epoch, cached_prefix once")
    parser.add_argument("--cache-dir", type=Path, default=Path("results/cache"), help="pretrained digits weights")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    where = machine()  # before the work: it notes the load average at the start
    order = random.Random(args.seed)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-cached-prefix-") as scratch:
        classes = 10
        images = write_image_folder(Path(scratch) / "images", classes, args.images // classes, args.image_side,
                                    args.seed)
        for name in args.cases:
            case = CASES[name]
            model_def = make_model_def(case.model, cache_dir=args.cache_dir, base_dir=Path.cwd(), **case.model_options)
            data_options = {"root": str(images)} if case.data == "imagefolder" else {}
            task = make_task(case.data, model_def.input_spec, Path.cwd(), **data_options)
            timings = run_case(case, task, model_def, args.rounds, args.warmup_rounds, args.epochs, order)
            results[name] = {**summary(case, timings, args.trial_epochs),
                             "samples": {"train": len(task.train), "val": len(task.val), "test": len(task.test)}}
            print(f"{name}: cached_prefix {results[name]['speedup_over_no_grad_forward_per_epoch']:.1f}x per epoch "
                  f"over no_grad_forward ({results[name]['speedup_over_no_grad_forward_amortised']:.1f}x with the "
                  f"build amortised over {args.trial_epochs} epochs; target {case.target}x); cache "
                  f"{results[name]['cache_bytes']} bytes, built in {results[name]['cache_build_wall_s']:.3f} s")

    report = {
        "benchmark": "one epoch (training + validation) of cached_prefix vs no_grad_forward and requires_grad",
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {**where, "load_average_at_end": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "freeze-sweep": version("freeze-sweep"), "git": git_revision()},
        "setup": {"rounds": args.rounds, "warmup_rounds": args.warmup_rounds, "epochs_per_trial": args.epochs,
                  "batch_size": TrialSpec("cached_prefix").batch_size, "generated_images": args.images,
                  "image_side_px": args.image_side, "seed": args.seed},
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
