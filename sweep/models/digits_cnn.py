"""The embedded model: a small CNN pretrained once on digits 0-4, cached under results/cache/.

Pretraining is pinned (one thread, deterministic algorithms), so the cached
backbone is the same on every machine whatever torch's thread count: paired
trials of workers set up differently must start from the same weights.
"""

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
from sweep.errors import ConfigError
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


PRETRAIN_THREADS = 1
PRETRAINED = "pretrained"  # the one value of `model.weights` besides null (random init)


@dataclass(frozen=True)
class Pretraining:
    epochs: int = 15
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    seed: int = 0


@MODELS.register("digits_cnn")
class DigitsCnn(ModelDef):
    """`weights`: "pretrained" (the cached digits 0-4 backbone) or None, a from-scratch baseline whose backbone is
    randomly initialised from each trial's seed."""

    input_spec: InputSpec = NATIVE

    def __init__(self, cache_dir: Path, base_dir: Path, width: int = 16, pretrain: dict | None = None,
                 weights: str | None = PRETRAINED) -> None:
        if weights not in (PRETRAINED, None):
            raise ConfigError(f"model.weights={weights!r} for digits_cnn must be {PRETRAINED} (the backbone pretrained "
                              "on digits 0-4) or null (random init, a from-scratch baseline)")
        self.cache_dir = cache_dir
        self.width = width
        self.pretraining = Pretraining(**(pretrain or {}))
        self.from_cache = weights is not None
        self.pretrained = self.from_cache and self.pretraining.epochs > 0
        self._weights: dict[str, torch.Tensor] | None = None  # the backbone's, once loaded or pretrained
        self._unsaved = False  # pretrained here and not yet written to the cache

    def describe(self) -> str:
        p = self.pretraining
        if not self.from_cache:
            return "digits_cnn, not pretrained (random init from each trial's seed)"
        if not self.pretrained:
            return f"digits_cnn, not pretrained (model.pretrain.epochs=0: the random init of seed {p.seed})"
        return (f"digits_cnn pretrained on digits {SOURCE_CLASSES[0]}-{SOURCE_CLASSES[-1]} ({p.epochs} epochs, "
                f"lr {p.lr:g}, seed {p.seed}, {PRETRAIN_THREADS} thread, deterministic)")

    def _head(self, num_classes: int) -> nn.Linear:
        return nn.Linear(8 * self.width, num_classes)

    def build(self, num_classes: int) -> BlockNet:
        net = BlockNet(digits_backbone(self.width), self._head(num_classes))
        if self.from_cache:
            net.blocks.load_state_dict(self.backbone_weights())
        return net

    def cache_path(self) -> Path:
        key = {"model": "digits_cnn", "width": self.width, "pretraining": asdict(self.pretraining),
               "source_classes": list(SOURCE_CLASSES), "torch": torch.__version__.split("+")[0],
               "threads": PRETRAIN_THREADS, "deterministic": True}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"digits_cnn-{digest}.pt"

    def backbone_weights(self) -> dict[str, torch.Tensor]:
        """Read from the cache once, or pretrained now and held in memory until `save_cache` writes them."""
        if self._weights is None:
            path = self.cache_path()
            if path.exists():
                self._weights = torch.load(path, weights_only=True)
            else:
                with stage(f"pretraining digits_cnn on digits 0-4, once (cached as {path})"):
                    self._weights = self._pretrain()
                self._unsaved = True
        return self._weights

    def save_cache(self) -> None:
        if not self._unsaved:
            return
        path = self.cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(self._weights, partial)
        os.replace(partial, path)  # atomic: concurrent workers never read half a file
        self._unsaved = False

    def _pretrain(self) -> dict[str, torch.Tensor]:
        """Plain full training on the source half, with its own RNG so trials' seeds are unaffected, on a fixed
        thread count with deterministic algorithms: how many threads reduce a sum changes its rounding."""
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(PRETRAIN_THREADS)
        torch.use_deterministic_algorithms(True)
        try:
            return self._train_source()
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)

    def _train_source(self) -> dict[str, torch.Tensor]:
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
