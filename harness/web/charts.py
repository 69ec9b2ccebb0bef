"""Charts drawn on the server as SVG geometry: stacked daily bars and budget bars.

Functions here turn numbers into shapes (coordinates, colours, labels) for the templates to
draw; they read nothing. A series keeps its colour everywhere (its place in sorted order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

__all__ = ["PALETTE", "Bar", "BudgetBar", "StackedChart", "budget_bar", "colour", "stacked"]

# distinguishable on white, also for the common colour-vision deficiencies (Okabe-Ito + more)
PALETTE = (
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9",
    "#d55e00", "#7a5195", "#8c8c3a", "#3d6d8c", "#b0503c",
)  # fmt: skip

WIDTH, HEIGHT = 960, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 14, 34  # plot margins


def colour(name: str, names: Sequence[str]) -> str:
    """The colour of series ``name`` among ``names`` (sorted: stable across pages)."""
    ordered = sorted(names)
    return PALETTE[ordered.index(name) % len(PALETTE)] if name in ordered else "#888888"


@dataclass(frozen=True)
class Bar:
    """One segment of a stacked bar: a series' value on a day."""

    series: str
    day: str
    value: float
    x: float
    y: float
    width: float
    height: float
    colour: str


@dataclass(frozen=True)
class StackedChart:
    """A stacked bar chart: bars grouped by series, axis ticks and day labels."""

    width: int
    height: int
    series: list[tuple[str, str, list[Bar]]]  # (name, colour, its bars)
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_labels: list[tuple[float, str]]  # (x, label)
    plot: tuple[float, float, float, float]  # left, top, right, bottom
    total: float
    empty: bool = field(default=False)


def days_between(first: str, last: str) -> list[str]:
    """Every ISO date from ``first`` to ``last`` inclusive."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (> 0)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


def short_number(value: float) -> str:
    """``1.2M``, ``35k``, ``900``: axis labels that fit."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def stacked(
    days: Sequence[str],
    values: Mapping[str, Mapping[str, float]],
    palette: Sequence[str] = (),
) -> StackedChart:
    """Bars for ``days`` (ISO dates, in order) stacking ``values[series][day]``; a series
    with nothing to show is left out. Colours follow ``palette`` (every name that could
    appear, e.g. the whole team), so a series has the same colour on every page."""
    everyone = sorted({*palette, *values})
    names = [n for n in everyone if any(values.get(n, {}).get(d, 0.0) > 0 for d in days)]
    totals = [sum(values[n].get(d, 0.0) for n in names) for d in days]
    top = nice_ceiling(max(totals, default=0.0))
    left, right, plot_top, bottom = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    slot = (right - left) / max(len(days), 1)
    bar_w = max(slot * 0.72, 1.0)
    scale = (bottom - plot_top) / top
    base = [float(bottom)] * len(days)
    series = []
    for name in names:
        bars = []
        for i, day in enumerate(days):
            v = float(values[name].get(day, 0.0))
            if v <= 0:
                continue
            h = v * scale
            base[i] -= h
            x = left + i * slot + (slot - bar_w) / 2
            bars.append(Bar(name, day, v, round(x, 2), round(base[i], 2), round(bar_w, 2),
                            round(h, 2), colour(name, everyone)))  # fmt: skip
        series.append((name, colour(name, everyone), bars))
    ticks = [(round(bottom - top * k / 4 * scale, 2), short_number(top * k / 4)) for k in range(5)]
    every = max(1, math.ceil(len(days) / 10))
    labels = [(round(left + i * slot + slot / 2, 2), d[5:]) for i, d in enumerate(days)
              if i % every == 0 or i == len(days) - 1]  # fmt: skip
    return StackedChart(WIDTH, HEIGHT, series, ticks, labels, (left, plot_top, right, bottom),
                        sum(totals), empty=not any(totals))  # fmt: skip


@dataclass(frozen=True)
class BudgetBar:
    """Today's use of a daily budget, as widths in percent of the bar (used + left = 100)."""

    used_pct: float
    left_pct: float
    over: bool
    label: str
    bounded: bool


def budget_bar(used: float, budget: float | None, *, money: bool = False) -> BudgetBar:
    """How much of ``budget`` is used; without a budget, a bar that says so."""

    def show(x: float) -> str:
        return f"${x:,.4f}" if money else f"{x:,.0f}"

    if not budget:
        return BudgetBar(0.0, 100.0, False, f"{show(used)} (no daily budget)", False)
    share = min(used / budget, 1.0) * 100
    label = f"{show(used)} of {show(budget)} ({100 * used / budget:.1f}%)"
    return BudgetBar(round(share, 2), round(100 - share, 2), used >= budget, label, True)
