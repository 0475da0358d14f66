"""executor=ray: every trial a Ray task, up to `max_concurrent` at a time across all strategies.

The `sweep.run` process stays the driver: it asks, prunes and tells in its own
Optuna studies and prints the progress bars and the end-of-run table. A trial task
posts each epoch to a small actor on the head node and waits for the driver's prune
decision, so workers never open the Optuna storage; they write their MLflow run
to the tracking URI themselves. A task whose worker or node dies is run again by
Ray, up to `max_retries` times, with the same job: the same Optuna trial and MLflow
run, continued from its last checkpoint under the shared results_dir.

Ray is imported only inside this executor's methods: `import sweep.run` never pulls it in.
"""

import asyncio
import importlib.util
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import ConfigError, one_line
from sweep.executors import Executor, JobSource

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle
    from ray.remote_function import RemoteFunction

    from sweep.job import TrialInputs, TrialJob, TrialOutcome
    from sweep.train import EpochMetrics

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # sweep/: shipped to the workers, so they run the driver's code
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources")  # Ray task options a trial may reserve
CLUSTER_RESOURCES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
HEAD_NODE = {"node:__internal_head__": 0.001}  # the mailbox lives where the cluster itself does
CLIENT_PREFIX = "ray://"
PROBE_TIMEOUT_S = 5.0
START_ONE = ("start one (ray start --head --port=6379), or leave executor.address unset to start a local Ray "
             "instance for this run")


class EpochMailbox:
    """A Ray actor: trials post each epoch here and wait for the driver's answer (True: prune)."""

    def __init__(self) -> None:
        self._reports: asyncio.Queue = asyncio.Queue()
        self._answers: dict[int, asyncio.Future] = {}
        self._tickets = itertools.count()

    async def report(self, key: str, metrics: "EpochMetrics") -> bool:
        ticket = next(self._tickets)
        answer = asyncio.get_running_loop().create_future()
        self._answers[ticket] = answer
        await self._reports.put((ticket, key, metrics))
        return await answer

    async def take(self) -> list[tuple[int, str, "EpochMetrics"]]:
        """Every report waiting for an answer; blocks until there is at least one."""
        reports = [await self._reports.get()]
        while not self._reports.empty():
            reports.append(self._reports.get_nowait())
        return reports

    def answer(self, ticket: int, stop: bool) -> None:
        self._answers.pop(ticket).set_result(stop)


def run_attempt(job: "TrialJob", inputs: "TrialInputs", mailbox: "ActorHandle") -> "TrialOutcome":
    """One attempt at a trial, on whichever worker Ray chose; the run is tagged with that node and process."""
    import ray

    from sweep.job import Placement, run_job

    # Ray gave the task its CPUs (OMP_NUM_THREADS): it shares them with no other worker.
    here = Placement(ray.get_runtime_context().get_node_id(), f"{socket.gethostname()}:{os.getpid()}", sharing=1)
    return run_job(job, inputs, lambda metrics: ray.get(mailbox.report.remote(job.key, metrics)), here)


class RayExecutor(Executor):
    def __init__(self, address: str | None = None, max_concurrent: int | None = None,
                 trial_resources: dict[str, Any] | None = None, max_retries: int = 3) -> None:
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigError(f"executor.address={address!r}: give auto, HOST:PORT or ray://HOST:PORT, "
                              "or leave it unset for a local Ray instance")
        self.address = address
        self.max_concurrent = None if max_concurrent is None else _whole(max_concurrent, "executor.max_concurrent", 1)
        self.trial_resources = _resources(trial_resources if trial_resources is not None else {"num_cpus": 1})
        self.max_retries = _whole(max_retries, "executor.max_retries", 0)

    def check(self) -> None:
        """An address where no cluster answers fails here, in seconds: Ray itself would keep retrying for minutes."""
        if self.address is None:
            return
        if self.address.startswith(CLIENT_PREFIX) and importlib.util.find_spec("grpc") is None:
            raise ConfigError(f"executor.address={self.address} needs Ray Client: pip install 'ray[client]', "
                              "or run the sweep on a cluster node with executor.address=auto")
        host, port = _host_and_port(self.address)
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError as err:
            raise ConfigError(f"no Ray cluster answers at executor.address={self.address} ({host}:{port}: "
                              f"{one_line(err)}); {START_ONE}") from None

    def run(self, studies: Sequence[JobSource], inputs: "TrialInputs") -> None:
        import ray

        with self._connected():
            mailbox = ray.remote(EpochMailbox).options(num_cpus=0, resources=HEAD_NODE).remote()
            attempt = ray.remote(run_attempt).options(max_retries=self.max_retries, **self.trial_resources)
            pool = TrialPool(attempt, ray.put(inputs), mailbox, self.max_concurrent or self._slots())
            with ExitStack() as sessions:
                for position, study in enumerate(studies):
                    sessions.enter_context(study.session(position))
                pool.run(studies)

    @contextmanager
    def _connected(self) -> Iterator[None]:
        """Join the cluster at `address`, or start a local instance ("local") that lives as long as this run."""
        import ray

        # A local instance gets a token of its own; Ray's notice about opting out of that is noise here.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        # A cluster's workers get this package from the driver; a local instance's import it from the driver's path.
        runtime_env = {"py_modules": [str(PACKAGE_DIR)]} if self.address else None
        try:
            ray.init(address=self.address or "local", runtime_env=runtime_env, log_to_driver=False,
                     logging_level=logging.WARNING)
        except Exception as err:  # Ray raises many types here; all mean "no cluster to run on"
            raise ConfigError(f"cannot start or join Ray at executor.address={self.address} "
                              f"({one_line(err)[:200]}); {START_ONE}") from None
        try:
            yield
        finally:
            ray.shutdown()

    def _slots(self) -> int:
        """How many trials the cluster holds at once, by the resources each one reserves."""
        import ray

        total = ray.cluster_resources()
        wanted = {CLUSTER_RESOURCES[k]: v for k, v in self.trial_resources.items() if k in CLUSTER_RESOURCES}
        wanted |= self.trial_resources.get("resources", {})
        fits = [int(total.get(name, 0) // amount) for name, amount in wanted.items() if amount]
        if not fits:
            raise ConfigError("executor.trial_resources reserves nothing, so nothing limits how many trials run at "
                              "once: set executor.max_concurrent")
        if min(fits) < 1:
            have = {name: total.get(name, 0) for name in wanted}
            raise ConfigError(f"the Ray cluster has {have} but one trial asks for {wanted}: lower "
                              "executor.trial_resources, add nodes, or set executor.max_concurrent to wait for them")
        return min(fits)


class TrialPool:
    """The driver's loop: keep `slots` trials in flight, taking turns over the studies, and answer epoch reports."""

    def __init__(self, attempt: "RemoteFunction", inputs: "ObjectRef", mailbox: "ActorHandle", slots: int) -> None:
        self.attempt = attempt
        self.inputs = inputs
        self.mailbox = mailbox
        self.slots = slots
        self.in_flight: dict["ObjectRef", "TrialJob"] = {}
        self.owners: dict[str, JobSource] = {}  # job key -> its study

    def run(self, studies: Sequence[JobSource]) -> None:
        import ray

        asking = deque(studies)  # in turn, so trial i of every strategy runs at about the same time
        reports = self.mailbox.take.remote()
        while True:
            while asking and len(self.in_flight) < self.slots:
                study = asking.popleft()
                job = study.next_job()
                if job is not None:
                    self.owners[job.key] = study
                    self.in_flight[self.attempt.remote(job, self.inputs, self.mailbox)] = job
                    asking.append(study)
            if not self.in_flight:
                return
            (ready,), _ = ray.wait([reports, *self.in_flight], num_returns=1)
            if ready == reports:
                self._answer(ray.get(reports))
                reports = self.mailbox.take.remote()
            else:
                self._finish(ready)

    def _answer(self, reports: list[tuple[int, str, "EpochMetrics"]]) -> None:
        for ticket, key, metrics in reports:
            study = self.owners.get(key)  # None: a dead attempt's late report of a trial already told
            self.mailbox.answer.remote(ticket, study.report_epoch(key, metrics) if study is not None else True)

    def _finish(self, ref: "ObjectRef") -> None:
        import ray

        from sweep.job import TrialOutcome

        job = self.in_flight.pop(ref)
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as err:  # every retry's worker died, or the task could not run at all
            outcome = TrialOutcome.lost(f"{type(err).__name__}: {one_line(err)[:300]}")
        self.owners.pop(job.key).finish(job.key, outcome)


def _whole(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what}={value!r} must be a whole number >= {minimum}")
    return value


def _resources(requested: Any) -> dict[str, Any]:
    if not isinstance(requested, dict) or set(requested) - set(RESOURCE_KEYS):
        raise ConfigError(f"executor.trial_resources={requested!r}: use the keys {', '.join(RESOURCE_KEYS)}, "
                          "e.g. {num_cpus: 1, num_gpus: 1}")
    custom = requested.get("resources") or {}
    if not isinstance(custom, dict):
        raise ConfigError(f"executor.trial_resources.resources={custom!r} must map custom resource names to amounts")
    amounts = {f"executor.trial_resources.{k}": v for k, v in requested.items() if k != "resources"}
    amounts |= {f"executor.trial_resources.resources.{k}": v for k, v in custom.items()}
    for what, amount in amounts.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ConfigError(f"{what}={amount!r} must be a number >= 0")
    return dict(requested)


def _host_and_port(address: str) -> tuple[str, int]:
    """Where the cluster listens: `auto` is looked up the way Ray does (RAY_ADDRESS, then the latest `ray start`)."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            address = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError:
            raise ConfigError(f"executor.address=auto found no Ray cluster on this machine; {START_ONE}") from None
    host, _, port = address.removeprefix(CLIENT_PREFIX).rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"executor.address={address!r}: give auto, HOST:PORT or ray://HOST:PORT, "
                          "or leave it unset for a local Ray instance")
    return host.strip("[]"), int(port)
