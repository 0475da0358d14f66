"""Which parameters are frozen: by depth, block names, block indices or a regex.

The result is a `FrozenSet`: the frozen parameter names plus the modules whose
own parameters are all frozen (their buffers are the "frozen buffers", their
norm layers the ones the norm policy holds in eval mode).
"""

import re
from dataclasses import dataclass, field

from torch import nn

from sweep.blocknet import HEAD, BlockNet
from sweep.errors import ConfigError


@dataclass(frozen=True)
class Selection:
    """What the user asked to freeze; the fields are combined as a union."""

    depth: int | None = None
    names: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    regex: str | None = None

    def is_empty(self) -> bool:
        return not (self.depth or self.names or self.indices or self.regex)

    def describe(self) -> str:
        """In the config's own terms, e.g. `depth=2` or `names=conv1,conv3 regex=fc`: an MLflow param and tag."""
        parts = [f"depth={self.depth}"] if self.depth else []
        parts += [f"names={','.join(self.names)}"] if self.names else []
        parts += [f"indices={','.join(map(str, self.indices))}"] if self.indices else []
        parts += [f"regex={self.regex}"] if self.regex else []
        return " ".join(parts) or "nothing"


@dataclass
class FrozenSet:
    param_names: set[str] = field(default_factory=set)
    blocks: list[str] = field(default_factory=list)  # blocks whose parameters are all frozen

    def __bool__(self) -> bool:
        return bool(self.param_names)

    def frozen_modules(self, net: nn.Module) -> dict[str, nn.Module]:
        """Modules that own parameters, all of them frozen."""
        found = {}
        for module_name, module in net.named_modules():
            own = [f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)]
            if own and all(name in self.param_names for name in own):
                found[module_name] = module
        return found

    def loose_params(self, net: BlockNet) -> list[str]:
        """Frozen parameters outside the wholly frozen blocks: where a selection cuts a block in two."""
        return [name for unit, name, _ in net.named_unit_parameters()
                if name in self.param_names and unit not in self.blocks]

    def prefix_length(self, net: BlockNet) -> int | None:
        """k if exactly the first k blocks are frozen, else None."""
        k = len(self.blocks)
        return k if self.blocks == net.block_names[:k] and not self.loose_params(net) else None


def _block_for_index(net: BlockNet, index: int) -> str:
    names = net.block_names
    if not -len(names) <= index < len(names):
        raise ConfigError(f"freeze.indices: {index} is out of range for {len(names)} blocks {names}")
    return names[index]


def resolve(net: BlockNet, selection: Selection) -> FrozenSet:
    """Turn a `Selection` into the concrete frozen parameters of `net`."""
    names = net.block_names
    chosen: list[str] = []
    if selection.depth is not None:
        if not 0 <= selection.depth <= len(names):
            raise ConfigError(f"freeze.depth={selection.depth} is out of range: the model has {len(names)} blocks {names}")
        chosen += names[: selection.depth]
    for name in selection.names:
        if name == HEAD:
            raise ConfigError("freeze.names: the head is the new layer being trained and cannot be frozen; "
                              f"choose among the blocks: {', '.join(names)}")
        if name not in names:
            raise ConfigError(f"freeze.names: unknown block {name!r}; choose among: {', '.join(names)}")
        chosen.append(name)
    chosen += [_block_for_index(net, i) for i in selection.indices]

    frozen = {name for unit, name, _ in net.named_unit_parameters() if unit in chosen}
    if selection.regex:
        try:
            pattern = re.compile(selection.regex)
        except re.error as err:
            raise ConfigError(f"freeze.regex {selection.regex!r} is not a valid regular expression: {err}") from None
        frozen |= {name for unit, name, _ in net.named_unit_parameters() if unit != HEAD and pattern.search(name)}

    by_unit: dict[str, list[str]] = {}
    for unit, name, _ in net.named_unit_parameters():
        by_unit.setdefault(unit, []).append(name)
    blocks = [b for b in names if by_unit.get(b) and all(p in frozen for p in by_unit[b])]
    return FrozenSet(param_names=frozen, blocks=blocks)
