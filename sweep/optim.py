"""Optimizers by name: SGD (momentum, nesterov), Adam, AdamW."""

from dataclasses import dataclass

import torch

from sweep.errors import ConfigError
from sweep.lr_split import check_lr
from sweep.registry import Registry


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_bias_norm: bool = False

    def __post_init__(self):
        OPTIMIZERS.get(self.name)
        check_lr(self.lr)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optimizer.momentum={self.momentum} must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")


OPTIMIZERS = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)


@OPTIMIZERS.register("adam")
def _adam(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas)


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=spec.lr, betas=spec.betas)


def make_optimizer(groups: list[dict], spec: OptimizerSpec) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(spec.name)(groups, spec)
