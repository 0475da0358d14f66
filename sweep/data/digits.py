"""The embedded transfer task: scikit-learn's bundled handwritten digits, split by class.

Source = digits 0-4 (for pretraining), target = digits 5-9 relabelled 0-4
(for transfer), as in Yosinski et al. 2014. Nothing is downloaded.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sweep.data import DATASETS, InputSpec, Task, three_way_split

SOURCE_CLASSES = range(0, 5)
TARGET_CLASSES = range(5, 10)
NATIVE = InputSpec(channels=1, size=8, mean=(0.0,), std=(1.0,))


def _images(input_spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # seconds to import: only when the task is built

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if input_spec.size != NATIVE.size:
        images = F.interpolate(images, size=input_spec.size, mode="bilinear", align_corners=False)
    images = images.expand(-1, input_spec.channels, -1, -1)
    mean = torch.tensor(input_spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(input_spec.std).view(1, -1, 1, 1)
    return ((images - mean) / std).contiguous(), torch.tensor(digits.target)


def _half(classes: range, input_spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _images(input_spec)
    keep = (labels >= classes.start) & (labels < classes.stop)
    return images[keep], labels[keep] - classes.start


def source_dataset(input_spec: InputSpec = NATIVE) -> TensorDataset:
    return TensorDataset(*_half(SOURCE_CLASSES, input_spec))


@DATASETS.register("digits")
def digits_task(input_spec: InputSpec, base_dir: Path, split_seed: int = 0,
                val_fraction: float = 0.2, test_fraction: float = 0.2) -> Task:
    images, labels = _half(TARGET_CLASSES, input_spec)
    train, val, test = three_way_split(labels.numpy(), val_fraction, test_fraction, split_seed)

    def subset(idx) -> TensorDataset:
        idx = torch.as_tensor(idx)
        return TensorDataset(images[idx], labels[idx])

    return Task("digits", subset(train), subset(val), subset(test), num_classes=len(TARGET_CLASSES))
