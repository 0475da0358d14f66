"""Data sets by name, each turned into a `Task`: train / val / test splits and a class count."""

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import singledispatch
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset

from sweep.errors import ConfigError, one_line
from sweep.lr_split import check_fraction
from sweep.registry import Registry
from sweep.threads import available_cores


@dataclass(frozen=True)
class InputSpec:
    """What a model expects to be fed; data sets adapt their transforms to it.

    Images are resized so their shorter side is `resize_size` (default `size`), then centre-cropped
    to `size`: with a torchvision model, as its weights' own `transforms()` do (e.g. 256, then 224).
    """

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: int | None = None
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value


MAX_LOADER_WORKERS = 4


@dataclass
class Task:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    identity: str | None = None
    """What determines its samples (data set, options, split, transform), for caches of derived data;
    None: unknown, so nothing derived from it is shared. `make_task` sets it; a builder may first put
    what its options cannot tell (the files' sizes and times) here."""
    reads_files: bool = False  # each sample is decoded from a file and transformed: loaded by worker processes

    def loader_workers(self) -> int:
        """DataLoader worker processes: where decoding and resizing each image costs more than a process
        hand-off (one per core, at most 4); none for in-memory tensors, where they only add start-up."""
        return min(MAX_LOADER_WORKERS, available_cores()) if self.reads_files else 0

    def split_sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def digest(self) -> str:
        """sha256 of what the three splits hold, so a record says which data a trial saw (16 hex digits)."""
        digest = hashlib.sha256(f"{self.name}|{self.num_classes}".encode())
        for split in (self.train, self.val, self.test):
            _update(split, digest)
        return digest.hexdigest()[:16]


@singledispatch
def _update(dataset: Dataset, digest: "hashlib._Hash") -> None:
    """A data set read from files: its kind, size, classes and labels (hashing every image would read them all)."""
    digest.update(f"{type(dataset).__name__}|{len(dataset)}|{getattr(dataset, 'classes', '')}|".encode())
    digest.update(np.asarray(getattr(dataset, "targets", []), dtype=np.int64).tobytes())


@_update.register(TensorDataset)
def _(dataset: TensorDataset, digest: "hashlib._Hash") -> None:
    for tensor in dataset.tensors:
        digest.update(tensor.contiguous().numpy().tobytes())


@_update.register(Subset)
def _(dataset: Subset, digest: "hashlib._Hash") -> None:
    digest.update(np.asarray(dataset.indices, dtype=np.int64).tobytes())
    _update(dataset.dataset, digest)


def split_off(indices: np.ndarray, targets: np.ndarray, fraction: float, seed: int,
              what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part): a seeded, class-stratified `fraction` of `indices` split off."""
    from sklearn.model_selection import train_test_split  # seconds to import: only when a task is built

    try:
        return train_test_split(indices, test_size=fraction, random_state=seed, stratify=targets[indices])
    except ValueError as err:
        raise ConfigError(f"{what}={fraction} cannot split {len(indices)} images stratified by class: "
                          f"{one_line(err)}") from None


def three_way_split(targets: np.ndarray, val_fraction: float, test_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded, stratified train / val / test indices, for data sets without an official test split."""
    check_fraction(val_fraction, "data.val_fraction")
    check_fraction(test_fraction, "data.test_fraction")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no "
                          "training images; it must be < 1")
    rest, test = split_off(np.arange(len(targets)), targets, test_fraction, seed, "data.test_fraction")
    train, val = split_off(rest, targets, val_fraction / (1 - test_fraction), seed, "data.val_fraction")
    return train, val, test


TaskBuilder = Callable[..., Task]
DATASETS: Registry[TaskBuilder] = Registry("data set")


def make_task(name: str, input_spec: InputSpec, base_dir: Path, **options) -> Task:
    """`base_dir` anchors relative data paths (where the user ran the command)."""
    task = DATASETS.build(name, options, input_spec=input_spec, base_dir=base_dir)
    task.identity = json.dumps({"data": name, "options": options, "input": asdict(input_spec),
                                "base_dir": str(base_dir), "source": task.identity}, sort_keys=True, default=str)
    return task


from sweep.data import digits  # noqa: E402,F401  (registers the embedded task)

# torchvision is imported only when one of its data sets is chosen: it costs seconds at start-up.
for _name in ("cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"):
    DATASETS.register_lazy(_name, f"sweep.data.torchvision_sets:{_name}_task")
