"""The usage chart, drawn on the server as SVG. Pure: numbers in, markup out.

A bar per UTC day (requests, with the failed part in a second colour), a few labelled
grid lines, and a ``<title>`` on each bar for a pointer's tooltip. The SVG scales to its
container (``viewBox``), so it reads at 360 px as at 1440 px. It carries no script and
no style attribute (a strict CSP allows it as it is); colours come from the stylesheet's
classes. Every label is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 12, 36


@dataclass(frozen=True)
class Bar:
    label: str  # a UTC day, YYYY-MM-DD
    value: int  # requests
    part: int  # of which failed


def _nice_ceiling(value: int) -> int:
    """The smallest of 4, 8, 20 x 10^n at least ``value``: four grid steps of 1, 2 or 5 x 10^n."""
    step = 1
    while True:
        for factor in (4, 8, 20):
            if step * factor >= value:
                return step * factor
        step *= 10


def _rect(kind: str, x: float, y: float, width: float, height: float, tip: str) -> str:
    return f'<rect class="{kind}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}"><title>{tip}</title></rect>'


def bar_chart(bars: Sequence[Bar], *, title: str) -> str:
    """An SVG bar chart of ``bars`` (in order), described by ``title`` for screen readers."""
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _nice_ceiling(max([4, *(bar.value for bar in bars)]))  # at least 4: whole numbers on the 4 grid lines
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{escape(title)}</title>',
    ]
    for i in range(5):
        value = top * i / 4
        y = TOP + inner_h - inner_h * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:g}</text>')
    if not bars:
        middle = f'x="{LEFT + inner_w / 2}" y="{TOP + inner_h / 2}" text-anchor="middle"'
        parts.append(f'<text class="axis" {middle}>No requests in this range</text>')
    slot = inner_w / max(len(bars), 1)
    width = max(1.0, slot * 0.7)
    every = max(1, round(len(bars) / 8))  # at most about 8 day labels
    for index, bar in enumerate(bars):
        x = LEFT + index * slot + (slot - width) / 2
        height = inner_h * bar.value / top
        failed = inner_h * bar.part / top
        label = escape(bar.label)
        tip = f"{label}: {bar.value} requests, {bar.part} failed"
        parts.append(_rect("bar", x, TOP + inner_h - height, width, height, tip))
        if bar.part:
            parts.append(_rect("bar-failed", x, TOP + inner_h - failed, width, failed, tip))
        if index % every == 0:
            where = f'x="{x + width / 2:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle"'
            parts.append(f'<text class="axis" {where}>{label[5:]}</text>')
    parts.append("</svg>")
    return "".join(parts)
