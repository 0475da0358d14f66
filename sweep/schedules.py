"""Learning-rate schedules, stepped once per optimizer step.

Schedules scale each group's own lr, so an lr split keeps its ratios. The
exception is `onecycle`, built as users usually write it (one scalar
`max_lr`): it rewrites every group's lr, zero-lr groups included, and that
shows up as drift rather than being quietly patched.
"""

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LRScheduler

from sweep.errors import ConfigError
from sweep.registry import Registry

ScheduleBuilder = Callable[..., LRScheduler]
SCHEDULES: Registry[ScheduleBuilder] = Registry("schedule")


@SCHEDULES.register("constant")
def _constant(optimizer: torch.optim.Optimizer, total_steps: int, base_lr: float) -> LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@SCHEDULES.register("onecycle")
def _onecycle(optimizer: torch.optim.Optimizer, total_steps: int, base_lr: float,
              pct_start: float = 0.3) -> LRScheduler:
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=base_lr, total_steps=total_steps, pct_start=pct_start)


def make_schedule(name: str, optimizer: torch.optim.Optimizer, total_steps: int, base_lr: float,
                  **options) -> LRScheduler:
    builder = SCHEDULES.get(name)
    try:
        return builder(optimizer, total_steps, base_lr, **options)
    except TypeError as err:
        raise ConfigError(f"schedule {name!r}: {err}") from None
