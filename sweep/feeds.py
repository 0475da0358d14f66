"""What a trial's network is fed: the task's own samples, or what a mechanism derives from them once.

A mechanism chooses its feed in `set_up`, so a feed that could not be exact refuses
the configuration before any training; the trial opens it when training starts.
Whatever the feed, the loaders are built the same way from the same generator, so
paired trials see the same samples in the same order and draw the same random numbers.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sweep.feature_cache import FeatureCache
from sweep.selection import FrozenSet

if TYPE_CHECKING:  # sweep.data imports the data set libraries; a type hint does not need them
    from sweep.data import Task

EVAL_BATCH_SIZE = 256
"""Validation and test batches; `cached_prefix` builds its features in batches of this size too."""


@dataclass(frozen=True)
class FeedContext:
    """What a mechanism may consult to choose its feed."""

    task: "Task"
    always_frozen: FrozenSet  # what every phase freezes (the last phase's selection: phases only unfreeze)
    held_norms: Sequence[nn.Module]  # norm layers held in eval mode in every phase
    norm_policy: str
    device: torch.device


@dataclass
class Fed:
    """The data sets a trial's loaders read, and what producing them cost."""

    train: Dataset
    val: Dataset
    test: Dataset
    collate_fn: Callable | None = None  # None: the DataLoader's default
    build_s: float = 0.0  # device time spent producing them, counted in the trial's train time
    resident_bytes: int = 0  # bytes held in memory for them, counted in the trial's memory on the CPU
    metrics: dict[str, float] = field(default_factory=dict)  # logged with the trial's final metrics
    workers: int = 0  # DataLoader worker processes (`Task.loader_workers`)

    def loader(self, dataset: Dataset, batch_size: int, shuffling: torch.Generator | None = None) -> DataLoader:
        """Shuffled from `shuffling` when given, else in order. Workers are started afresh for each pass, so
        each epoch draws from `shuffling` as a loader without workers does and a resumed trial shuffles alike."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffling is not None, generator=shuffling,
                          collate_fn=self.collate_fn, num_workers=self.workers)


class Feed(ABC):
    @abstractmethod
    def open(self, cache: FeatureCache | None) -> Fed:
        """Produce the data sets (`cache`: where derived data may be found or kept; None: the trial's own)."""


class SampleFeed(Feed):
    """The task's samples, as they are."""

    def __init__(self, task: "Task") -> None:
        self.task = task

    def open(self, cache):
        return Fed(self.task.train, self.task.val, self.task.test, workers=self.task.loader_workers())
