"""Training steps timed side by side: round-robin over the same batches in one process.

Timings taken one trial after another on a shared machine mostly measure the
machine's load at the time. Here every variant takes a step on the same batch
before any takes the next, in a fresh random order per batch, so load swings hit
every variant alike; figures are medians with their interquartile range, and a
ratio is taken within each round (the same load) before it is summarised.
`scripts/bench_step.py` and the sweep's own timing both use this.
"""

import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from sweep.data import Task
from sweep.measure import StepTimer
from sweep.models import ModelDef
from sweep.trace import Tracer
from sweep.train import Trainer
from sweep.trial import TrialSpec, held_norms, set_up

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = list[tuple[torch.Tensor, torch.Tensor]]
K = TypeVar("K", bound=Hashable)
Round = dict[K, list[float]]  # seconds per step, one entry per batch


def engine_trainer(spec: TrialSpec, task: Task, model_def: ModelDef, traced: bool = False) -> Trainer:
    """The trainer of the trial `spec` describes, set up as `run_trial` sets it up (`traced`: with its tracer).

    No scheduler: the lr stays at its first value, so any number of timed steps fits any schedule's horizon.
    """
    setup = set_up(spec, task, model_def)
    setup.net.train()
    held = held_norms(spec, setup.net, setup.frozen)
    for module in held:
        module.eval()
    tracer = Tracer(setup.net, setup.optimizer, setup.mechanism, spec.grad_clip_norm) if traced else None
    return Trainer(setup.net, setup.optimizer, setup.mechanism, StepTimer(), setup.device,
                   grad_clip_norm=spec.grad_clip_norm, eval_mode_modules=held, tracer=tracer)


def engine_step(spec: TrialSpec, task: Task, model_def: ModelDef) -> Step:
    """One training step of the trial `spec` describes (see `engine_trainer`)."""
    return engine_trainer(spec, task, model_def).step


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_round(groups: Sequence[Sequence[K]], steps: Mapping[K, Step], batches: Batches, order: random.Random,
               device: torch.device = torch.device("cpu")) -> Round:
    """One pass over the batches for every variant, in seconds per step.

    For each batch the groups come in a fresh random order, and the variants of a
    group run back to back (in random order too), so variants that are compared
    with each other meet the same machine load. Python's garbage collector is held
    off, as `timeit` does.
    """
    sync = _synchronizer(device)
    times: Round = {variant: [] for group in groups for variant in group}
    shuffled = [list(group) for group in groups]
    gc.collect()
    gc.disable()
    try:
        for inputs, targets in batches:
            order.shuffle(shuffled)
            for group in shuffled:
                for variant in order.sample(group, len(group)):
                    sync()
                    started = time.perf_counter()
                    steps[variant](inputs, targets)
                    sync()
                    times[variant].append(time.perf_counter() - started)
    finally:
        gc.enable()
    return times


def time_rounds(groups: Sequence[Sequence[K]], steps: Mapping[K, Step], batches: Batches, rounds: int,
                warmup_rounds: int, seed: int, device: torch.device = torch.device("cpu")) -> list[Round]:
    """`warmup_rounds` untimed passes (allocator, caches, lazy init), then `rounds` timed ones."""
    order = random.Random(seed)
    for _ in range(warmup_rounds):
        time_round(groups, steps, batches, order, device)
    return [time_round(groups, steps, batches, order, device) for _ in range(rounds)]


@dataclass(frozen=True)
class TimingSettings:
    rounds: int  # 0: no timing
    steps: int
    warmup_rounds: int

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "TimingSettings":
        """`section` passed sweep.schema's `Timing`."""
        return cls(section["rounds"], section["steps"], section["warmup_rounds"])


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range (first and third quartiles) of a sample."""

    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, q1, q3)

    def scaled(self, factor: float) -> "Spread":
        return Spread(self.median * factor, self.q1 * factor, self.q3 * factor)

    def crosses(self, value: float) -> bool:
        """True when `value` lies inside the interquartile range: the ordering against it is not settled."""
        return self.q1 <= value <= self.q3


def step_ms(rounds: Sequence[Round], variant: Hashable) -> Spread:
    """Step time of a variant over every timed step, in milliseconds."""
    return Spread.of([s for r in rounds for s in r[variant]]).scaled(1000)


def round_ratios(rounds: Sequence[Round], variant: Hashable, reference: Hashable) -> Spread:
    """The variant's median step over the reference's, within each round (the same load), summarised over rounds."""
    return Spread.of([statistics.median(r[variant]) / statistics.median(r[reference]) for r in rounds])


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine(device: torch.device) -> dict[str, object]:
    """Where a timing ran: what a reader needs before comparing it with another."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
    }
