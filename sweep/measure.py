"""Measurements every trial records: device time, FLOPs, memory and frozen-weight drift."""

import copy
import ctypes
import functools
import statistics
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

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
    def from_steps(cls, step_times_s: list[float], samples: int, extra_s: float = 0.0) -> "Timing":
        """`extra_s`: device time spent outside the steps that training needed (building a feature cache)."""
        total = sum(step_times_s) + extra_s
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
    """Bytes held by parameters, their gradients, optimizer state and the mechanism's own copies: exact, the same on
    every device, and blind to activations (see `PeakMemory` for what training really peaks at)."""
    params = list(net.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return tensor_bytes(params) + tensor_bytes(grads) + tensor_bytes(state) + extra


class PeakMemory:
    """The highest memory use during the spans it measures (a trial's training passes), as metrics by name.

    This base measures nothing: where neither the kernel nor the device keeps a peak, none is recorded.
    """

    def __init__(self) -> None:
        self._peak: int | None = None

    def start(self) -> None:
        """A span begins."""

    def stop(self) -> None:
        """The span ends: its peak counts."""

    def readings(self) -> dict[str, int]:
        return {}

    def _note(self, peak: int) -> None:
        self._peak = max(peak, self._peak or 0)


class ProcessPeakRss(PeakMemory):
    """The process's peak resident memory (Linux's VmHWM): activations, data, the interpreter and libraries, all of it.

    Linux tracks the high-water mark exactly and lets a process reset it to its current
    resident set (`/proc/self/clear_refs`), so a span sees only its own peak, not the
    process's lifetime one. Memory earlier trials freed is handed back first, and the
    resident set then is the trial's start: `peak_rss_growth_bytes` is what the trial
    added at its peak (its model, optimizer state, batches and activations), the figure
    to compare between trials of one process; `peak_rss_bytes` is what the machine needed.
    """

    CLEAR_REFS = Path("/proc/self/clear_refs")
    STATUS = Path("/proc/self/status")

    def __init__(self) -> None:
        super().__init__()
        release_freed_memory()
        self.start_bytes = self._status("VmRSS")

    @classmethod
    def available(cls) -> bool:
        try:
            cls.CLEAR_REFS.write_text("5")
        except OSError:  # not Linux, or a sandbox that does not offer it
            return False
        return True

    def start(self) -> None:
        self.CLEAR_REFS.write_text("5")

    def stop(self) -> None:
        self._note(self._status("VmHWM"))

    def readings(self) -> dict[str, int]:
        if self._peak is None:
            return {}
        return {"peak_rss_bytes": self._peak, "peak_rss_growth_bytes": self._peak - self.start_bytes}

    def _status(self, field: str) -> int:
        for line in self.STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024  # reported in kB
        raise RuntimeError(f"no {field} in {self.STATUS}")


class CudaPeakAllocated(PeakMemory):
    """The most memory tensors held at once on the CUDA device (`torch.cuda.max_memory_allocated`)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def start(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> None:
        self._note(torch.cuda.max_memory_allocated(self.device))

    def readings(self) -> dict[str, int]:
        return {} if self._peak is None else {"peak_cuda_allocated_bytes": self._peak}


@functools.cache
def _c_library() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def release_freed_memory() -> None:
    """Ask glibc's allocator to return what it keeps after frees (other C libraries: nothing to ask).

    A trial's tensors sit in no reference cycle, so they are freed when it ends; a full
    `gc.collect()` would cost a second or more in a process that has loaded torch and MLflow.
    """
    trim = getattr(_c_library(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def make_peak_memory(device: torch.device) -> PeakMemory:
    if device.type == "cuda":
        return CudaPeakAllocated(device)
    if device.type == "cpu" and ProcessPeakRss.available():
        return ProcessPeakRss()
    return PeakMemory()


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
