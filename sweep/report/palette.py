"""One colour and one marker per strategy, the same in every plot, table and report."""

from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib import colormaps
from matplotlib.colors import to_hex

from sweep.report.records import strategy_order
from sweep.strategies import MECHANISMS

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


@dataclass(frozen=True)
class Style:
    color: str  # hex, usable by matplotlib and CSS alike
    marker: str


def styles(strategies: Sequence[str]) -> dict[str, Style]:
    """Keyed by the registry's order, so a strategy keeps its colour whatever else a report holds."""
    colors = colormaps["tab10"].colors
    slots = [*MECHANISMS.names(), *(s for s in strategy_order(strategies) if s not in MECHANISMS)]
    return {s: Style(to_hex(colors[slots.index(s) % len(colors)]), MARKERS[slots.index(s) % len(MARKERS)])
            for s in strategies}
