"""Phases: progressive unfreezing inside one trial.

A trial runs a list of phases, each freezing a subset of what the one before
froze: a linear probe then fine-tuning, or ULMFiT's gradual unfreezing. At a
phase boundary the mechanism unfreezes the difference its own way (a new param
group, an lr raised from 0, a restore that stops...), at the lr split's rates
times the phase's `lr_scale`.

Drift is measured for what each phase freezes, from the start of the trial:
phases only unfreeze, so those parameters have been frozen all along.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from sweep.blocknet import BlockNet
from sweep.errors import ConfigError
from sweep.lr_split import GroupSpec
from sweep.measure import DriftProbe
from sweep.schedules import check_whole
from sweep.selection import FrozenSet, Selection, resolve
from sweep.strategies import Mechanism

GroupsFor = Callable[[FrozenSet], list[GroupSpec]]
"""The lr split's param groups for a frozen set (frozen groups marked)."""


@dataclass(frozen=True)
class Phase:
    """`epochs` of training with `freeze` frozen; what it unfreezes trains at `lr_scale` times its split rate."""

    epochs: int
    freeze: Selection = Selection()
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check_whole(self.epochs, "phase epochs")
        if not (isinstance(self.lr_scale, (int, float)) and math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ConfigError(f"phase lr_scale={self.lr_scale!r} must be a number > 0")


def gradual_unfreezing(depth: int, epochs: int, epochs_per_block: int = 1, lr_scale: float = 1.0) -> tuple[Phase, ...]:
    """ULMFiT's gradual unfreezing: the first `depth` blocks start frozen, the deepest frozen block is
    unfrozen every `epochs_per_block` epochs, and the last phase trains everything for the epochs left."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"gradual unfreezing starts from freeze.depth, which must be a whole number >= 1; "
                          f"got {depth!r}")
    check_whole(epochs_per_block, "gradual unfreezing epochs_per_block")
    left = epochs - depth * epochs_per_block
    if left < 1:
        raise ConfigError(f"gradual unfreezing of {depth} blocks at {epochs_per_block} epoch(s) each needs more than "
                          f"{depth * epochs_per_block} epochs; got epochs={epochs}")
    thawing = [Phase(epochs_per_block, Selection(depth=d), lr_scale) for d in range(depth, 0, -1)]
    return (*thawing, Phase(left, Selection(), lr_scale))


@dataclass
class PhaseResult:
    """One phase: what it froze, what its training step cost, and how far what it froze moved."""

    phase: int  # 1-based, like epochs
    frozen_params: int
    flops_per_step: int
    epochs: int = 0  # trained so far: fewer than planned if the trial stopped early
    frozen_weight_drift: float | None = None  # None: this phase froze nothing
    frozen_buffer_drift: float | None = None  # None: nothing frozen, or no norm statistics among it
    trainable_params: int | None = None
    frozen: str = "not recorded"  # what it froze, in words (`PhasePlan.describe_frozen`); older checkpoints lack it
    lr_scale: float = 1.0

    def describe(self) -> str:
        """What this phase ran, for the records: "2 epochs, frozen conv1, conv2 (4,896 frozen / 50,117 trainable
        params)"."""
        trainable = f" / {self.trainable_params:,} trainable" if self.trainable_params is not None else ""
        counts = f"{self.frozen_params:,} frozen{trainable} params"
        scale = f", lr x{self.lr_scale:g} for what it unfroze" if self.lr_scale != 1 else ""
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return f"{epochs}, frozen {self.frozen} ({counts}){scale}"


def frozen_buffers(net: nn.Module, frozen: FrozenSet) -> dict[str, torch.Tensor]:
    """Floating-point buffers of frozen modules (running statistics); step counters are not weights."""
    return {f"{m}.{b}": buf for m, module in frozen.frozen_modules(net).items()
            for b, buf in module.named_buffers(recurse=False) if buf.is_floating_point()}


class PhasePlan:
    """The phases resolved against one network: what each freezes and when it starts."""

    def __init__(self, net: BlockNet, phases: Sequence[Phase], freezes: bool) -> None:
        self.phases = tuple(phases)
        self.frozen = [resolve(net, p.freeze) if freezes else FrozenSet() for p in self.phases]
        for number, (before, after) in enumerate(zip(self.frozen, self.frozen[1:]), start=2):
            refrozen = after.param_names - before.param_names
            if refrozen:
                raise ConfigError(f"phase {number} freezes {sorted(refrozen)[:3]}..., which phase {number - 1} trains; "
                                  "phases can only unfreeze (each phase freezes a subset of the one before)")
        ends = [sum(p.epochs for p in self.phases[: i + 1]) for i in range(len(self.phases))]
        self.first_epochs = [1, *(end + 1 for end in ends[:-1])]
        self.total_epochs = ends[-1]
        self._net = net

    def check(self, mechanism: Mechanism) -> None:
        """Before any training: every phase's selection is one the mechanism can freeze."""
        for frozen in self.frozen[1:]:
            mechanism.check_can_freeze(frozen)

    def index_of(self, epoch: int) -> int:
        return sum(first <= epoch for first in self.first_epochs) - 1

    def starts_phase(self, epoch: int) -> bool:
        return epoch in self.first_epochs

    def frozen_params(self, index: int) -> int:
        return sum(p.numel() for n, p in self._net.named_parameters() if n in self.frozen[index].param_names)

    def trainable_params(self, index: int) -> int:
        return sum(p.numel() for p in self._net.parameters()) - self.frozen_params(index)

    def describe_frozen(self, index: int) -> str:
        """Whole blocks by name, then any parameters a selection took out of other blocks."""
        frozen = self.frozen[index]
        loose = frozen.loose_params(self._net)
        return ", ".join([*frozen.blocks, *([f"{len(loose)} more parameter tensors"] if loose else [])]) or "nothing"

    def thawed_params(self, index: int) -> list[nn.Parameter]:
        """What phase `index` unfreezes: frozen in the phase before, not in this one."""
        thawed = self.frozen[index - 1].param_names - self.frozen[index].param_names
        return [p for n, p in self._net.named_parameters() if n in thawed]

    def unfreeze(self, index: int, mechanism: Mechanism, optimizer: torch.optim.Optimizer,
                 groups_for: GroupsFor) -> None:
        """Enter phase `index`: the mechanism unfreezes what the phase before froze and this one does not."""
        still_frozen = self.frozen[index]
        thawed = {id(p) for p in self.thawed_params(index)}
        scale = self.phases[index].lr_scale
        groups = [replace(g, params=[p for p in g.params if id(p) in thawed], lr=g.lr * scale)
                  for g in groups_for(still_frozen) if not g.frozen]
        mechanism.unfreeze(still_frozen, [g for g in groups if g.params], optimizer)


class PhaseDrift:
    """Snapshots all the first phase freezes, then says how far what phase `index` freezes has moved since."""

    def __init__(self, net: nn.Module, plan: PhasePlan) -> None:
        first = plan.frozen[0]
        self._weights = DriftProbe({n: p for n, p in net.named_parameters() if n in first.param_names})
        self._buffers = DriftProbe(frozen_buffers(net, first))
        self._frozen = [(f.param_names, set(frozen_buffers(net, f))) for f in plan.frozen]

    def of(self, index: int) -> tuple[float | None, float | None]:
        """(weight drift, buffer drift) of phase `index`; None where it freezes nothing."""
        params, buffers = self._frozen[index]
        if not params:
            return None, None
        return self._weights.max_abs_change(params), self._buffers.max_abs_change(buffers) if buffers else None
