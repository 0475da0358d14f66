"""The freezing mechanisms, each written the way a user would write it.

Each one is faithful on purpose: `exclude_from_optimizer` really lets frozen
gradients pile up, `zero_lr` really trusts the optimizer with lr 0, and
`weight_restore` really pays for a copy after every step. The measurements
then show their true cost and pitfalls instead of an idealised version.
"""

from abc import ABC
from typing import ClassVar

import torch

from sweep.blocknet import BlockNet
from sweep.errors import ConfigError
from sweep.lr_split import GroupSpec
from sweep.registry import Registry
from sweep.selection import FrozenSet


class Mechanism(ABC):
    """How the selected parameters are kept fixed during training."""

    name: ClassVar[str]
    freezes: ClassVar[bool] = True

    def __init__(self, net: BlockNet, frozen: FrozenSet) -> None:
        if self.freezes and not frozen:
            raise ConfigError(f"strategy {self.name!r} needs something to freeze but the selection freezes nothing; "
                              f"set freeze.depth, freeze.names, freeze.indices or freeze.regex "
                              f"(blocks: {', '.join(net.block_names)})")
        self.net = net
        self.frozen = frozen
        self._frozen_params = [p for n, p in net.named_parameters() if n in frozen.param_names]

    def optimizer_groups(self, groups: list[GroupSpec]) -> list[dict]:
        """The groups handed to the optimizer; by default frozen parameters are left out."""
        return [g.as_torch() for g in groups if not g.frozen]

    def after_step(self) -> None:
        """Called right after every `optimizer.step()`."""

    def held_bytes(self) -> int:
        """Bytes of tensors the mechanism itself keeps alive."""
        return 0


MECHANISMS: Registry[type[Mechanism]] = Registry("strategy")


def register(cls: type[Mechanism]) -> type[Mechanism]:
    return MECHANISMS.register(cls.name)(cls)


@register
class RequiresGrad(Mechanism):
    """`p.requires_grad_(False)`; autograd skips the frozen part of the backward pass."""

    name = "requires_grad"

    def __init__(self, net, frozen):
        super().__init__(net, frozen)
        for param in self._frozen_params:
            param.requires_grad_(False)


@register
class ExcludeFromOptimizer(Mechanism):
    """Frozen parameters are simply not given to the optimizer.

    Their gradients are still computed and, since `optimizer.zero_grad()`
    never sees them, accumulate step after step.
    """

    name = "exclude_from_optimizer"


@register
class ZeroLr(Mechanism):
    """Every parameter is in the optimizer; frozen ones sit in groups with lr 0."""

    name = "zero_lr"

    def optimizer_groups(self, groups):
        return [g.as_torch(lr=0.0 if g.frozen else None) for g in groups]


@register
class WeightRestore(Mechanism):
    """Everything trains at its normal lr; frozen weights are copied back after every step."""

    name = "weight_restore"

    def __init__(self, net, frozen):
        super().__init__(net, frozen)
        self._saved = [p.detach().clone() for p in self._frozen_params]

    def optimizer_groups(self, groups):
        return [g.as_torch() for g in groups]

    @torch.no_grad()
    def after_step(self):
        for param, saved in zip(self._frozen_params, self._saved):
            param.copy_(saved)

    def held_bytes(self):
        return sum(t.numel() * t.element_size() for t in self._saved)


@register
class NoGradForward(Mechanism):
    """The frozen prefix runs under `torch.no_grad()`; valid only for a prefix of the forward order."""

    name = "no_grad_forward"

    def __init__(self, net, frozen):
        super().__init__(net, frozen)
        prefix = frozen.prefix_length(net)
        if prefix is None:
            raise ConfigError(f"strategy 'no_grad_forward' needs the frozen blocks to be a prefix of the forward order "
                              f"{net.block_names}, got {frozen.blocks + frozen.loose_params(net)}; "
                              "use freeze.depth=K, or another strategy")
        net.no_grad_prefix = prefix


@register
class FullFinetune(Mechanism):
    """Baseline: nothing is frozen."""

    name = "full_finetune"
    freezes = False
