"""The model adapter: any network as an ordered list of named blocks plus a head.

Selection, learning-rate splits and `no_grad_forward` all speak in terms of
these blocks, so "freeze the first two blocks" means the same thing for the
digits CNN, a ResNet or a ViT.
"""

import hashlib
from collections.abc import Iterator

import torch
from torch import nn

HEAD = "head"


class BlockNet(nn.Module):
    """Runs `blocks` in order, then `head`.

    `no_grad_prefix` blocks at the front run under `torch.no_grad()`: that is
    how a user writes "don't even build the graph through the frozen backbone".
    The first `precomputed_prefix` of them (never more) do not run at all: the
    input already is their output, computed once before training (`cached_prefix`).
    """

    def __init__(self, blocks: list[tuple[str, nn.Module]], head: nn.Module) -> None:
        super().__init__()
        names = [name for name, _ in blocks]
        if HEAD in names or len(set(names)) != len(names):
            raise ValueError(f"block names must be unique and not {HEAD!r}: {names}")
        self.blocks = nn.ModuleDict(blocks)
        self.head = head
        self.no_grad_prefix = 0
        self.precomputed_prefix = 0

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = list(self.blocks.values())
        with torch.no_grad():
            for block in blocks[self.precomputed_prefix : self.no_grad_prefix]:
                x = block(x)
        for block in blocks[self.no_grad_prefix :]:
            x = block(x)
        return self.head(x)

    def unit_names(self) -> list[str]:
        """Blocks then the head: the units lr splits assign rates to."""
        return [*self.block_names, HEAD]

    def unit(self, name: str) -> nn.Module:
        return self.head if name == HEAD else self.blocks[name]

    def named_unit_parameters(self) -> Iterator[tuple[str, str, nn.Parameter]]:
        """(unit, full parameter name, parameter) for every parameter, in forward order."""
        for unit in self.unit_names():
            prefix = HEAD if unit == HEAD else f"blocks.{unit}"
            for name, param in self.unit(unit).named_parameters(prefix=prefix):
                yield unit, name, param

    def replace_head(self, head: nn.Module) -> None:
        self.head = head

    def backbone_sha256(self, blocks: int | None = None) -> str:
        """sha256 of the blocks' state (names, dtypes, shapes, values): which weights a trial started from, so
        trials are only compared when they started from the same ones. Of the first `blocks` blocks only, when
        given: what a cache of their outputs depends on."""
        digest = hashlib.sha256()
        for block in self.block_names[:blocks]:
            for name, tensor in self.blocks[block].state_dict(prefix=f"{block}.").items():
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(flat.view(torch.uint8).numpy())
        return digest.hexdigest()
