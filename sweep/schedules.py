"""Learning-rate schedules, stepped once per optimizer step over the whole trial (every phase).

Schedules scale each group's own lr, so an lr split keeps its ratios: all but
`onecycle` are a factor of the step that `LambdaLR` applies to every group's
`initial_lr`. Step sizes, milestones and exponential decay are counted in
epochs (as in the torchvision reference scripts), warmup as a fraction of the
trial. The exception is `onecycle`, built as users usually write it (one
scalar `max_lr`): it rewrites every group's lr, zero-lr groups included, and
that shows up as drift rather than being quietly patched.
"""

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from sweep.errors import ConfigError
from sweep.lr_split import check_fraction
from sweep.registry import Registry


@dataclass(frozen=True)
class Horizon:
    """How long the schedule runs, in optimizer steps."""

    total_steps: int
    steps_per_epoch: int


SCALAR_LR_SCHEDULES = frozenset({"onecycle"})
"""Schedules documented to set every group's lr from one scalar: they erase an lr split (and raise zero lrs)."""

Factor = Callable[[int], float]
ScheduleBuilder = Callable[..., LRScheduler]
"""(optimizer, horizon, base_lr, last_epoch, **options) -> scheduler"""
SCHEDULES: Registry[ScheduleBuilder] = Registry("schedule")


def factor_schedule(name: str) -> Callable[[Callable[..., Factor]], Callable[..., Factor]]:
    """Register `make_factor(horizon, **options) -> factor(step)` as a LambdaLR schedule named `name`."""

    def register(make_factor: Callable[..., Factor]) -> Callable[..., Factor]:
        def build(optimizer: torch.optim.Optimizer, horizon: Horizon, base_lr: float, last_epoch: int,
                  **options) -> LRScheduler:
            return LambdaLR(optimizer, make_factor(horizon, **options), last_epoch=last_epoch)

        # Advertise make_factor's options, so the registry checks a user's keys against them.
        fixed = list(inspect.signature(build).parameters.values())[:4]
        options = list(inspect.signature(make_factor).parameters.values())[1:]
        build.__signature__ = inspect.signature(build).replace(parameters=[*fixed, *options])
        SCHEDULES.register(name)(build)
        return make_factor

    return register


def check_whole(value: int, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what}={value!r} must be a whole number >= {minimum}")
    return value


def _in_unit_interval(value: float, what: str, upper_open: bool = False) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and 0 <= value and (value < 1 if upper_open else value <= 1)):
        raise ConfigError(f"schedule.{what}={value!r} must be in [0, 1{')' if upper_open else ']'}")
    return float(value)


def _cosine(progress: float, min_factor: float) -> float:
    """From 1 at progress 0 down to `min_factor` at progress 1."""
    return min_factor + (1 - min_factor) * (1 + math.cos(math.pi * min(progress, 1.0))) / 2


@factor_schedule("constant")
def _constant(horizon: Horizon) -> Factor:
    return lambda step: 1.0


@factor_schedule("step")
def _step(horizon: Horizon, step_size: int = 30, gamma: float = 0.1) -> Factor:
    """Multiply by `gamma` every `step_size` epochs."""
    every = check_whole(step_size, "schedule.step_size") * horizon.steps_per_epoch
    gamma = check_fraction(gamma, "schedule.gamma")
    return lambda step: gamma ** (step // every)


@factor_schedule("multistep")
def _multistep(horizon: Horizon, milestones: Sequence[int] = (30, 60), gamma: float = 0.1) -> Factor:
    """Multiply by `gamma` at each milestone epoch."""
    epochs = [check_whole(m, "schedule.milestones") for m in milestones]
    if epochs != sorted(set(epochs)):
        raise ConfigError(f"schedule.milestones={list(milestones)} must be increasing epochs")
    steps = [m * horizon.steps_per_epoch for m in epochs]
    gamma = check_fraction(gamma, "schedule.gamma")
    return lambda step: gamma ** sum(step >= s for s in steps)


@factor_schedule("exponential")
def _exponential(horizon: Horizon, gamma: float = 0.9) -> Factor:
    """Multiply by `gamma` per epoch, spread smoothly over the epoch's steps."""
    gamma = check_fraction(gamma, "schedule.gamma")
    return lambda step: gamma ** (step / horizon.steps_per_epoch)


@factor_schedule("cosine")
def _cosine_annealing(horizon: Horizon, min_factor: float = 0.0) -> Factor:
    """Cosine from each group's lr down to `min_factor` times it at the last step."""
    min_factor = _in_unit_interval(min_factor, "min_factor")
    return lambda step: _cosine(step / horizon.total_steps, min_factor)


@factor_schedule("warmup_cosine")
def _warmup_cosine(horizon: Horizon, warmup_fraction: float = 0.1, min_factor: float = 0.0) -> Factor:
    """Linear warmup over the first `warmup_fraction` of the steps, then cosine down to `min_factor`."""
    warmup = int(_in_unit_interval(warmup_fraction, "warmup_fraction", upper_open=True) * horizon.total_steps)
    min_factor = _in_unit_interval(min_factor, "min_factor")
    decay_steps = horizon.total_steps - warmup

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return _cosine((step - warmup) / decay_steps, min_factor)

    return factor


@SCHEDULES.register("onecycle")
def _onecycle(optimizer: torch.optim.Optimizer, horizon: Horizon, base_lr: float, last_epoch: int,
              pct_start: float = 0.3) -> LRScheduler:
    pct_start = _in_unit_interval(pct_start, "pct_start")
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=base_lr, total_steps=horizon.total_steps,
                                               pct_start=pct_start, last_epoch=last_epoch)


@dataclass(frozen=True)
class Schedule:
    """A configured schedule for one trial; `build` makes its torch scheduler for the optimizer's current groups."""

    name: str
    horizon: Horizon
    base_lr: float  # the optimizer's lr: onecycle's scalar max_lr
    options: dict = field(default_factory=dict)

    def build(self, optimizer: torch.optim.Optimizer, steps_done: int = 0) -> LRScheduler:
        """The scheduler at `steps_done`, covering every group the optimizer holds now.

        Param groups carry part of a scheduler's state (`initial_lr`, onecycle's
        `max_lr`...), and only a fresh scheduler fills it in. So when groups
        have joined mid-trial (unfreezing), a fresh one first fills it in for
        them (the older groups keep their `initial_lr`), then torch's resume
        path (`last_epoch`) sets every group's lr for step `steps_done`.
        """
        scheduler = SCHEDULES.build(self.name, self.options, optimizer, self.horizon, self.base_lr, -1)
        if steps_done:
            scheduler = SCHEDULES.build(self.name, self.options, optimizer, self.horizon, self.base_lr, steps_done - 1)
        return scheduler


def make_schedule(name: str, optimizer: torch.optim.Optimizer, total_steps: int, base_lr: float,
                  steps_per_epoch: int = 1, **options) -> LRScheduler:
    """A fresh scheduler; with the default `steps_per_epoch`, `total_steps` counts epochs."""
    return Schedule(name, Horizon(total_steps, steps_per_epoch), base_lr, options).build(optimizer)
