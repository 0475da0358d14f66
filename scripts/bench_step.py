"""Time a training step of every mechanism, through the engine and through a plain hand-written loop.

Both sides train the embedded digits CNN (first 2 of its 4 blocks frozen) with SGD and
momentum on the same pre-collated batches. The engine side is `sweep.train.Trainer.step`,
set up as a trial sets it up (selection, lr split, mechanism, optimizer, constant
schedule); the plain side is the loop a user would write for each mechanism. Each
batch goes through every variant, a mechanism's engine and plain steps back to back,
after warm-up rounds, so a noisy shared machine slows both sides alike. The JSON says
where and how it ran, the median step times, the engine/plain ratio per mechanism
(budget: 1.05) and the speed-up of `requires_grad` over `full_finetune`.

    python scripts/bench_step.py [--out results/bench/step.json] [--rounds 20]
"""

import argparse
import gc
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sweep.blocknet import BlockNet
from sweep.data import make_task
from sweep.lr_split import make_lr_split, param_groups
from sweep.measure import StepTimer
from sweep.models import make_model_def
from sweep.optim import OptimizerSpec, make_optimizer
from sweep.schedules import make_schedule
from sweep.selection import FrozenSet, Selection, resolve
from sweep.strategies import MECHANISMS
from sweep.train import Trainer

FROZEN_DEPTH = 2
OVERHEAD_BUDGET = 1.05
SIDES = ("engine", "plain")
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def engine_step(net: BlockNet, strategy: str, spec: OptimizerSpec) -> Step:
    mechanism_cls = MECHANISMS.get(strategy)
    frozen = resolve(net, Selection(depth=FROZEN_DEPTH)) if mechanism_cls.freezes else FrozenSet()
    groups = param_groups(net, frozen, make_lr_split("uniform"), spec.lr, spec.weight_decay)
    mechanism = mechanism_cls(net, frozen)
    optimizer = make_optimizer(mechanism.optimizer_groups(groups), spec)
    scheduler = make_schedule("constant", optimizer, total_steps=1, base_lr=spec.lr)
    return Trainer(net, optimizer, mechanism, StepTimer(), torch.device("cpu"), scheduler).step


# The plain loops: each takes the frozen prefix and the rest (blocks after it, then the head).

def sgd(params, spec: OptimizerSpec) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum)


def plain_loop(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer) -> Step:
    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def plain_requires_grad(prefix: nn.Sequential, rest: nn.Sequential, spec: OptimizerSpec) -> Step:
    prefix.requires_grad_(False)
    return plain_loop(nn.Sequential(prefix, rest), sgd(rest.parameters(), spec))


def plain_exclude_from_optimizer(prefix: nn.Sequential, rest: nn.Sequential, spec: OptimizerSpec) -> Step:
    return plain_loop(nn.Sequential(prefix, rest), sgd(rest.parameters(), spec))


def plain_zero_lr(prefix: nn.Sequential, rest: nn.Sequential, spec: OptimizerSpec) -> Step:
    groups = [{"params": rest.parameters()}, {"params": prefix.parameters(), "lr": 0.0}]
    return plain_loop(nn.Sequential(prefix, rest), sgd(groups, spec))


def plain_weight_restore(prefix: nn.Sequential, rest: nn.Sequential, spec: OptimizerSpec) -> Step:
    model = nn.Sequential(prefix, rest)
    train = plain_loop(model, sgd(model.parameters(), spec))
    frozen = list(prefix.parameters())
    saved = [p.detach().clone() for p in frozen]

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = train(inputs, targets)
        with torch.no_grad():
            for param, copy in zip(frozen, saved):
                param.copy_(copy)
        return loss

    return step


def plain_no_grad_forward(prefix: nn.Sequential, rest: nn.Sequential, spec: OptimizerSpec) -> Step:
    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = prefix(inputs)
        return rest(features)

    return plain_loop(forward, sgd(rest.parameters(), spec))


def plain_full_finetune(prefix: nn.Sequential, rest: nn.Sequential, spec: OptimizerSpec) -> Step:
    model = nn.Sequential(prefix, rest)
    return plain_loop(model, sgd(model.parameters(), spec))


PLAIN: dict[str, Callable[[nn.Sequential, nn.Sequential, OptimizerSpec], Step]] = {
    "requires_grad": plain_requires_grad,
    "exclude_from_optimizer": plain_exclude_from_optimizer,
    "zero_lr": plain_zero_lr,
    "weight_restore": plain_weight_restore,
    "no_grad_forward": plain_no_grad_forward,
    "full_finetune": plain_full_finetune,
}


def plain_step(net: BlockNet, strategy: str, spec: OptimizerSpec) -> Step:
    blocks = list(net.blocks.values())
    return PLAIN[strategy](nn.Sequential(*blocks[:FROZEN_DEPTH]), nn.Sequential(*blocks[FROZEN_DEPTH:], net.head), spec)


BUILDERS = {"engine": engine_step, "plain": plain_step}


Variant = tuple[str, str]  # (strategy, side)


def time_round(steps: dict[Variant, Step], batches: Batches, order: random.Random) -> dict[Variant, list[float]]:
    """One pass over the batches for every variant, in seconds per step.

    Step by step: for each batch the mechanisms come in a fresh random order, and
    each one's engine and plain steps run back to back (which goes first is random
    too), so both meet the same machine load. Python's garbage collector is held
    off, as `timeit` does.
    """
    times: dict[Variant, list[float]] = {variant: [] for variant in steps}
    strategies = list(MECHANISMS)
    gc.collect()
    gc.disable()
    try:
        for inputs, targets in batches:
            order.shuffle(strategies)
            for strategy in strategies:
                for side in order.sample(SIDES, len(SIDES)):
                    started = time.perf_counter()
                    steps[strategy, side](inputs, targets)
                    times[strategy, side].append(time.perf_counter() - started)
    finally:
        gc.enable()
    return times


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def git_revision() -> str | None:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/step.json"))
    parser.add_argument("--rounds", type=int, default=20, help="timed passes over the batches")
    parser.add_argument("--warmup-rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-dir", type=Path, default=Path("results/cache"), help="pretrained weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_def = make_model_def("digits_cnn", cache_dir=args.cache_dir, base_dir=Path.cwd())
    task = make_task("digits", model_def.input_spec, Path.cwd())
    batches = list(DataLoader(task.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(args.seed)))
    spec = OptimizerSpec(name="sgd", lr=0.05, momentum=0.9)
    steps = {}
    for strategy in MECHANISMS:
        for side, build in BUILDERS.items():
            torch.manual_seed(args.seed)  # the same head for every variant
            net = model_def.build(task.num_classes).train()
            steps[strategy, side] = build(net, strategy, spec)

    order = random.Random(args.seed)
    for _ in range(args.warmup_rounds):
        time_round(steps, batches, order)
    times: dict[Variant, list[float]] = {variant: [] for variant in steps}
    for _ in range(args.rounds):
        for variant, seconds in time_round(steps, batches, order).items():
            times[variant] += seconds

    median_ms = {side: {s: 1000 * statistics.median(times[s, side]) for s in MECHANISMS} for side in SIDES}
    # Engine over plain: the median over back-to-back step pairs on the same batch, which cancels most of the
    # machine's load swings; the ratio of the two sides' median step times is kept alongside.
    ratios = {s: statistics.median(e / p for e, p in zip(times[s, "engine"], times[s, "plain"])) for s in MECHANISMS}
    report = {
        "benchmark": "one training step per mechanism: sweep's Trainer.step vs a plain hand-written PyTorch loop",
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "device": "cpu",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "freeze-sweep": version("freeze-sweep"),
            "git": git_revision(),
        },
        "setup": {
            "task": "digits", "model": "digits_cnn", "frozen_blocks": net.block_names[:FROZEN_DEPTH],
            "optimizer": {"name": spec.name, "lr": spec.lr, "momentum": spec.momentum}, "lr_split": "uniform",
            "batch_size": args.batch_size, "steps_per_round": len(batches), "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds, "seed": args.seed,
        },
        "median_step_ms": median_ms,
        "ratio_engine_over_plain": ratios,
        "ratio_engine_over_plain_is": "median over back-to-back (engine step, plain step) pairs on the same batch",
        "ratio_of_median_step_ms": {s: median_ms["engine"][s] / median_ms["plain"][s] for s in MECHANISMS},
        "overhead_budget": OVERHEAD_BUDGET,
        "within_budget": max(ratios.values()) <= OVERHEAD_BUDGET,
        "speedup_requires_grad_over_full_finetune": {
            side: median_ms[side]["full_finetune"] / median_ms[side]["requires_grad"] for side in SIDES},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for strategy in MECHANISMS:
        print(f"{strategy:24s} engine {median_ms['engine'][strategy]:7.3f} ms  plain {median_ms['plain'][strategy]:7.3f} ms"
              f"  ratio {ratios[strategy]:.3f}")
    print(f"requires_grad over full_finetune: {report['speedup_requires_grad_over_full_finetune']['engine']:.2f}x; "
          f"within the {OVERHEAD_BUDGET} budget: {report['within_budget']}; wrote {args.out}")


if __name__ == "__main__":
    main()
