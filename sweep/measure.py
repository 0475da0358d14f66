"""Measurements every trial records: device time, FLOPs, memory and frozen-weight drift."""

import copy
import statistics
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class StepTimer:
    """Wall time of each training step on the CPU, where host time is device time."""

    def __init__(self) -> None:
        self._times_s: list[float] = []
        self._start = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        self._times_s.append(time.perf_counter() - self._start)

    def step_times_s(self) -> list[float]:
        return list(self._times_s)


class CudaStepTimer(StepTimer):
    """Device time of each step from CUDA events; synchronises only when the times are read."""

    def __init__(self) -> None:
        super().__init__()
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def start(self) -> None:
        begin = torch.cuda.Event(enable_timing=True)
        begin.record()
        self._events.append((begin, torch.cuda.Event(enable_timing=True)))

    def stop(self) -> None:
        self._events[-1][1].record()

    def step_times_s(self) -> list[float]:
        torch.cuda.synchronize()
        return [begin.elapsed_time(end) / 1000 for begin, end in self._events]


def make_timer(device: torch.device) -> StepTimer:
    return CudaStepTimer() if device.type == "cuda" else StepTimer()


@dataclass
class Timing:
    train_time_s: float
    step_time_ms: float
    samples_per_s: float

    @classmethod
    def from_steps(cls, step_times_s: list[float], samples: int) -> "Timing":
        total = sum(step_times_s)
        return cls(total, 1000 * statistics.median(step_times_s), samples / total)


def flops_per_step(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """Exact forward+backward FLOPs of one batch, counted on a copy so the real model is untouched."""
    probe = copy.deepcopy(net)
    with FlopCounterMode(display=False) as counter:
        loss_fn(probe(inputs), targets).backward()
    return counter.get_total_flops()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def held_bytes(net: nn.Module, optimizer: torch.optim.Optimizer, extra: int = 0) -> int:
    """Bytes held by parameters, their gradients, optimizer state and the mechanism's own copies."""
    params = list(net.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return tensor_bytes(params) + tensor_bytes(grads) + tensor_bytes(state) + extra


class DriftProbe:
    """Snapshots what should stay fixed, and later says how far it moved (max abs change)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._live = tensors
        self._saved = {name: t.detach().clone() for name, t in tensors.items()}

    def max_abs_change(self, names: Collection[str] | None = None) -> float:
        """Over `names` only when given: a later phase still freezes a subset of what was snapshotted."""
        changes = [(self._live[n].detach().double() - saved.double()).abs().max().item()
                   for n, saved in self._saved.items() if saved.numel() and (names is None or n in names)]
        return max(changes, default=0.0)
