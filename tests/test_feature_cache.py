"""The feature cache on its own: memory budget, spilling to memory-mapped files, and files it must not trust."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sweep.feature_cache import MANIFEST, FeatureCache, Layout

LAYOUT = Layout(splits=(("train", 6), ("val", 2), ("test", 2)), shape=(3,), dtype="torch.float32")
ENTRY_BYTES = 10 * (3 * 4 + 8)
REPO = Path(__file__).resolve().parents[1]


class CountingFill:
    """Writes rows whose values say which entry they belong to, and counts how often it was asked to."""

    def __init__(self, value: float) -> None:
        self.value, self.calls = value, 0

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.calls += 1
        inputs.copy_(self.value + torch.arange(inputs.numel(), dtype=torch.float32).view_as(inputs))
        targets.copy_(torch.arange(len(targets)))

    def expected(self) -> torch.Tensor:
        return self.value + torch.arange(10 * 3, dtype=torch.float32).view(10, 3)


def test_layout_bytes_and_splits():
    assert LAYOUT.nbytes == ENTRY_BYTES and LAYOUT.rows == 10
    fill = CountingFill(0.0)
    features = FeatureCache().fetch("k", LAYOUT, fill).features
    inputs, targets = features.split("val")
    assert torch.equal(inputs, fill.expected()[6:8]) and targets.tolist() == [6, 7]


def test_memory_holds_the_most_recently_used_entries_within_budget(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=2 * ENTRY_BYTES)
    fills = {key: CountingFill(100.0 * i) for i, key in enumerate("abc")}
    for key, fill in fills.items():
        assert cache.fetch(key, LAYOUT, fill).built
    assert cache.held_bytes() == 2 * ENTRY_BYTES  # "a" gave way to "c"
    again = cache.fetch("a", LAYOUT, fills["a"])  # from its verified file
    assert (again.built, again.spilled) == (False, False)
    assert torch.equal(again.features.inputs, fills["a"].expected())
    assert [fill.calls for fill in fills.values()] == [1, 1, 1]


def test_an_entry_over_the_budget_is_built_into_its_file_and_served_memory_mapped(tmp_path):
    fill = CountingFill(7.0)
    fetched = FeatureCache(tmp_path, max_bytes=ENTRY_BYTES - 1).fetch("big", LAYOUT, fill)
    assert (fetched.built, fetched.spilled) == (True, True)
    assert torch.equal(fetched.features.inputs, fill.expected())
    assert isinstance(np.load(tmp_path / "big" / "inputs.npy", mmap_mode="r"), np.memmap)
    reread = FeatureCache(tmp_path, max_bytes=0).fetch("big", LAYOUT, fill)
    assert (reread.built, reread.spilled, fill.calls) == (False, True, 1)
    assert torch.equal(reread.features.inputs, fill.expected())


def truncate(entry: Path) -> None:
    path = entry / "targets.npy"
    path.write_bytes(path.read_bytes()[:-8])


def flip_last_byte(entry: Path) -> None:
    path = entry / "inputs.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_manifest(entry: Path) -> None:
    (entry / MANIFEST).unlink()


def other_layout(entry: Path) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["layout"]["shape"] = [4]
    (entry / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [truncate, flip_last_byte, drop_manifest, other_layout])
def test_a_damaged_entry_is_rebuilt_never_used(tmp_path, damage):
    good = CountingFill(1.0)
    FeatureCache(tmp_path, max_bytes=1 << 20).fetch("k", LAYOUT, good)
    damage(tmp_path / "k")
    rebuilt = CountingFill(1.0)
    fetched = FeatureCache(tmp_path, max_bytes=1 << 20).fetch("k", LAYOUT, rebuilt)
    assert (fetched.built, rebuilt.calls) == (True, 1)
    assert torch.equal(fetched.features.inputs, rebuilt.expected())
    assert not FeatureCache(tmp_path, max_bytes=1 << 20).fetch("k", LAYOUT, rebuilt).built  # whole again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.lock"]  # nothing condemned is left behind


def test_a_killed_build_leaves_no_entry_and_its_leftovers_are_cleared(tmp_path):
    leftover = tmp_path / "k.partial-99999"
    leftover.mkdir()
    (leftover / "inputs.npy").write_bytes(b"half a file")
    fill = CountingFill(2.0)
    assert FeatureCache(tmp_path, max_bytes=1 << 20).fetch("k", LAYOUT, fill).built
    assert not leftover.exists()


def test_features_without_a_key_are_built_every_time_and_never_written(tmp_path):
    cache, fill = FeatureCache(tmp_path, max_bytes=1 << 20), CountingFill(3.0)
    assert cache.fetch(None, LAYOUT, fill).built and cache.fetch(None, LAYOUT, fill).built
    assert fill.calls == 2 and list(tmp_path.iterdir()) == [] and cache.held_bytes() == 0


def test_a_cache_travels_to_other_processes_as_its_settings_not_its_entries(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=1 << 20)
    cache.fetch("k", LAYOUT, CountingFill(4.0))
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.directory, copy.max_bytes, copy.held_bytes()) == (tmp_path, 1 << 20, 0)
    assert not copy.fetch("k", LAYOUT, CountingFill(4.0)).built  # it finds the entry on disk


WORKER = """
import sys, time
from pathlib import Path
import torch
from sweep.feature_cache import FeatureCache, Layout
directory, started, hold_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
layout = Layout(splits=(("train", 6), ("val", 2), ("test", 2)), shape=(3,), dtype="torch.float32")

def fill(inputs, targets):
    inputs.fill_(5.0)
    targets.fill_(1)
    started.touch()
    time.sleep(hold_s)

print(FeatureCache(directory, max_bytes=1 << 20).fetch("k", layout, fill).built)
"""


def start_worker(tmp_path: Path, name: str, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "cache"), str(tmp_path / name), str(hold_s)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def wait_for(path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_build_killed_mid_write_publishes_nothing_and_the_next_one_builds_whole(tmp_path):
    worker = start_worker(tmp_path, "started", hold_s=60)
    wait_for(tmp_path / "started")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not (tmp_path / "cache" / "k").exists()
    assert [p.name for p in (tmp_path / "cache").glob("k.partial-*")] == [f"k.partial-{worker.pid}"]
    fill = CountingFill(6.0)
    fetched = FeatureCache(tmp_path / "cache", max_bytes=1 << 20).fetch("k", LAYOUT, fill)
    assert fetched.built and torch.equal(fetched.features.inputs, fill.expected())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["k", "k.lock"]


def test_workers_starting_together_build_an_entry_once(tmp_path):
    workers = [start_worker(tmp_path, f"started-{i}", hold_s=1.0) for i in range(2)]
    built = sorted(worker.communicate(timeout=120)[0].strip() for worker in workers)
    assert [w.returncode for w in workers] == [0, 0]
    assert built == ["False", "True"]  # the second waited on the key's lock, then read the first one's entry
