"""Executors by name: where a sweep's trials run, and how many at once. Either way the `sweep.run` process is the
driver: it owns the Optuna studies (ask, prune, tell) and hands each trial out as a `sweep.job.TrialJob`."""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from sweep.registry import Registry

if TYPE_CHECKING:
    from sweep.job import TrialInputs, TrialJob, TrialOutcome
    from sweep.study import StudyPlan
    from sweep.train import EpochMetrics


class JobSource(Protocol):
    """What an executor runs the jobs of: a strategy's study (its trials), or its confirmation runs."""

    plan: "StudyPlan"

    def session(self, position: int | None = None) -> AbstractContextManager[None]: ...

    def next_job(self) -> "TrialJob | None": ...

    def report_epoch(self, key: str, metrics: "EpochMetrics") -> bool: ...

    def finish(self, key: str, outcome: "TrialOutcome") -> None: ...


class Executor(ABC):
    def check(self) -> None:
        """Raise `ConfigError` if trials could not run at all; called before the sweep writes anything."""

    @abstractmethod
    def run(self, studies: Sequence[JobSource], inputs: "TrialInputs") -> None:
        """Run every trial the studies hand out (`next_job`, inside `session()`) until none is left."""


EXECUTORS: Registry[type[Executor]] = Registry("executor")
EXECUTORS.register_lazy("local", "sweep.executors.local:LocalExecutor")
EXECUTORS.register_lazy("ray", "sweep.executors.ray_cluster:RayExecutor")  # Ray itself is imported only when it runs


def make_executor(name: str, options: dict[str, Any]) -> Executor:
    return EXECUTORS.build(name, options)

