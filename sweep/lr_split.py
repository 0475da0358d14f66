"""Learning-rate splits: which lr and weight decay each unit (block or head) trains with.

A split only assigns rates; `param_groups` turns them into optimizer groups,
marking the groups of frozen parameters so each mechanism can decide what to
do with them (drop them, give them lr 0, or train-and-restore them).
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from sweep.blocknet import BlockNet
from sweep.errors import ConfigError
from sweep.registry import Registry
from sweep.selection import FrozenSet


@dataclass(frozen=True)
class Rate:
    lr: float
    weight_decay: float


def check_lr(lr: float, what: str = "optimizer.lr") -> float:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{what}={lr!r} is not a valid learning rate; it must be a number > 0")
    return float(lr)


def check_fraction(value: float, what: str) -> float:
    if not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise ConfigError(f"{what}={value!r} is out of range; it must be in (0, 1]")
    return float(value)


class LrSplit(ABC):
    @abstractmethod
    def rates(self, units: list[str], lr: float, weight_decay: float) -> dict[str, Rate]:
        """Rate of every unit, head last in `units`."""


LR_SPLITS: Registry[type[LrSplit]] = Registry("lr split")


@LR_SPLITS.register("uniform")
@dataclass
class Uniform(LrSplit):
    def rates(self, units, lr, weight_decay):
        return {unit: Rate(lr, weight_decay) for unit in units}


@LR_SPLITS.register("head_backbone")
@dataclass
class HeadBackbone(LrSplit):
    """Head at `lr`, backbone at `lr * backbone_ratio`."""

    backbone_ratio: float = 0.1

    def __post_init__(self):
        check_fraction(self.backbone_ratio, "lr_split.backbone_ratio")

    def rates(self, units, lr, weight_decay):
        head = units[-1]
        return {u: Rate(lr if u == head else lr * self.backbone_ratio, weight_decay) for u in units}


@LR_SPLITS.register("layerwise")
@dataclass
class Layerwise(LrSplit):
    """Unit i of n gets `lr * decay ** (n - 1 - i)` (ULMFiT's discriminative rates, timm's layer decay)."""

    decay: float = 1 / 2.6

    def __post_init__(self):
        check_fraction(self.decay, "lr_split.decay")

    def rates(self, units, lr, weight_decay):
        n = len(units)
        return {u: Rate(lr * self.decay ** (n - 1 - i), weight_decay) for i, u in enumerate(units)}


@LR_SPLITS.register("groups")
@dataclass
class Groups(LrSplit):
    """Explicit per-unit lr and weight decay; units not named train at the optimizer's defaults."""

    groups: Mapping[str, Mapping[str, float]] | None = None  # None: no unit named

    def rates(self, units, lr, weight_decay):
        groups = self.groups or {}
        unknown = set(groups) - set(units)
        if unknown:
            raise ConfigError(f"lr_split.groups names unknown units {sorted(unknown)}; choose among: {', '.join(units)}")
        rates = {}
        for unit in units:
            given = dict(groups.get(unit, {}))
            bad_keys = set(given) - {"lr", "weight_decay"}
            if bad_keys:
                raise ConfigError(f"lr_split.groups.{unit} has unknown keys {sorted(bad_keys)}; use lr and weight_decay")
            unit_wd = given.get("weight_decay", weight_decay)
            if unit_wd < 0:
                raise ConfigError(f"lr_split.groups.{unit}.weight_decay={unit_wd} must be >= 0")
            rates[unit] = Rate(check_lr(given.get("lr", lr), f"lr_split.groups.{unit}.lr"), float(unit_wd))
        return rates


def make_lr_split(name: str, **options) -> LrSplit:
    return LR_SPLITS.build(name, options)


def is_no_decay(module: nn.Module, param_name: str, param: nn.Parameter) -> bool:
    """Biases and norm-layer parameters: the usual exemptions from weight decay."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return param.ndim <= 1 or param_name.endswith("bias") or isinstance(module, norm_types)


@dataclass
class GroupSpec:
    """One optimizer param group before a mechanism decides what frozen groups become."""

    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float
    frozen: bool

    def as_torch(self, lr: float | None = None) -> dict:
        """The torch param group; `split_lr` keeps the split's rate even where a mechanism sets `lr` to 0, so
        the trace can tell whether the lrs the optimizer uses still follow the split."""
        return {"params": self.params, "lr": self.lr if lr is None else lr, "split_lr": self.lr,
                "weight_decay": self.weight_decay, "name": self.name, "frozen": self.frozen}


def param_groups(net: BlockNet, frozen: FrozenSet, split: LrSplit, lr: float, weight_decay: float,
                 no_decay_bias_norm: bool = False) -> list[GroupSpec]:
    """Groups per (unit, frozen or not, decayed or not), in forward order; empty groups dropped."""
    check_lr(lr)
    if weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    rates = split.rates(net.unit_names(), lr, weight_decay)
    owner = {f"{m}.{p}" if m else p: mod for m, mod in net.named_modules() for p, _ in mod.named_parameters(recurse=False)}
    groups: dict[tuple[str, bool, bool], GroupSpec] = {}
    for unit, name, param in net.named_unit_parameters():
        is_frozen = name in frozen.param_names
        exempt = no_decay_bias_norm and is_no_decay(owner[name], name, param)
        key = (unit, is_frozen, exempt)
        if key not in groups:
            label = unit + ("/frozen" if is_frozen else "") + ("/no_decay" if exempt else "")
            rate = rates[unit]
            groups[key] = GroupSpec(label, [], rate.lr, 0.0 if exempt else rate.weight_decay, is_frozen)
        groups[key].params.append(param)
    return list(groups.values())
