"""`cached_prefix`'s feed: the frozen prefix's outputs, computed once and reused by every epoch, trial and re-run.

It is exact only where the prefix maps each sample to the same output every time:
its norm layers held in eval mode, no dropout in it, no random augmentation of
its inputs. Each of those is checked, and a configuration that breaks one is
refused with the reason and the fix. Under those conditions it feeds the suffix
what `no_grad_forward` computes on the fly: the features are built in batches of
the evaluation batch size, and the training loader draws the same batches from the
same generator as every other strategy.

The cache key is everything the outputs depend on: the prefix blocks, their
architecture and the sha256 of their weights and buffers (`BlockNet.backbone_sha256`
of the prefix, the backbone sha256 each trial records), the data set with its
options, split and transform, the input shape, the norm policy, the device type,
the CPU thread count and the torch version.
"""

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from sweep.blocknet import BlockNet
from sweep.errors import NotApplicable
from sweep.feature_cache import FeatureCache, Layout
from sweep.feeds import EVAL_BATCH_SIZE, Fed, Feed, FeedContext
from sweep.measure import make_timer

SPLITS = ("train", "val", "test")
RANDOM_TRANSFORMS = ("ColorJitter", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ElasticTransform",
                     "GaussianNoise", "ScaleJitter")
"""torchvision transforms that are random without saying so in their name (the rest start with `Random`)."""


class FeatureSet(Dataset):
    """Rows of the cache. The loader fetches a whole batch with one index (`__getitems__`), not sample by sample."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor(indices)
        return self.inputs.index_select(0, rows), self.targets.index_select(0, rows)  # twice as fast as rows[...]


def batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`FeatureSet.__getitems__` already returns the batch."""
    return batch


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _names(found: list[str]) -> str:
    return ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")


def random_layer_types() -> tuple[type, ...]:
    """Dropout, and torchvision's stochastic depth: a model can only hold one if its module was imported."""
    stochastic_depth = sys.modules.get("torchvision.ops.stochastic_depth")
    return (_DropoutNd, stochastic_depth.StochasticDepth) if stochastic_depth else (_DropoutNd,)


def random_transforms(dataset: object) -> list[str]:
    """Random transforms anywhere in a data set's pipeline (through Subsets, Compose and RandomApply)."""
    found, seen, todo = [], set(), [dataset]
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen or isinstance(obj, (str, bytes, torch.Tensor)):
            continue
        seen.add(id(obj))
        name = type(obj).__name__
        if name.startswith("Random") or name in RANDOM_TRANSFORMS:
            found.append(name)
        for attr in ("dataset", "transform", "transforms", "target_transform"):
            child = getattr(obj, attr, None)
            todo.extend(child if isinstance(child, (list, tuple, nn.ModuleList)) else [child])
    return found


class PrefixCacheFeed(Feed):
    """The outputs of `net`'s first `blocks` blocks for every sample of the task, from `FeatureCache`."""

    def __init__(self, net: BlockNet, blocks: int, context: FeedContext) -> None:
        self.net = net
        self.blocks = blocks
        self.context = context
        self.prefix = nn.Sequential(*(net.blocks[b] for b in net.block_names[:blocks]))
        self.prefix_modules = [(f"blocks.{b}.{n}".rstrip("."), m) for b in net.block_names[:blocks]
                        for n, m in net.blocks[b].named_modules()]
        for reason in (self._nothing_stays_frozen(), self._moving_norm_layers(), self._random_layers(),
                       self._random_augmentation()):
            if reason:
                raise NotApplicable(f"strategy 'cached_prefix' cannot reuse the frozen prefix's outputs: {reason}")
        self._timer = make_timer(context.device)

    def _nothing_stays_frozen(self) -> str | None:
        if self.blocks:
            return None
        return ("no block stays frozen through every phase, so there is nothing to cache; keep at least "
                "freeze.depth=1 in the last phase, or use no_grad_forward")

    def _moving_norm_layers(self) -> str | None:
        """Norm layers whose output depends on the batch, or on statistics that training keeps updating."""
        batch_stats = [n for n, m in self.prefix_modules if isinstance(m, _BatchNorm) and not m.track_running_stats]
        if batch_stats:
            return (f"its norm layers {_names(batch_stats)} normalise by the statistics of each batch, so a sample's "
                    "output depends on its batch; use no_grad_forward")
        held = {id(m) for m in self.context.held_norms}
        moving = [n for n, m in self.prefix_modules if isinstance(m, _NormBase) and m.track_running_stats and id(m) not in held]
        if not moving:
            return None
        if self.context.norm_policy == "train":
            return (f"freeze.norm_policy=train keeps updating the statistics of its norm layers ({_names(moving)}) "
                    "every step, so its outputs change; pass freeze.norm_policy=eval, or use no_grad_forward")
        return (f"freeze.norm_policy=eval does not hold its norm layers {_names(moving)} in eval mode (it holds "
                "BatchNorm layers with parameters), so their statistics keep changing; use no_grad_forward")

    def _random_layers(self) -> str | None:
        random = [f"{n} (p={m.p})" for n, m in self.prefix_modules if isinstance(m, random_layer_types()) and m.p > 0]
        if not random:
            return None
        return (f"{_names(random)} in it draw new random masks every step; use no_grad_forward, or freeze fewer "
                "blocks (freeze.depth) so that they train")

    def _random_augmentation(self) -> str | None:
        random = random_transforms(self.context.task.train)
        if not random:
            return None
        return (f"the training data is randomly augmented ({_names(random)}), so the prefix sees different inputs "
                "every epoch; use no_grad_forward")

    def _splits(self) -> list[tuple[str, Dataset]]:
        return [(name, getattr(self.context.task, name)) for name in SPLITS]

    def _probe(self) -> tuple[Layout, torch.Size, int]:
        """(layout, input shape, forward FLOPs per sample) from one sample (FLOPs grow linearly with the batch)."""
        sample, _ = next(iter(DataLoader(self.context.task.train, batch_size=1)))
        with FlopCounterMode(display=False) as counter:
            out = self.prefix(sample.to(self.context.device))
        splits = tuple((name, len(dataset)) for name, dataset in self._splits())
        return Layout(splits, tuple(out.shape[1:]), str(out.dtype)), sample.shape[1:], counter.get_total_flops()

    def key(self, input_shape: torch.Size) -> str | None:
        """None when the task cannot say what determines its samples: such features are never shared."""
        if self.context.task.identity is None:
            return None
        device = self.context.device
        names = self.net.block_names[: self.blocks]
        described = {
            "blocks": names,
            "architecture_sha256": hashlib.sha256(repr(self.prefix).encode()).hexdigest(),
            "backbone_sha256_of_prefix": self.net.backbone_sha256(self.blocks),
            "data": self.context.task.identity,
            "input_shape": list(input_shape),
            "norm_policy": self.context.norm_policy,
            "device": device.type,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch": torch.__version__,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def _fill(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Every split in order, in batches of the evaluation batch size; device time of the forwards is timed."""
        row = 0
        for _, dataset in self._splits():
            for batch, labels in DataLoader(dataset, batch_size=EVAL_BATCH_SIZE):
                self._timer.start()
                out = self.prefix(batch.to(self.context.device))
                self._timer.stop()
                inputs[row : row + len(labels)] = out
                targets[row : row + len(labels)] = labels
                row += len(labels)

    def open(self, cache):
        device = self.context.device
        # Building must not move the training RNG (the loaders below draw a seed from it), nor the prefix's statistics.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                eval_mode(self.prefix):
            layout, input_shape, flops_per_sample = self._probe()
            fetched = (cache if cache is not None else FeatureCache()).fetch(self.key(input_shape), layout, self._fill)
        self.net.precomputed_prefix = self.blocks
        build_s = sum(self._timer.step_times_s())
        datasets = (FeatureSet(*fetched.features.split(name)) for name in SPLITS)
        metrics = {"cache_build_s": build_s, "cache_bytes": layout.nbytes,
                   "cache_prefix_flops": flops_per_sample * layout.rows,
                   "cache_built": float(fetched.built), "cache_spilled": float(fetched.spilled)}
        return Fed(*datasets, collate_fn=batch_as_is, build_s=build_s,
                   resident_bytes=0 if fetched.spilled else layout.nbytes, metrics=metrics)
