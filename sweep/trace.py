"""Per-epoch traces of what the optimizer really did, so a difference or a drift can be explained from the records.

A `Tracer` rides along with the training loop. Every step it only reads each
param group's lr and keeps clipping's total norm (no device sync); once per
epoch it samples gradient norms (at the epoch's first step, before clipping)
and summarises the epoch: the lr of every block's groups, the clip factor, and
an invariant check of the optimizer against the mechanism: the parameters the
optimizer could move (sitting in a group whose lr was above 0 at some step;
weight decay, too, moves nothing at lr 0 in torch's optimizers) must be exactly
the trainable ones, but for frozen ones a mechanism puts back itself.

The names below are MLflow metric names, logged with step = epoch: the
contract the report reads.
"""

import math
from collections.abc import Iterable

import torch
from torch import nn

from sweep.strategies import Mechanism

LR_PREFIX = "lr/"  # lr/<block>: the largest lr of the block's groups at the epoch's last step
GRAD_NORM_TRAINABLE = "grad_norm/trainable"  # L2 norm of trainable gradients at the epoch's first step, pre-clip
GRAD_NORM_FROZEN = "grad_norm/frozen"  # the same for frozen parameters' gradients, where they exist
CLIP_FACTOR = "clip_factor"  # mean over the epoch's steps of min(1, max_norm / total norm); 1 = never clipped
FROZEN_LR = "frozen_lr_max"  # the largest lr any group of frozen (not restored) parameters had in the epoch
MOVABLE_FROZEN = "invariant/movable_frozen_params"  # frozen parameters (elements) the optimizer could move
UNMOVABLE_TRAINABLE = "invariant/unmovable_trainable_params"  # trainable parameters it could not move
SPLIT_DEVIATION = "lr_split_deviation"  # how far the trainable groups' lrs departed from the split's ratios
UNFROZEN_MOMENTUM = "unfrozen_momentum_norm"  # momentum carried by the parameters unfrozen at this epoch
TRACES = (GRAD_NORM_TRAINABLE, GRAD_NORM_FROZEN, CLIP_FACTOR, FROZEN_LR, MOVABLE_FROZEN, UNMOVABLE_TRAINABLE,
          SPLIT_DEVIATION, UNFROZEN_MOMENTUM)
SPLIT_TOLERANCE = 0.01  # a split "holds" while every ratio is within 1% of the configured one
MOMENTUM_STATE = ("momentum_buffer", "exp_avg")  # SGD's momentum, Adam's first moment
CLIP_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_


def is_trace(metric: str) -> bool:
    return metric.startswith(LR_PREFIX) or metric in TRACES


def unit_of(group: dict) -> str:
    """The block (or head) a param group belongs to: the first part of its name (`conv1/frozen/no_decay`)."""
    return str(group.get("name", "?")).split("/")[0]


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach()) for t in tensors]))


def momentum_norm(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> float:
    """L2 norm of the optimizer's momentum for `params` (0.0 where it keeps none)."""
    held = [optimizer.state[p][key] for p in params if p in optimizer.state for key in MOMENTUM_STATE
            if torch.is_tensor(optimizer.state[p].get(key))]
    return _norm(held).item() if held else 0.0


def split_deviation(factors: list[float]) -> float:
    """Spread of the lr / configured-lr factors of the trainable groups: 0 when every ratio of the split holds."""
    moving = [f for f in factors if f > 0]
    return max(moving) / min(moving) - 1 if moving else 0.0


class Tracer:
    """Cheap per-step observation of one trainer, summarised per epoch (see the module docstring)."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, mechanism: Mechanism,
                 grad_clip_norm: float | None) -> None:
        self.net = net
        self.optimizer = optimizer
        self.mechanism = mechanism
        self.grad_clip_norm = grad_clip_norm
        self._seen_frozen: object = None  # the mechanism's frozen set that `_trainable`/`_frozen` were made for
        self._trainable: list[nn.Parameter] = []
        self._frozen: list[nn.Parameter] = []
        self.start_epoch()

    def _split(self) -> None:
        """Trainable and frozen parameters as the mechanism says now (it changes at phase boundaries)."""
        frozen_set = self.mechanism.frozen
        if frozen_set is self._seen_frozen:
            return
        named = list(self.net.named_parameters())
        self._frozen = [p for n, p in named if n in frozen_set.param_names]
        self._trainable = [p for n, p in named if n not in frozen_set.param_names]
        self._seen_frozen = frozen_set

    def start_epoch(self) -> None:
        self._sample = True
        self._grad_norms: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._clip_norms: list[torch.Tensor] = []
        self._max_lrs: list[float] = []
        self._last_lrs: list[float] = []

    def gradients(self) -> None:
        """After backward, before clipping: sample the gradient norms once per epoch."""
        if not self._sample:
            return
        self._sample = False
        self._split()
        trainable = [p.grad for p in self._trainable if p.grad is not None]
        frozen = [p.grad for p in self._frozen if p.grad is not None]
        self._grad_norms = (_norm(trainable) if trainable else None, _norm(frozen) if frozen else None)

    def update(self, clip_total_norm: torch.Tensor | None) -> None:
        """Right before `optimizer.step()`: the lrs it is about to use, and clipping's total norm."""
        if clip_total_norm is not None:
            self._clip_norms.append(clip_total_norm)
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._max_lrs = list(map(max, self._max_lrs, lrs)) if len(lrs) == len(self._max_lrs) else lrs
        self._last_lrs = lrs

    def end_epoch(self) -> dict[str, float]:
        """The epoch's traces, by metric name."""
        self._split()
        trace: dict[str, float] = {}
        groups = self.optimizer.param_groups
        if len(self._last_lrs) == len(groups):
            for group, lr in zip(groups, self._last_lrs):
                key = LR_PREFIX + unit_of(group)
                trace[key] = max(trace.get(key, lr), lr)
            trace |= self._invariant(groups)
        for key, norm in zip((GRAD_NORM_TRAINABLE, GRAD_NORM_FROZEN), self._grad_norms):
            if norm is not None:
                trace[key] = norm.item()
        if self._clip_norms:
            factors = torch.clamp(self.grad_clip_norm / (torch.stack(self._clip_norms) + CLIP_EPS), max=1.0)
            trace[CLIP_FACTOR] = factors.mean().item()
        return {k: v for k, v in trace.items() if math.isfinite(v)}

    def _invariant(self, groups: list[dict]) -> dict[str, float]:
        """What the optimizer could move this epoch against what the mechanism says is trainable."""
        frozen_ids = {id(p) for p in self._frozen}
        movable: set[int] = set()
        frozen_lrs, factors = [], []
        for group, max_lr in zip(groups, self._max_lrs):
            ids = {id(p) for p in group["params"]}
            if max_lr > 0:
                movable |= ids
            if ids & frozen_ids:
                frozen_lrs.append(max_lr)
            elif group.get("split_lr"):
                factors.append(max_lr / group["split_lr"])
        allowed = frozen_ids if self.mechanism.restores_frozen else set()
        trace = {
            MOVABLE_FROZEN: float(sum(p.numel() for p in self._frozen if id(p) in movable - allowed)),
            UNMOVABLE_TRAINABLE: float(sum(p.numel() for p in self._trainable if id(p) not in movable)),
            SPLIT_DEVIATION: split_deviation(factors),
        }
        if frozen_lrs and not self.mechanism.restores_frozen:
            trace[FROZEN_LR] = max(frozen_lrs)
        return trace


def invariant_holds(trace: dict[str, float]) -> bool:
    return not trace.get(MOVABLE_FROZEN) and not trace.get(UNMOVABLE_TRAINABLE)
