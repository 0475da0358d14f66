"""Data sets by name, each turned into a `Task`: train / val / test splits and a class count."""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from sweep.errors import ConfigError, one_line
from sweep.lr_split import check_fraction
from sweep.registry import Registry


@dataclass(frozen=True)
class InputSpec:
    """What a model expects to be fed; data sets adapt their transforms to it."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


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
