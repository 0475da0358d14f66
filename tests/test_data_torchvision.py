"""torchvision data sets read from tiny files in their real on-disk formats; no network.

CIFAR: pickled batches under cifar-10-batches-py/ or cifar-100-python/ (torchvision
checks their md5, so the fixture tells it the md5 of the files it wrote). MNIST and
FashionMNIST: idx files under <Class>/raw/. ImageFolder: a tree of PNG files.
"""

import hashlib
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST

from sweep.data import DATASETS, InputSpec, make_task
from sweep.errors import ConfigError

RGB_SPEC = InputSpec(channels=3, size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
GRAY_SPEC = InputSpec(channels=1, size=16, mean=(0.5,), std=(0.25,))
CLASSES_PRESENT = 5  # the fixtures label their images 0..4 whatever the data set's class count
PER_CLASS = 4  # training images per class; the test splits hold one per class
CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
OFFICIAL = {"cifar10": CIFAR10, "cifar100": CIFAR100, "mnist": MNIST, "fashionmnist": FashionMNIST}


def labels(per_class: int) -> list[int]:
    return [c for _ in range(per_class) for c in range(CLASSES_PRESENT)]


def pixel(label: int, channel: int) -> int:
    """Every image is flat: channel c of an image of class k has value 40k + 10c."""
    return 40 * label + 10 * channel


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar(root: Path, cls: type[CIFAR10], monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches in CIFAR's python format: {'data': uint8 N x 3072 (R, G, B planes), labels}, plus the meta file."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if cls is CIFAR10 else "fine_labels"
    n_names = 10 if cls is CIFAR10 else 100

    def write_batches(files: list[list[str]], per_class: int) -> list[list[str]]:
        targets = labels(per_class)
        chunks = np.array_split(np.arange(len(targets)), len(files))
        for (name, _), chunk in zip(files, chunks):
            data = np.array([[pixel(targets[i], c)] * 1024 for i in chunk for c in range(3)], dtype=np.uint8)
            batch = {"data": data.reshape(len(chunk), 3072), label_key: [targets[i] for i in chunk]}
            (folder / name).write_bytes(pickle.dumps(batch))
        return [[name, md5(folder / name)] for name, _ in files]

    monkeypatch.setattr(cls, "train_list", write_batches(cls.train_list, PER_CLASS))
    monkeypatch.setattr(cls, "test_list", write_batches(cls.test_list, 1))
    meta = folder / cls.meta["filename"]
    meta.write_bytes(pickle.dumps({cls.meta["key"]: [f"class{i}" for i in range(n_names)]}))
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(meta)})


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: 0, 0, type 0x08 (unsigned byte), rank; big-endian int32 sizes; the bytes."""
    path.write_bytes(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def write_mnist(root: Path, cls: type[MNIST], monkeypatch: pytest.MonkeyPatch) -> None:
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True)
    for split, per_class in (("train", PER_CLASS), ("t10k", 1)):
        targets = labels(per_class)
        images = np.array([np.full((28, 28), pixel(t, 0)) for t in targets], dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.array(targets, dtype=np.uint8))


WRITERS = {"cifar10": write_cifar, "cifar100": write_cifar, "mnist": write_mnist, "fashionmnist": write_mnist}


def _offline(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_set_from_its_files(tmp_path, monkeypatch, name):
    WRITERS[name](tmp_path / "data", OFFICIAL[name], monkeypatch)
    task = make_task(name, RGB_SPEC, base_dir=tmp_path, val_fraction=0.25)  # root: data, relative to base_dir

    assert task.num_classes == (100 if name == "cifar100" else 10)
    assert (len(task.train), len(task.val), len(task.test)) == (15, 5, 5)
    assert set(task.train.indices).isdisjoint(task.val.indices)
    assert sorted(int(task.val[i][1]) for i in range(len(task.val))) == list(range(CLASSES_PRESENT))  # stratified
    image, label = task.test[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    channels = 3 if name.startswith("cifar") else 1
    for c in range(3):  # grayscale sources are repeated into RGB
        value = pixel(int(label), c if channels == 3 else 0) / 255
        torch.testing.assert_close(image[c], torch.full((32, 32), (value - RGB_SPEC.mean[c]) / RGB_SPEC.std[c]))


def test_rgb_images_become_grayscale_for_a_one_channel_model(tmp_path, monkeypatch):
    write_cifar(tmp_path / "data", CIFAR10, monkeypatch)
    image, label = make_task("cifar10", GRAY_SPEC, base_dir=tmp_path, val_fraction=0.25).test[2]
    luma = sum(w * pixel(int(label), c) for c, w in enumerate((0.2989, 0.587, 0.114))) / 255
    assert image.shape == (1, 16, 16)
    torch.testing.assert_close(image, torch.full((1, 16, 16), (luma - 0.5) / 0.25), atol=2 / 255 / 0.25, rtol=0)


def test_val_split_is_seeded(tmp_path, monkeypatch):
    write_mnist(tmp_path / "data", MNIST, monkeypatch)
    split = {seed: make_task("mnist", RGB_SPEC, tmp_path, split_seed=seed, val_fraction=0.25).val.indices
             for seed in (0, 0, 1, 2, 3)}
    assert make_task("mnist", RGB_SPEC, tmp_path, split_seed=0, val_fraction=0.25).val.indices == split[0]
    assert len({tuple(v) for v in split.values()}) > 1


@pytest.mark.parametrize("name, title", [("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"), ("mnist", "MNIST"),
                                         ("fashionmnist", "FashionMNIST")])
def test_absent_data_without_download(tmp_path, name, title):
    with pytest.raises(ConfigError, match=rf"^no {title} data under {tmp_path}/data; put the data set there or "
                                          r"pass data\.download=true on a machine with network$"):
        make_task(name, RGB_SPEC, base_dir=tmp_path)


@pytest.mark.parametrize("name, title", [("cifar10", "CIFAR-10"), ("mnist", "MNIST")])
def test_failed_download(tmp_path, monkeypatch, name, title):
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    with pytest.raises(ConfigError, match=rf"^could not download {title} to {tmp_path}/elsewhere \(no network\?\): "
                                          r".*; put the data set there yourself") as err:
        make_task(name, RGB_SPEC, base_dir=tmp_path, root="elsewhere", download=True)
    assert "\n" not in str(err.value)


def test_present_data_is_not_downloaded_again(tmp_path, monkeypatch):
    write_mnist(tmp_path / "data", FashionMNIST, monkeypatch)
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    assert len(make_task("fashionmnist", RGB_SPEC, tmp_path, download=True, val_fraction=0.25).test) == CLASSES_PRESENT


# --- ImageFolder ---------------------------------------------------------------------------------------------


def write_image_folder(root: Path, per_class: int = 5) -> None:
    """root/<class>/<i>.png, in a size and colour mode unlike the model's."""
    for label, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (40, 30), color=pixel(label, 0)).save(root / name / f"{i}.png")


def test_image_folder(tmp_path):
    write_image_folder(tmp_path / "pets")
    task = make_task("imagefolder", RGB_SPEC, base_dir=tmp_path, root="pets", val_fraction=0.2, test_fraction=0.2)
    assert task.num_classes == 3
    parts = (task.train.indices, task.val.indices, task.test.indices)
    assert [len(p) for p in parts] == [9, 3, 3]
    assert sorted(i for p in parts for i in p) == list(range(15))
    assert sorted(int(task.test[i][1]) for i in range(3)) == [0, 1, 2]  # stratified
    image, label = task.val[0]
    assert image.shape == (3, 32, 32)
    torch.testing.assert_close(image[1], torch.full((32, 32), (pixel(label, 0) / 255 - 0.456) / 0.224))
    again = make_task("imagefolder", RGB_SPEC, tmp_path, root=str(tmp_path / "pets"), val_fraction=0.2,
                      test_fraction=0.2)
    assert (again.train.indices, again.val.indices, again.test.indices) == parts


@pytest.mark.parametrize("setup, options, message", [
    (None, {}, r"data=imagefolder needs data\.root=PATH"),
    (None, {"root": "pets"}, r"no images under {tmp}/pets \(.*\); data\.root needs one sub-folder of images per class"),
    ("empty", {"root": "pets"}, r"no images under {tmp}/pets \(.*\); data\.root needs"),
    ("images", {"root": "pets", "val_fraction": 0.5, "test_fraction": 0.5}, r"leaves no training images"),
    ("images", {"root": "pets", "test_fraction": 0.1}, r"data\.test_fraction=0\.1 cannot split 15 images stratified"),
])
def test_image_folder_errors(tmp_path, setup, options, message):
    if setup == "empty":
        (tmp_path / "pets" / "cat").mkdir(parents=True)
    elif setup == "images":
        write_image_folder(tmp_path / "pets")
    with pytest.raises(ConfigError, match=message.format(tmp=tmp_path)):
        make_task("imagefolder", RGB_SPEC, base_dir=tmp_path, **options)


def test_unsupported_channel_count(tmp_path):
    write_image_folder(tmp_path / "pets")
    spec = InputSpec(channels=2, size=8, mean=(0.0, 0.0), std=(1.0, 1.0))
    with pytest.raises(ConfigError, match=r"unknown input channel count 2; choose one of: 1, 3"):
        make_task("imagefolder", spec, base_dir=tmp_path, root="pets")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"])
def test_config_files_name_the_builders_options(tmp_path, name):
    """Each conf/data yaml is accepted by its builder; with no data around, that ends in the absent-data error."""
    options = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert options.pop("name") == name and name in DATASETS
    with pytest.raises(ConfigError, match=r"^(no .* data under|data=imagefolder needs data\.root)"):
        make_task(name, RGB_SPEC, base_dir=tmp_path, **options)
