"""torchvision models see images as their weights' own `transforms()` make them; files are read by worker processes."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import FakeData
from torchvision.models import get_model_weights
from torchvision.transforms import v2

from sweep.data import InputSpec, make_task
from sweep.data.digits import NATIVE
from sweep.data.torchvision_sets import model_transform
from sweep.feeds import Fed, SampleFeed
from sweep.models import make_model_def

RGB_SPEC = InputSpec(channels=3, size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet_b0", "convnext_tiny"])  # resize 232 / bicubic / 236
def test_images_are_preprocessed_as_the_weights_own_transforms_do(arch, tmp_path):
    definition = make_model_def(arch, tmp_path, tmp_path, weights=None)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    ours, theirs = model_transform(definition.input_spec)(image), get_model_weights(arch).DEFAULT.transforms()(image)
    # the same pixels; only the float arithmetic of scaling and normalising may round differently
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_another_input_size_keeps_the_weights_resize_to_crop_ratio(tmp_path):
    spec = make_model_def("resnet50", tmp_path, tmp_path, weights=None, input_size=112).input_spec
    assert (spec.size, spec.resize_size) == (112, 116)  # 232/224 of 112


def test_worker_processes_read_files_not_tensors(tmp_path):
    digits = make_task("digits", NATIVE, tmp_path)
    assert not digits.reads_files and SampleFeed(digits).open(None).loader(digits.train, 8).num_workers == 0
    for label in ("a", "b"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for number in range(5):
            Image.new("RGB", (12, 10), (40 * number, 0, 0)).save(tmp_path / "photos" / label / f"{number}.png")
    photos = make_task("imagefolder", RGB_SPEC, tmp_path, root="photos", val_fraction=0.2, test_fraction=0.2)
    assert photos.reads_files and SampleFeed(photos).open(None).loader(photos.train, 2).num_workers >= 1


def test_workers_give_the_batches_and_order_of_a_loader_without_them():
    images = FakeData(size=12, image_size=(3, 8, 8), transform=v2.Compose([v2.PILToTensor()]))
    with_workers = Fed(images, images, images, workers=2).loader(images, 4, torch.Generator().manual_seed(3))
    without = DataLoader(images, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # two epochs: the shuffling generator is drawn from alike
        for (a, a_labels), (b, b_labels) in zip(with_workers, without, strict=True):
            assert torch.equal(a, b) and torch.equal(a_labels, b_labels)
