"""Grids over what to freeze: `search.grid='{freeze.depth:[0,1,2,3,4]}'`, one study per point and strategy.

A grid maps freeze keys to lists of values; its points are their cross product,
each fixing those keys in the trial configuration. Every strategy that freezes
gets a study per point (named `<experiment>.<strategy>.<lr split>@<point>`), all
paired on the same seeds, trials and repeats alike, so the report can draw each
strategy's accuracy and cost against the axis: Yosinski et al.'s transfer curve
when the axis is depth. A point that freezes nothing is `full_finetune` for every
mechanism (with nothing frozen they all train the same model, and a mechanism
refuses an empty selection on its own), so it is not run once per mechanism:
`full_finetune`'s study, which the freeze keys do not touch, stands for it.
"""

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sweep.config import selection, with_values
from sweep.schema import shown


def _show(value: Any) -> str:
    """A value as the command line writes it: 2, [conv1,conv2], null, eval."""
    if isinstance(value, list):
        return f"[{','.join(_show(v) for v in value)}]"
    return shown(value)


@dataclass(frozen=True)
class GridPoint:
    """The grid's keys fixed to one value each; the empty point is "no grid"."""

    values: tuple[tuple[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.values)

    @property
    def label(self) -> str:
        """`freeze.depth=2`, `freeze.depth=2,freeze.norm_policy=eval`: names its study."""
        return ",".join(f"{key}={_show(value)}" for key, value in self.values)

    @property
    def short(self) -> str:
        """`depth=2`: the label without the `freeze.` every grid key starts with, for tables."""
        return ",".join(f"{key.removeprefix('freeze.')}={_show(value)}" for key, value in self.values)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def apply(self, config: dict[str, Any]) -> dict[str, Any]:
        return with_values(config, self.as_dict())

    def freezes_nothing(self, config: dict[str, Any]) -> bool:
        return selection(self.apply(config)["freeze"]).is_empty()


@dataclass(frozen=True)
class Grid:
    """`search.grid` resolved to its points, in the order the axes were given (the last varying fastest)."""

    axes: dict[str, list[Any]]

    @classmethod
    def from_config(cls, section: dict[str, list[Any]] | None) -> "Grid":
        """`section`: search.grid as `sweep.schema` checked it (freeze keys, values of their types), or None."""
        return cls(dict(section or {}))

    def __bool__(self) -> bool:
        return bool(self.axes)

    @property
    def points(self) -> list[GridPoint]:
        if not self.axes:
            return [GridPoint()]
        return [GridPoint(tuple(zip(self.axes, combination))) for combination in itertools.product(*self.axes.values())]

    def as_tag(self) -> str:
        return json.dumps(self.axes)

    def freezing_nothing(self, config: dict[str, Any]) -> list[GridPoint]:
        return [p for p in self.points if p and p.freezes_nothing(config)]

    def units(self, strategies: Sequence[str], config: dict[str, Any], freezes: Callable[[str], bool],
              baseline: str) -> list[tuple[str, GridPoint]]:
        """The (strategy, point) pairs that get a study: every freezing strategy at every point that freezes
        something; the baseline once, without a point, if it was asked for or stands for a point."""
        if not self.axes:
            return [(strategy, GridPoint()) for strategy in strategies]
        empty = self.freezing_nothing(config)
        units = [(s, p) for s in strategies if freezes(s) for p in self.points if p not in empty]
        if baseline in strategies or empty:
            units.append((baseline, GridPoint()))
        return units
