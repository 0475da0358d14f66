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
from sweep.cached_prefix import PrefixCacheFeed
from sweep.errors import ConfigError
from sweep.feeds import Feed, FeedContext, SampleFeed
from sweep.lr_split import GroupSpec
from sweep.registry import Registry
from sweep.selection import FrozenSet


class Mechanism(ABC):
    """How the selected parameters are kept fixed during training."""

    name: ClassVar[str]
    freezes: ClassVar[bool] = True
    restores_frozen: ClassVar[bool] = False
    """The optimizer may move frozen parameters: the mechanism itself puts them back after every step."""
    accumulates_frozen_grads: ClassVar[bool] = False
    """Frozen parameters get gradients that nothing zeroes, so they pile up step after step."""

    def __init__(self, net: BlockNet, frozen: FrozenSet) -> None:
        if self.freezes and not frozen:
            raise ConfigError(f"strategy {self.name!r} needs something to freeze but the selection freezes nothing; "
                              f"set freeze.depth, freeze.names, freeze.indices or freeze.regex "
                              f"(blocks: {', '.join(net.block_names)})")
        self.net = net
        self._set_frozen(frozen)

    def _set_frozen(self, frozen: FrozenSet) -> None:
        self.frozen = frozen
        self._frozen_params = {n: p for n, p in self.net.named_parameters() if n in frozen.param_names}

    def optimizer_groups(self, groups: list[GroupSpec]) -> list[dict]:
        """The groups handed to the optimizer; by default frozen parameters are left out."""
        return [g.as_torch() for g in groups if not g.frozen]

    def check_can_freeze(self, frozen: FrozenSet) -> None:
        """Raise `ConfigError` if this mechanism cannot freeze `frozen` (a later phase's selection)."""

    def feed(self, context: FeedContext) -> Feed:
        """What the network is fed; raises `ConfigError` if the mechanism cannot feed this trial exactly."""
        return SampleFeed(context.task)

    def unfreeze(self, still_frozen: FrozenSet, groups: list[GroupSpec], optimizer: torch.optim.Optimizer) -> None:
        """From now on train what is frozen now but not in `still_frozen`: `groups`, at their configured rates.

        By default they join the running optimizer as new param groups, as users write it.
        """
        for group in groups:
            optimizer.add_param_group(group.as_torch())
        self._set_frozen(still_frozen)

    def _unfreeze_in_place(self, still_frozen: FrozenSet, groups: list[GroupSpec],
                           optimizer: torch.optim.Optimizer) -> None:
        """For params already in the optimizer: their groups take the configured lr of `groups`.

        `initial_lr` moves too, since that is the lr a scheduler scales. An
        optimizer group has one lr, so it can only be unfrozen whole.
        """
        rate_of = {id(p): spec.lr for spec in groups for p in spec.params}
        for group in optimizer.param_groups:
            rates = {rate_of.get(id(p)) for p in group["params"]}
            if rates == {None}:
                continue
            if len(rates) > 1:
                raise ConfigError(f"strategy {self.name!r} unfreezes by changing the lr of whole param groups, but a "
                                  f"phase unfreezes only part of group {group.get('name')!r}; unfreeze whole blocks "
                                  "(freeze.depth, freeze.names or freeze.indices)")
            group["lr"] = group["initial_lr"] = group["split_lr"] = rates.pop()
            group["frozen"] = False
        self._set_frozen(still_frozen)

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
        for param in self._frozen_params.values():
            param.requires_grad_(False)

    def unfreeze(self, still_frozen, groups, optimizer):
        """`requires_grad` back on, then the params join the optimizer."""
        for group in groups:
            for param in group.params:
                param.requires_grad_(True)
        super().unfreeze(still_frozen, groups, optimizer)


@register
class ExcludeFromOptimizer(Mechanism):
    """Frozen parameters are simply not given to the optimizer.

    Their gradients are still computed and, since `optimizer.zero_grad()`
    never sees them, accumulate step after step.
    """

    name = "exclude_from_optimizer"
    accumulates_frozen_grads = True


@register
class ZeroLr(Mechanism):
    """Every parameter is in the optimizer; frozen ones sit in groups with lr 0."""

    name = "zero_lr"

    def optimizer_groups(self, groups):
        return [g.as_torch(lr=0.0 if g.frozen else None) for g in groups]

    def unfreeze(self, still_frozen, groups, optimizer):
        """The params already sit in the optimizer: unfreezing gives their zero-lr groups the configured lr."""
        self._unfreeze_in_place(still_frozen, groups, optimizer)


@register
class WeightRestore(Mechanism):
    """Everything trains at its normal lr; frozen weights are copied back after every step."""

    name = "weight_restore"
    restores_frozen = True

    def __init__(self, net, frozen):
        super().__init__(net, frozen)
        self._saved = {n: p.detach().clone() for n, p in self._frozen_params.items()}

    def optimizer_groups(self, groups):
        return [g.as_torch() for g in groups]

    @torch.no_grad()
    def after_step(self):
        for name, param in self._frozen_params.items():
            param.copy_(self._saved[name])

    def held_bytes(self):
        return sum(t.numel() * t.element_size() for t in self._saved.values())

    def unfreeze(self, still_frozen, groups, optimizer):
        """The params already train in the optimizer: stop restoring them, and give their groups the configured lr."""
        self._unfreeze_in_place(still_frozen, groups, optimizer)
        self._saved = {n: self._saved[n] for n in self._frozen_params}


@register
class NoGradForward(Mechanism):
    """The frozen prefix runs under `torch.no_grad()`; valid only for a prefix of the forward order."""

    name = "no_grad_forward"

    def __init__(self, net, frozen):
        super().__init__(net, frozen)
        net.no_grad_prefix = self._prefix(frozen)

    def _prefix(self, frozen: FrozenSet) -> int:
        prefix = frozen.prefix_length(self.net)
        if prefix is None:
            raise ConfigError(f"strategy {self.name!r} needs the frozen blocks to be a prefix of the forward order "
                              f"{self.net.block_names}, got {frozen.blocks + frozen.loose_params(self.net)}; "
                              "use freeze.depth=K, or another strategy")
        return prefix

    def check_can_freeze(self, frozen):
        self._prefix(frozen)

    def unfreeze(self, still_frozen, groups, optimizer):
        """The no-grad prefix shrinks to what stays frozen; the rest joins the optimizer."""
        self.net.no_grad_prefix = self._prefix(still_frozen)
        super().unfreeze(still_frozen, groups, optimizer)


@register
class CachedPrefix(NoGradForward):
    """`no_grad_forward`, except that the blocks frozen in every phase do not run in training at all: their
    outputs for every sample are computed once and fed to the rest (`sweep/cached_prefix.py`)."""

    name = "cached_prefix"

    def feed(self, context):
        return PrefixCacheFeed(self.net, self._prefix(context.always_frozen), context)


@register
class FullFinetune(Mechanism):
    """Baseline: nothing is frozen."""

    name = "full_finetune"
    freezes = False
