"""The embedded model: a small CNN pretrained once on digits 0-4, cached under results/cache/."""

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from sweep.blocknet import BlockNet
from sweep.data import InputSpec
from sweep.data.digits import NATIVE, SOURCE_CLASSES, source_dataset
from sweep.measure import StepTimer
from sweep.models import MODELS, ModelDef
from sweep.selection import FrozenSet
from sweep.stages import stage
from sweep.strategies import FullFinetune
from sweep.train import Trainer


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


def digits_backbone(width: int) -> list[tuple[str, nn.Module]]:
    """8x8 -> 8x8 -> 4x4 -> 2x2 -> features: four blocks, each a plausible freezing boundary."""
    return [
        ("conv1", conv_block(1, width, pool=False)),
        ("conv2", conv_block(width, 2 * width, pool=True)),
        ("conv3", conv_block(2 * width, 4 * width, pool=True)),
        ("fc", nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 2 * 2, 8 * width), nn.ReLU())),
    ]


@dataclass(frozen=True)
class Pretraining:
    epochs: int = 15
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    seed: int = 0


@MODELS.register("digits_cnn")
class DigitsCnn(ModelDef):
    input_spec: InputSpec = NATIVE
    pretrained = True

    def __init__(self, cache_dir: Path, base_dir: Path, width: int = 16, pretrain: dict | None = None) -> None:
        self.cache_dir = cache_dir
        self.width = width
        self.pretraining = Pretraining(**(pretrain or {}))

    def _head(self, num_classes: int) -> nn.Linear:
        return nn.Linear(8 * self.width, num_classes)

    def build(self, num_classes: int) -> BlockNet:
        net = BlockNet(digits_backbone(self.width), self._head(num_classes))
        net.blocks.load_state_dict(self.backbone_weights())
        return net

    def cache_path(self) -> Path:
        key = {"model": "digits_cnn", "width": self.width, "pretraining": asdict(self.pretraining),
               "source_classes": list(SOURCE_CLASSES), "torch": torch.__version__.split("+")[0]}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"digits_cnn-{digest}.pt"

    def backbone_weights(self) -> dict[str, torch.Tensor]:
        path = self.cache_path()
        if not path.exists():
            with stage(f"pretraining digits_cnn on digits 0-4, once (cached as {path})"):
                state = self._pretrain()
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state, partial)
            os.replace(partial, path)  # atomic: concurrent workers never read half a file
        return torch.load(path, weights_only=True)

    def _pretrain(self) -> dict[str, torch.Tensor]:
        """Plain full training on the source half, with its own RNG so trials' seeds are unaffected."""
        p = self.pretraining
        with torch.random.fork_rng():
            torch.manual_seed(p.seed)
            net = BlockNet(digits_backbone(self.width), self._head(len(SOURCE_CLASSES)))
            loader = DataLoader(source_dataset(), batch_size=p.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(p.seed))
            optimizer = torch.optim.SGD(net.parameters(), lr=p.lr, momentum=p.momentum)
            trainer = Trainer(net, optimizer, FullFinetune(net, FrozenSet()), StepTimer(), torch.device("cpu"))
            for _ in range(p.epochs):
                trainer.train_epoch(loader)
        return net.blocks.state_dict()
