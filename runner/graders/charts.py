"""Grouped bar charts as plain SVG, for result pages (no plotting library on worker nodes).

    svg = bars_svg(
        "Decode tokens/s", groups=["batch 1", "batch 32"],
        series={"bf16": [30.1, 1116], "int4": [31.8, 1286]}, unit="tok/s",
    )

A missing value (None) leaves its bar out and writes "n/a" in its place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

WIDTH, HEIGHT = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 56
COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2")


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def bars_svg(
    title: str,
    *,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    unit: str = "",
) -> str:
    """One group of bars per entry of `groups`, one bar per series in each, all from zero."""
    names = list(series)
    if not groups or not names:
        raise ValueError("a bar chart needs at least one group and one series")
    for name in names:
        if len(series[name]) != len(groups):
            raise ValueError(
                f"series {name!r} has {len(series[name])} values for {len(groups)} groups"
            )
    values = [v for name in names for v in series[name] if v is not None]
    low = min([0.0, *values])
    high = max([0.0, *values]) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(value: float) -> float:
        return TOP + plot_h * (high - value) / (high - low)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{y(0):.1f}" x2="{WIDTH - RIGHT}" y2="{y(0):.1f}" stroke="#333"/>',
        f'<text x="12" y="{TOP + plot_h / 2}" transform="rotate(-90 12 {TOP + plot_h / 2})" '
        f'text-anchor="middle">{escape(unit)}</text>',
    ]
    group_w = plot_w / len(groups)
    bar_w = group_w * 0.8 / len(names)
    for g, group in enumerate(groups):
        x0 = LEFT + g * group_w + group_w * 0.1
        for s, name in enumerate(names):
            value = series[name][g]
            x = x0 + s * bar_w
            if value is None:
                out.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{y(0) - 4:.1f}" text-anchor="middle" '
                    f'fill="#777">n/a</text>'
                )
                continue
            top, bottom = sorted((y(value), y(0)))
            out.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w * 0.9:.1f}" '
                f'height="{max(bottom - top, 0.5):.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                f"<title>{escape(name)}, {escape(group)}: {_label(value)} {escape(unit)}</title>"
                f"</rect>",
            )
            out.append(
                f'<text x="{x + bar_w * 0.45:.1f}" y="{top - 3:.1f}" text-anchor="middle">'
                f"{_label(value)}</text>"
            )
        out.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{escape(group)}</text>'
        )
    legend_x = LEFT
    for s, name in enumerate(names):
        out.append(
            f'<rect x="{legend_x}" y="{HEIGHT - 22}" width="10" height="10" '
            f'fill="{COLOURS[s % len(COLOURS)]}"/>'
            f'<text x="{legend_x + 14}" y="{HEIGHT - 13}">{escape(name)}</text>'
        )
        legend_x += 20 + 7 * len(name)
    out.append("</svg>")
    return "\n".join(out)
