"""torchvision data sets as Tasks: CIFAR-10/100, MNIST and FashionMNIST from their official files, and ImageFolder.

Images are converted to what the model expects (its `InputSpec`): channels,
size and normalisation. There is no augmentation: every mechanism sees the same
pixels, so differences between trials come from the freezing alone. Splits are
seeded and stratified; where a data set has an official test split it is the
test set and the validation set is carved from the training split.
"""

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST, ImageFolder, VisionDataset
from torchvision.transforms import v2

from sweep.data import InputSpec, Task, split_off, three_way_split
from sweep.errors import ConfigError, choice_error, one_line
from sweep.lr_split import check_fraction

CHANNEL_CONVERSIONS = {1: partial(v2.Grayscale, num_output_channels=1), 3: v2.RGB}
"""What makes any image have the model's channel count (RGB() also turns grayscale into RGB)."""


def model_transform(spec: InputSpec) -> v2.Compose:
    """PIL image -> normalised float tensor of the model's channels and size.

    After the channel conversion, the steps of torchvision's `ImageClassification` preset, the one a
    weights enum's `transforms()` returns, in its order (resized and cropped as a PIL image): the shorter
    side to `spec.resize_size`, the centre cropped to `spec.size`, scaled to [0, 1], normalised. No
    augmentation: every mechanism sees the same pixels.
    """
    if spec.channels not in CHANNEL_CONVERSIONS:
        raise choice_error("input channel count", spec.channels, map(str, CHANNEL_CONVERSIONS))
    return v2.Compose([
        CHANNEL_CONVERSIONS[spec.channels](),
        v2.Resize(spec.resize_size or spec.size, interpolation=v2.InterpolationMode(spec.interpolation),
                  antialias=True),
        v2.CenterCrop(spec.size),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(spec.mean), list(spec.std)),
    ])


def _root(base_dir: Path, root: str) -> Path:
    return (base_dir / Path(root).expanduser()).resolve()


@dataclass(frozen=True)
class OfficialSet:
    """A torchvision data set with official train and test splits: `cls(root, train, transform, download)`."""

    title: str
    cls: type[VisionDataset]

    def open(self, root: Path, train: bool, transform: v2.Compose, download: bool) -> VisionDataset:
        try:
            return self.cls(str(root), train=train, transform=transform, download=download)
        except (OSError, RuntimeError) as err:  # torchvision: RuntimeError "not found"; urllib: URLError (an OSError)
            if download:
                raise ConfigError(f"could not download {self.title} to {root} (no network?): {one_line(err)}; "
                                  "put the data set there yourself or pass data.download=false") from None
            raise ConfigError(f"no {self.title} data under {root}; put the data set there or pass "
                              "data.download=true on a machine with network") from None


def official_task(source: OfficialSet, name: str, input_spec: InputSpec, base_dir: Path, root: str = "data",
                  download: bool = False, split_seed: int = 0, val_fraction: float = 0.1) -> Task:
    """Official test split as test; validation carved from the training split."""
    check_fraction(val_fraction, "data.val_fraction")
    root_dir = _root(base_dir, root)
    transform = model_transform(input_spec)
    train = source.open(root_dir, True, transform, download)
    test = source.open(root_dir, False, transform, download)
    targets = np.asarray(train.targets)
    rest, val = split_off(np.arange(len(targets)), targets, val_fraction, split_seed, "data.val_fraction")
    return Task(name, Subset(train, rest.tolist()), Subset(train, val.tolist()), test, num_classes=len(train.classes),
                reads_files=True)


# The task builders sweep.data registers by name (without importing this module).
cifar10_task = partial(official_task, OfficialSet("CIFAR-10", CIFAR10), "cifar10")
cifar100_task = partial(official_task, OfficialSet("CIFAR-100", CIFAR100), "cifar100")
mnist_task = partial(official_task, OfficialSet("MNIST", MNIST), "mnist")
fashionmnist_task = partial(official_task, OfficialSet("FashionMNIST", FashionMNIST), "fashionmnist")


def check_images(paths: Iterable[str]) -> None:
    """Decode every image once before training, so a corrupt or truncated file is one line now, not a failed
    trial later (one pass costs less than the first epoch, which decodes them all too)."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
            raise ConfigError(f"cannot read image {path} ({one_line(err)}); remove or replace it") from None


def imagefolder_task(input_spec: InputSpec, base_dir: Path, root: str | None = None, split_seed: int = 0,
                     val_fraction: float = 0.1, test_fraction: float = 0.1) -> Task:
    """A user's own images, `root/<class>/<image>`; train, val and test are all carved from them."""
    if root is None:
        raise ConfigError("data=imagefolder needs data.root=PATH: a folder with one sub-folder of images per class")
    root_dir = _root(base_dir, root)
    try:
        images = ImageFolder(str(root_dir), transform=model_transform(input_spec))
    except FileNotFoundError as err:
        raise ConfigError(f"no images under {root_dir} ({one_line(err)}); data.root needs one sub-folder of images "
                          "per class, e.g. root/cat/1.png, root/dog/2.jpg") from None
    if len(images.classes) < 2:
        raise ConfigError(f"data.root={root_dir} has {len(images.classes)} class folder ({', '.join(images.classes)}); "
                          "a classifier needs at least two: one sub-folder of images per class")
    check_images(path for path, _ in images.samples)
    train, val, test = three_way_split(np.asarray(images.targets), val_fraction, test_fraction, split_seed)
    subsets = (Subset(images, part.tolist()) for part in (train, val, test))
    return Task("imagefolder", *subsets, num_classes=len(images.classes), identity=files_stamp(images.samples),
                reads_files=True)


def files_stamp(samples: list[tuple[str, int]]) -> str:
    """sha256 over every image's path, class, size and modification time: an edited folder is another data set."""
    digest = hashlib.sha256()
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
