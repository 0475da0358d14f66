"""The training loop: one optimizer step at a time, the way a hand-written loop does it."""

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from sweep.errors import TrialDiverged
from sweep.measure import PeakMemory, StepTimer
from sweep.strategies import Mechanism
from sweep.trace import Tracer

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    val_accuracy: float
    # sweep.trace's metrics of this epoch: diagnostics that differ between equivalent mechanisms by design (frozen
    # gradient norms...), so two epochs are equal when their outcomes are
    trace: dict[str, float] = field(default_factory=dict, compare=False)


EpochCallback = Callable[[EpochMetrics], bool | None]
"""Called after every epoch; returning True stops training (Optuna pruning, early stopping)."""
DIVERGED_FACTOR = 10.0
"""An epoch's mean training loss this many times the untrained model's means the run diverged, finite or not
(`optimizer.lr=1e6` under full_finetune keeps a finite loss near 1e6 and ends at chance accuracy)."""


class Trainer:
    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, mechanism: Mechanism,
                 timer: StepTimer, device: torch.device, scheduler: LRScheduler | None = None,
                 grad_clip_norm: float | None = None, eval_mode_modules: Sequence[nn.Module] = (),
                 memory: PeakMemory | None = None, tracer: Tracer | None = None) -> None:
        self.net = net
        self.optimizer = optimizer
        self.mechanism = mechanism
        self.timer = timer
        self.device = device
        self.scheduler = scheduler
        self.grad_clip_norm = grad_clip_norm
        self.eval_mode_modules = eval_mode_modules
        self.memory = memory or PeakMemory()  # measures the training passes only, not validation
        self.tracer = tracer
        self.starting_loss = math.inf  # set by `measure_starting_loss`; until then nothing counts as diverged

    @torch.no_grad()
    def measure_starting_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """The untrained model's loss on a batch (eval mode: no BatchNorm statistics move, no RNG is drawn)."""
        self.net.eval()
        self.starting_loss = F.cross_entropy(self.net(inputs), targets).item()

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.timer.start()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.net(inputs), targets)
        loss.backward()
        if self.tracer is not None:
            self.tracer.gradients()
        total_norm = None
        if self.grad_clip_norm:
            # Over every parameter, as users write it: frozen gradients count too where they exist.
            total_norm = nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip_norm)
        if self.tracer is not None:
            self.tracer.update(total_norm)
        self.optimizer.step()
        self.mechanism.after_step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.timer.stop()
        return loss.detach()

    def train_epoch(self, batches: Iterable[Batch]) -> float:
        self.net.train()
        for module in self.eval_mode_modules:  # norm policy `eval`: frozen norm layers keep their statistics
            module.eval()
        if self.tracer is not None:
            self.tracer.start_epoch()
        loss_sum = torch.zeros((), device=self.device)
        samples = 0
        self.memory.start()
        for inputs, targets in batches:
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            loss_sum += self.step(inputs, targets) * len(targets)
            samples += len(targets)
        self.memory.stop()
        mean_loss = loss_sum.item() / samples
        if not math.isfinite(mean_loss):
            raise TrialDiverged(f"training loss became {mean_loss}; the learning rate is probably too high")
        if mean_loss > DIVERGED_FACTOR * self.starting_loss:
            raise TrialDiverged(f"training loss rose from {self.starting_loss:.3g} to {mean_loss:.3g} (over "
                                f"{DIVERGED_FACTOR:g}x); the learning rate is probably too high")
        return mean_loss

    @torch.no_grad()
    def accuracy(self, batches: Iterable[Batch]) -> float:
        self.net.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        total = 0
        for inputs, targets in batches:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            correct += (self.net(inputs).argmax(dim=1) == targets).sum()
            total += len(targets)
        return correct.item() / total

    def fit(self, train_batches: Iterable[Batch], val_batches: Iterable[Batch], epochs: Iterable[int],
            on_epoch: EpochCallback | None = None,
            on_epoch_start: Callable[[int], None] | None = None) -> list[EpochMetrics]:
        """Train and validate each epoch of `epochs` (numbered from 1; a resumed trial starts mid-way)."""
        history = []
        for epoch in epochs:
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            train_loss = self.train_epoch(train_batches)
            trace = self.tracer.end_epoch() if self.tracer is not None else {}
            metrics = EpochMetrics(epoch, train_loss, self.accuracy(val_batches), trace)
            history.append(metrics)
            if on_epoch is not None and on_epoch(metrics):
                break
        return history
