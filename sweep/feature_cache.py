"""Precomputed features kept for reuse: in memory up to a byte budget, on disk as memory-mapped arrays beyond it.

An entry is a directory `<directory>/<key>/` holding `inputs.npy` and `targets.npy`
(numpy's array format: raw bytes behind a small header, read memory-mapped and
never unpickled) and `manifest.json` with each file's size and sha256. It is
written under another name and renamed into place whole, so a process killed
mid-write leaves no entry; and it is read only after its bytes match the
manifest, so a corrupt or truncated file is rebuilt, never used. A lock per key
makes the workers of one machine build an entry once between them.

Every entry that has a key is written to disk (re-runs and other workers reuse
it); it is also held in memory while the entries held fit in `max_bytes`, the
least recently used giving way. An entry bigger than the budget is built straight
into its file and served from the memory map ("spilled").
"""

import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

FORMAT = 1
FILES = ("inputs.npy", "targets.npy")
MANIFEST = "manifest.json"
TARGET_DTYPE = torch.int64
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """The shape of one entry: `splits` (name -> rows, in order) of per-row `shape` and `dtype`, plus int64 targets."""

    splits: tuple[tuple[str, int], ...]
    shape: tuple[int, ...]
    dtype: str  # torch's name, e.g. "torch.float32"

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.splits)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype.removeprefix("torch."))

    @property
    def nbytes(self) -> int:
        row = int(np.prod(self.shape, dtype=np.int64)) * torch.empty((), dtype=self.torch_dtype).element_size()
        return self.rows * (row + torch.empty((), dtype=TARGET_DTYPE).element_size())

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as a manifest reads back


@dataclass
class Features:
    """The rows of one entry: inputs (rows, *shape) and targets (rows,), split by `layout.splits` in order."""

    layout: Layout
    inputs: torch.Tensor
    targets: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        start = 0
        for split, rows in self.layout.splits:
            if split == name:
                return self.inputs[start : start + rows], self.targets[start : start + rows]
            start += rows
        raise KeyError(name)


@dataclass
class Fetched:
    features: Features
    built: bool  # by this call; False: reused from memory or from a verified file
    spilled: bool  # served from the memory-mapped file rather than held in memory


Fill = Callable[[torch.Tensor, torch.Tensor], None]
"""Writes every row of an entry into the given (inputs, targets) tensors."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _empty_arrays(layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty((layout.rows, *layout.shape), dtype=layout.torch_dtype),
            torch.empty(layout.rows, dtype=TARGET_DTYPE))


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


class FeatureCache:
    """Entries by key. Without a `directory` nothing is written and everything stays in memory (there is
    nowhere to spill to); without `max_bytes` there is no memory budget."""

    def __init__(self, directory: Path | None = None, max_bytes: int | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._held: OrderedDict[str, Features] = OrderedDict()  # least recently used first
        self._mapped: dict[str, Features] = {}

    def __getstate__(self) -> dict:
        """A cache travels (to a Ray worker, in `TrialInputs`) as its settings: each process holds its own entries."""
        return {"directory": self.directory, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def held_bytes(self) -> int:
        return sum(f.layout.nbytes for f in self._held.values())

    def fetch(self, key: str | None, layout: Layout, fill: Fill) -> Fetched:
        """The entry for `key`, built by `fill` if there is none yet (or only a corrupt one). `key=None`: an entry
        that must not be shared is built, and neither kept nor written."""
        if key is None:
            inputs, targets = _empty_arrays(layout)
            fill(inputs, targets)
            return Fetched(Features(layout, inputs, targets), built=True, spilled=False)
        if key in self._held:
            self._held.move_to_end(key)
            return Fetched(self._held[key], built=False, spilled=False)
        if key in self._mapped:
            return Fetched(self._mapped[key], built=False, spilled=True)
        if self.directory is None:
            inputs, targets = _empty_arrays(layout)
            fill(inputs, targets)
            return self._keep(key, Features(layout, inputs, targets), built=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(self.directory / f"{key}.lock"):
            found = self._read(key, layout)
            return self._keep(key, found, built=False) if found else self._build(key, layout, fill)

    def _fits(self, nbytes: int) -> bool:
        return self.directory is None or self.max_bytes is None or nbytes <= self.max_bytes

    def _keep(self, key: str, features: Features, built: bool) -> Fetched:
        """Hold `features` in memory, making room by dropping the least recently used; too big: map its file."""
        nbytes = features.layout.nbytes
        if not self._fits(nbytes):
            self._mapped[key] = self._map(self.directory / key, features.layout)
            return Fetched(self._mapped[key], built=built, spilled=True)
        while self._held and not self._fits(self.held_bytes() + nbytes):
            self._held.popitem(last=False)
        self._held[key] = features
        return Fetched(features, built=built, spilled=False)

    def _read(self, key: str, layout: Layout) -> Features | None:
        """The entry on disk if its manifest and every byte check out; None if absent, partial or corrupt."""
        entry = self.directory / key
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        expected = {"format": FORMAT, "key": key, "layout": layout.as_json()}
        if any(manifest.get(k) != v for k, v in expected.items()) or set(manifest.get("files", {})) != set(FILES):
            log.warning("feature cache %s has a manifest for something else; rebuilding it", entry)
            return None
        for name, recorded in manifest["files"].items():
            path = entry / name
            if not path.is_file() or path.stat().st_size != recorded["bytes"] or file_sha256(path) != recorded["sha256"]:
                log.warning("feature cache file %s is corrupt or partial (size or sha256 differs); rebuilding it", path)
                return None
        if not self._fits(layout.nbytes):
            return self._map(entry, layout)
        inputs, targets = (torch.from_numpy(np.load(entry / name, allow_pickle=False)) for name in FILES)
        return Features(layout, inputs, targets)

    @staticmethod
    def _map(entry: Path, layout: Layout) -> Features:
        """Copy-on-write maps: rows are read from the file on demand, and nothing written to them reaches it."""
        inputs, targets = (torch.from_numpy(np.load(entry / name, mmap_mode="c", allow_pickle=False)) for name in FILES)
        return Features(layout, inputs, targets)

    def _build(self, key: str, layout: Layout, fill: Fill) -> Fetched:
        """Fill a fresh entry (straight into its files when it is too big for memory), then publish it whole."""
        staging = self.directory / f"{key}.partial-{os.getpid()}"
        for stale in self.directory.glob(f"{key}.partial-*"):  # left by killed builds: we hold the key's lock
            shutil.rmtree(stale)
        staging.mkdir()
        spill = not self._fits(layout.nbytes)
        if spill:
            arrays = [np.lib.format.open_memmap(staging / FILES[0], mode="w+", shape=(layout.rows, *layout.shape),
                                                dtype=_numpy_dtype(layout.torch_dtype)),
                      np.lib.format.open_memmap(staging / FILES[1], mode="w+", shape=(layout.rows,),
                                                dtype=_numpy_dtype(TARGET_DTYPE))]
            inputs, targets = (torch.from_numpy(a) for a in arrays)
        else:
            inputs, targets = _empty_arrays(layout)
        fill(inputs, targets)
        if spill:
            for array in arrays:
                array.flush()
            del inputs, targets, arrays
        else:
            for name, tensor in zip(FILES, (inputs, targets)):
                np.save(staging / name, tensor.numpy(), allow_pickle=False)
        self._publish(key, layout, staging)
        if spill:
            return self._keep(key, self._map(self.directory / key, layout), built=True)
        return self._keep(key, Features(layout, inputs, targets), built=True)

    def _publish(self, key: str, layout: Layout, staging: Path) -> None:
        """Manifest last, then one rename: the entry appears whole or not at all. A corrupt one is moved aside first."""
        files = {name: {"bytes": (staging / name).stat().st_size, "sha256": file_sha256(staging / name)}
                 for name in FILES}
        manifest = {"format": FORMAT, "key": key, "layout": layout.as_json(), "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        entry = self.directory / key
        if entry.exists():
            condemned = self.directory / f"{key}.corrupt-{os.getpid()}"
            os.rename(entry, condemned)
            shutil.rmtree(condemned)
        os.rename(staging, entry)
