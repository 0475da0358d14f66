"""How many CPU threads torch uses, so that workers on one host share its cores instead of fighting over them.

By default every torch process spins a thread per core: two workers on a 2-core
host ran 8.5x slower than one. `train.threads=N` fixes the count. Left unset, a
worker takes OMP_NUM_THREADS where that is set (as Ray and many batch systems set
it per task), otherwise the cores it may run on divided among the live workers of
its host (`sweep.workers.WorkerRegistry`), at least one. A worker re-counts before
every trial, so one started alone gives up cores when a second one starts.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """The cores this process may run on (a CPU affinity mask or cgroup cpuset can allow fewer than the host has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_for(configured: int | None, live_workers: int) -> int:
    """`train.threads` if given, else OMP_NUM_THREADS if set, else this worker's share of the cores."""
    if configured is not None:
        return configured
    from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if from_env.isdigit() and int(from_env) > 0:
        return int(from_env)
    return max(1, available_cores() // max(1, live_workers))


def share_cores(threads: int) -> None:
    """Set torch's intra-op threads and, if this process has not fixed them yet, its inter-op threads.

    torch accepts the inter-op count once per process, before any inter-op work; a
    later sweep in the same process (a Hydra multirun job) keeps the first one's.
    """
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    torch.set_num_threads(threads)


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (None: left as they are) for the block, then restored."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
