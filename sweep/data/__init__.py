"""Data sets by name, each turned into a `Task`: train / val / test splits and a class count."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from sweep.errors import ConfigError
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


TaskBuilder = Callable[..., Task]
DATASETS: Registry[TaskBuilder] = Registry("data set")


def make_task(name: str, input_spec: InputSpec, base_dir: Path, **options) -> Task:
    """`base_dir` anchors relative data paths (where the user ran the command)."""
    builder = DATASETS.get(name)
    try:
        return builder(input_spec=input_spec, base_dir=base_dir, **options)
    except TypeError as err:
        raise ConfigError(f"data {name!r}: {err}") from None


from sweep.data import digits  # noqa: E402,F401  (registers the embedded task)
from sweep.data import torchvision_sets  # noqa: E402,F401  (registers the torchvision data sets)
