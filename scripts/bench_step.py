"""Time a training step of every mechanism, through the engine and through a plain hand-written loop.

Both sides train the embedded digits CNN (its first 2 of 4 blocks frozen, or --depth) with SGD and
momentum on the same pre-collated batches. The engine side is `sweep.train.Trainer.step`,
set up as a trial sets it up (selection, lr split, mechanism, optimizer, constant
schedule); the plain side is the loop a user would write for each mechanism; the
traced side is the engine with the tracer every trial runs (`sweep.trace`), its
per-epoch summary included once per pass over the batches, as in training. Each
batch goes through every variant, a mechanism's engine, plain and traced steps back
to back, after warm-up rounds, so a noisy shared machine slows them alike. The JSON
says where and how it ran, the median step times, the engine/plain ratio per
mechanism with its spread and a verdict against the budget of 1.05 (none when the
spread crosses it), the traced/engine ratio against its budget of 1.02, the
tracer's own calls timed alone as a share of the engine's step (a precise figure
where the machine is too busy for the ratio to decide), the speed-up of
`requires_grad` over `full_finetune`, and each mechanism's engine step over
`full_finetune`'s, round by round. `cached_prefix` is not here: its step is a
step of the suffix; scripts/bench_cached_prefix.py times it per epoch.

    python scripts/bench_step.py [--out results/bench/step.json] [--rounds 20] [--depth 2]
"""

import argparse
import itertools
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from benchkit import git_revision
from sweep.blocknet import BlockNet
from sweep.data import Task, make_task
from sweep.models import ModelDef, make_model_def
from sweep.optim import OptimizerSpec
from sweep.selection import Selection
from sweep.step_timing import Spread, Step, engine_step, engine_trainer, machine, round_ratios, step_ms, time_rounds
from sweep.trial import TrialSpec

FROZEN_DEPTH = 2  # the default --depth
OVERHEAD_BUDGET = 1.05
TRACING_BUDGET = 1.02  # what tracing may add to a step
SIDES = ("engine", "plain")
TRACED = "traced"
CPU = torch.device("cpu")


def budget_verdict(ratio: Spread, budget: float = OVERHEAD_BUDGET) -> bool | None:
    """True: within the budget; False: over it; None: its interquartile range crosses it, no verdict."""
    if ratio.crosses(budget):
        return None
    return ratio.q3 < budget


def overall_verdict(verdicts: dict[str, bool | None], budget: float = OVERHEAD_BUDGET) -> tuple[bool | None, str]:
    """Over if any mechanism is over; no verdict if any is undecided; within only if every one is within."""
    over = [s for s, v in verdicts.items() if v is False]
    undecided = [s for s, v in verdicts.items() if v is None]
    if over:
        return False, f"over the {budget} budget: {', '.join(over)}"
    if undecided:
        return None, (f"no verdict: the interquartile range of the ratio crosses {budget} for "
                      f"{', '.join(undecided)} (too noisy; run on a quieter machine or with more --rounds)")
    return True, f"within the {budget} budget"


def trial(strategy: str, spec: OptimizerSpec, seed: int, depth: int) -> TrialSpec:
    """Set up as a trial is: uniform lr split, constant schedule, the same seed (same head)."""
    return TrialSpec(strategy, Selection(depth=depth), lr_split="uniform", optimizer=spec, seed=seed, device="cpu")


def _per_call_us(call: Callable[[], object], calls: int, repeats: int = 7) -> float:
    """Microseconds per call: the fastest of `repeats` timed loops, as `timeit` reports (the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / calls


def tracing_cost_us(model_def: ModelDef, task: Task, spec: TrialSpec,
                    batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """The tracer's own work, timed alone on a trained-once trainer: what it adds to every step (reading the lrs)
    and to every epoch (sampling gradient norms, the invariant check, the summary). Far less noisy on a busy
    machine than a whole step, whose time it is then set against."""
    trainer = engine_trainer(spec, task, model_def, traced=True)
    trainer.step(*batches[0])  # gradients and optimizer state exist, as mid-training
    tracer = trainer.tracer

    def per_step() -> None:
        tracer.gradients()  # not sampling: the epoch's first step has been
        tracer.update(None)

    def per_epoch() -> None:
        tracer.start_epoch()
        tracer.gradients()  # the sampled step
        tracer.update(None)
        tracer.end_epoch()

    step_us = _per_call_us(per_step, 2000)
    epoch_us = _per_call_us(per_epoch, 100)
    return {"per_step_us": step_us, "per_epoch_us": epoch_us,
            "per_step_amortized_us": step_us + epoch_us / len(batches)}


def traced(model_def: ModelDef, task: Task, spec: TrialSpec, steps_per_epoch: int) -> Step:
    """The engine's step with a trial's tracer, whose per-epoch summary runs every `steps_per_epoch` steps."""
    trainer = engine_trainer(spec, task, model_def, traced=True)
    count = itertools.count(1)

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = trainer.step(inputs, targets)
        if next(count) % steps_per_epoch == 0:
            trainer.tracer.end_epoch()
            trainer.tracer.start_epoch()
        return loss

    return step


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


def plain_step(net: BlockNet, strategy: str, spec: OptimizerSpec, depth: int) -> Step:
    blocks = list(net.blocks.values())
    return PLAIN[strategy](nn.Sequential(*blocks[:depth]), nn.Sequential(*blocks[depth:], net.head), spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/step.json"))
    parser.add_argument("--rounds", type=int, default=20, help="timed passes over the batches")
    parser.add_argument("--warmup-rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-dir", type=Path, default=Path("results/cache"), help="pretrained weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=FROZEN_DEPTH, help="blocks frozen, from the input (1-3)")
    args = parser.parse_args()

    model_def = make_model_def("digits_cnn", cache_dir=args.cache_dir, base_dir=Path.cwd())
    task = make_task("digits", model_def.input_spec, Path.cwd())
    batches = list(DataLoader(task.train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(args.seed)))
    spec = OptimizerSpec(name="sgd", lr=0.05, momentum=0.9)
    steps = {}
    trials = {strategy: trial(strategy, spec, args.seed, args.depth) for strategy in PLAIN}
    for strategy in PLAIN:
        steps[strategy, "engine"] = engine_step(trials[strategy], task, model_def)
        torch.manual_seed(args.seed)  # the same head as the engine's
        net = model_def.build(task.num_classes).train()
        steps[strategy, "plain"] = plain_step(net, strategy, spec, args.depth)
        steps[strategy, TRACED] = traced(model_def, task, trials[strategy], len(batches))

    # A mechanism's engine, plain and traced steps run back to back: they are compared with each other.
    groups = [[(strategy, side) for side in (*SIDES, TRACED)] for strategy in PLAIN]
    rounds = time_rounds(groups, steps, batches, args.rounds, args.warmup_rounds, args.seed)

    median_ms = {side: {s: step_ms(rounds, (s, side)).median for s in PLAIN} for side in SIDES}
    # Engine over plain within each round (the same batches under the same load), then its spread over the rounds:
    # a median alone said "within budget" while per-round ratios ranged 0.48-2.11 under load.
    ratios = {s: round_ratios(rounds, (s, "engine"), (s, "plain")) for s in PLAIN}
    verdicts = {s: budget_verdict(ratio) for s, ratio in ratios.items()}
    within_budget, verdict = overall_verdict(verdicts)
    tracing = {s: round_ratios(rounds, (s, TRACED), (s, "engine")) for s in PLAIN}
    tracing_verdicts = {s: budget_verdict(ratio, TRACING_BUDGET) for s, ratio in tracing.items()}
    tracing_within, tracing_verdict = overall_verdict(tracing_verdicts, TRACING_BUDGET)
    costs = {s: tracing_cost_us(model_def, task, trials[s], batches) for s in PLAIN}
    # Every group runs in every round, so each mechanism's engine step compares with full_finetune's round by round.
    vs_full = {s: round_ratios(rounds, (s, "engine"), ("full_finetune", "engine")) for s in PLAIN}
    shares = {s: costs[s]["per_step_amortized_us"] / (1000 * median_ms["engine"][s]) for s in PLAIN}
    report = {
        "benchmark": "one training step per mechanism: sweep's Trainer.step vs a plain hand-written PyTorch loop",
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(CPU),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "freeze-sweep": version("freeze-sweep"),
            "git": git_revision(),
        },
        "setup": {
            "task": "digits", "model": "digits_cnn", "frozen_blocks": net.block_names[:args.depth],
            "optimizer": {"name": spec.name, "lr": spec.lr, "momentum": spec.momentum}, "lr_split": "uniform",
            "batch_size": args.batch_size, "steps_per_round": len(batches), "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds, "seed": args.seed,
        },
        "median_step_ms": median_ms,
        "ratio_engine_over_plain": {s: asdict(ratio) for s, ratio in ratios.items()},
        "ratio_engine_over_plain_is": "per round, the engine's median step over the plain loop's (the same batches "
                                      "under the same load); median and interquartile range (q1, q3) over the rounds",
        "ratio_of_median_step_ms": {s: median_ms["engine"][s] / median_ms["plain"][s] for s in PLAIN},
        "overhead_budget": OVERHEAD_BUDGET,
        "within_budget_by_mechanism": verdicts,
        "within_budget": within_budget,
        "verdict": verdict,
        "traced_step_ms": {s: step_ms(rounds, (s, TRACED)).median for s in PLAIN},
        "ratio_traced_over_engine": {s: asdict(ratio) for s, ratio in tracing.items()},
        "ratio_traced_over_engine_is": "per round (one pass over the batches, closed by the tracer's per-epoch "
                                       "summary), the traced engine's median step over the untraced engine's; median "
                                       "and interquartile range over the rounds",
        "tracing_budget": TRACING_BUDGET,
        "tracing_within_budget": tracing_within,
        "tracing_verdict": tracing_verdict,
        "tracer_cost_us": costs,
        "tracer_cost_is": "the tracer's own calls timed alone (fastest of 7 loops): per step, per epoch, and per step "
                          "with the epoch's share (steps_per_round steps per epoch); no grad clipping",
        "tracer_share_of_engine_step": shares,
        "engine_step_vs_full_finetune": {s: asdict(ratio) for s, ratio in vs_full.items()},
        "engine_step_vs_full_finetune_is": "per round, the mechanism's median engine step over full_finetune's; "
                                           "median and interquartile range over the rounds",
        "speedup_requires_grad_over_full_finetune": {
            side: median_ms[side]["full_finetune"] / median_ms[side]["requires_grad"] for side in SIDES},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for strategy in PLAIN:
        ratio = ratios[strategy]
        print(f"{strategy:24s} engine {median_ms['engine'][strategy]:7.3f} ms  plain {median_ms['plain'][strategy]:7.3f} ms"
              f"  ratio {ratio.median:.3f} (IQR {ratio.q1:.3f}-{ratio.q3:.3f})  traced/engine "
              f"{tracing[strategy].median:.3f} (IQR {tracing[strategy].q1:.3f}-{tracing[strategy].q3:.3f})")
    print(f"requires_grad over full_finetune: {report['speedup_requires_grad_over_full_finetune']['engine']:.2f}x; "
          f"engine/plain {verdict}; tracing {tracing_verdict}")
    print(f"engine step over full_finetune's with {args.depth} blocks frozen: " + ", ".join(
        f"{s} {r.median:.2f} (IQR {r.q1:.2f}-{r.q3:.2f})" for s, r in vs_full.items() if s != "full_finetune"))
    print("tracer's own cost per step (epoch work amortized) over the engine's median step: "
          + ", ".join(f"{s} {share:.2%}" for s, share in shares.items()) + f"; wrote {args.out}")


if __name__ == "__main__":
    main()
