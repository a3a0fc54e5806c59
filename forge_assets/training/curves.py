"""Loss curves people can look at: a text chart for the asset's Markdown metadata, and thinned points for the UI.

Written by hand on purpose: the chart must render in Dagster's Markdown metadata (a fenced text block; images and
HTML are not rendered there), and a plotting library (matplotlib) would be a heavy dependency for 40 lines.
"""

from __future__ import annotations

import math

MARKS = {"train": "·", "valid": "o"}


def thin(curve: list[list[float]], n: int = 60) -> list[list[float]]:
    """At most n points of a curve, evenly spread, always keeping the first and the last."""
    if len(curve) <= n:
        return [list(p) for p in curve]
    idx = sorted({round(i * (len(curve) - 1) / (n - 1)) for i in range(n)})
    return [list(curve[i]) for i in idx]


def text_chart(series: dict[str, list[list[float]]], width: int = 64, height: int = 14, title: str = "loss") -> str:
    """A Markdown fenced block plotting each series (x = step, y = loss) on shared axes, with a legend."""
    points = [(x, y) for curve in series.values() for x, y in curve if y is not None and math.isfinite(y)]
    if not points:
        return "(no curve)"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    xs = max(x1 - x0, 1)
    grid = [[" "] * width for _ in range(height)]
    for name, curve in series.items():
        mark = MARKS.get(name, name[:1])
        for x, y in curve:
            if y is None or not math.isfinite(y):
                continue
            col = round((x - x0) / xs * (width - 1))
            row = height - 1 - round((y - y0) / (y1 - y0) * (height - 1))
            grid[row][col] = mark
    label_w = max(len(f"{y1:.3f}"), len(f"{y0:.3f}"))
    lines = [f"{title} by step"]
    for r, cells in enumerate(grid):
        y = round(y1 - r * (y1 - y0) / (height - 1), 6) + 0.0  # no "-0.000"
        label = f"{y:.3f}" if r in (0, height // 2, height - 1) else ""
        lines.append(f"{label:>{label_w}} |{''.join(cells)}")
    lines.append(" " * label_w + " +" + "-" * width)
    lines.append(" " * label_w + f"  {x0:<{width // 2}g}{x1:>{width - width // 2}g}")
    lines.append("legend: " + ", ".join(f"{MARKS.get(n, n[:1])} {n}" for n in series))
    return "```\n" + "\n".join(lines) + "\n```"
