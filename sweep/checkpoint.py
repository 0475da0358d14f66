"""Resumable trials: one checkpoint per trial, rewritten atomically at the end of an epoch, every so often.

Writing one costs as much as a short epoch (the model, optimizer state and an
fsync), so a trial writes it once `every_s` seconds have passed since the last
one (and at the end of every phase, decided in `sweep.trial`), not after every
epoch: a killed trial repeats the epochs since, identically. It is put in place
once the records of those epochs are stored.

It holds everything the rest of the trial depends on: the model with its
buffers, the optimizer and scheduler, the gradients left on parameters
(`exclude_from_optimizer`'s pile-up feeds gradient clipping), every RNG
(torch, CUDA, Python, the data loader's shuffling generator), the phase and the
progress so far. A resumed trial first rebuilds the param groups of the saved
phase (by the same unfreezing a live trial goes through), checks them and the
`requires_grad` map against the saved ones, and only then loads the states, so
it ends bitwise identical to an uninterrupted run.

A finished trial deletes its checkpoint: the result then lives in the trackers,
and a sweep of many trials does not keep a model copy per trial on disk.
"""

import itertools
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sweep.blocknet import BlockNet
from sweep.errors import ConfigError, one_line, warn
from sweep.faults import crash_point
from sweep.paths import remove_empty_dirs
from sweep.phases import PhaseResult
from sweep.train import EpochMetrics, Trainer

FILE_NAME = "checkpoint.pt"


@dataclass
class Progress:
    """What a trial has done so far, carried from one process to the next."""

    history: list[EpochMetrics] = field(default_factory=list)
    phases: list[PhaseResult] = field(default_factory=list)  # started so far; the last one may be running
    earlier_step_times_s: list[float] = field(default_factory=list)  # timed steps of earlier processes
    earlier_wall_time_s: float = 0.0
    earlier_peak_memory: dict[str, int] = field(default_factory=dict)  # earlier processes' `PeakMemory` readings

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "Progress":
        return cls([EpochMetrics(**m) for m in saved["history"]], [PhaseResult(**p) for p in saved["phases"]],
                   saved["earlier_step_times_s"], saved["earlier_wall_time_s"], saved.get("earlier_peak_memory", {}))


def structure(net: BlockNet, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a resumed trial must rebuild before loading states: `requires_grad` and each group's params."""
    names = {id(p): n for n, p in net.named_parameters()}
    return {"requires_grad": {n: p.requires_grad for n, p in net.named_parameters()},
            "param_groups": [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups],
            "no_grad_prefix": net.no_grad_prefix}


def rng_states(device: torch.device) -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


Step = Callable[[], None]
WhenRecorded = Callable[[Step], None]
"""Runs a step once every record the trial handed to its trackers so far is stored, in the order given."""


def at_once(step: Step) -> None:
    step()


class Checkpoint:
    """The checkpoint of one trial in `directory`; `trial_key` tells whose it is.

    A new checkpoint is written to a temporary file at once, and put in place (and the last one so
    replaced) by `when_recorded`: only once the records of the epochs it covers are stored, so it never
    claims an epoch whose records could be lost. Removing it at the end waits its turn the same way.
    """

    def __init__(self, directory: Path, trial_key: str, every_s: float = 0.0,
                 when_recorded: WhenRecorded = at_once) -> None:
        self.path = Path(directory) / FILE_NAME
        self.trial_key = trial_key
        self.every_s = every_s
        self.when_recorded = when_recorded
        self._since = time.perf_counter()  # the last save, or this process's start on the trial
        self._saves = itertools.count()  # each save its own temporary file: an earlier one may still wait its turn

    def due(self) -> bool:
        """`every_s` have passed since the last save (or since this process took the trial up)."""
        return time.perf_counter() - self._since >= self.every_s

    def save(self, trainer: Trainer, shuffling: torch.Generator, phase: int, progress: Progress) -> None:
        """Write to a temporary file, then rename: a process killed mid-write leaves the last checkpoint whole."""
        net = trainer.net
        payload = {
            "trial": self.trial_key, "phase": phase, "progress": asdict(progress),
            "structure": structure(net, trainer.optimizer),
            "model": net.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "grads": {n: p.grad for n, p in net.named_parameters() if p.grad is not None},
            "rng": rng_states(trainer.device), "shuffling": shuffling.get_state(),
        }
        partial = self.path.with_suffix(f".{os.getpid()}-{next(self._saves)}.tmp")
        with self._create(partial) as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        self.when_recorded(lambda: self._put_in_place(partial))
        self._since = time.perf_counter()

    def _put_in_place(self, partial: Path) -> None:
        os.replace(partial, self.path)
        crash_point("checkpoint-saved")

    def _create(self, partial: Path) -> BinaryIO:
        """The folder and the file; once more if the folder vanished in between: another worker's
        end-of-sweep clean-up removes study folders that are empty at that moment."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(partial, "wb")
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(partial, "wb")

    def load(self) -> dict[str, Any] | None:
        """The saved checkpoint (its `phase` says which param groups to rebuild), or None if there is none.

        One that cannot be read (a disk that filled up, a copy cut short) is
        moved aside, never deleted, and the trial starts over from scratch.
        """
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged file: zip, pickle, EOF
            aside = self.path.with_name(f"{FILE_NAME}.unreadable-{datetime.now():%Y%m%d-%H%M%S}")
            os.replace(self.path, aside)
            warn(f"checkpoint {self.path} cannot be read ({one_line(err)[:120]}); moved it to {aside.name} and "
                 "started the trial over")
            return None
        if saved["trial"] != self.trial_key:
            raise ConfigError(f"checkpoint {self.path} belongs to another trial ({saved['trial']}); "
                              "give each trial its own checkpoint directory, or delete it to start over")
        return saved

    def restore(self, saved: dict[str, Any], trainer: Trainer, shuffling: torch.Generator) -> Progress:
        """Load the saved states into a trial already rebuilt for the saved phase."""
        rebuilt = structure(trainer.net, trainer.optimizer)
        for key, value in rebuilt.items():
            if value != saved["structure"][key]:
                raise ConfigError(f"checkpoint {self.path} was saved with another {key} than this trial rebuilds "
                                  f"for phase {saved['phase'] + 1}; delete it to start the trial over")
        trainer.net.load_state_dict(saved["model"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        trainer.scheduler.load_state_dict(saved["scheduler"])
        params = dict(trainer.net.named_parameters())
        for name, grad in saved["grads"].items():
            params[name].grad = grad.to(params[name].device)
        set_rng_states(saved["rng"])
        shuffling.set_state(saved["shuffling"])
        return Progress.from_dict(saved["progress"])

    def discard(self) -> None:
        """The trial finished: remove its checkpoint, any temporary file a killed process left, and the trial's
        folder once empty (the study's folder stays: other workers may be creating trial folders in it)."""
        self.when_recorded(self._remove)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)
        for partial in self.path.parent.glob(f"{self.path.stem}.*.tmp"):
            partial.unlink(missing_ok=True)
        remove_empty_dirs(self.path.parent, self.path.parent)
