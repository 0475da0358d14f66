"""A line when a slow step starts and one when it ends, so nobody waits at a silent terminal.

On stdout: stderr is kept for progress bars and for the one line a mistake gets.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stage(what: str) -> Iterator[None]:
    print(f"{what} ...", flush=True)
    started = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - started:.1f} s", flush=True)
