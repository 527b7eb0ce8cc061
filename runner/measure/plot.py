"""A dependency-free SVG plot of timing samples per round, so a learner (and an instructor)
can see noise, drift and outliers behind the medians. SVG in an <img> runs no script."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

_COLOURS = ("#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c")
_W, _H, _PAD = 640, 280, 48


def timeline_svg(*, series: Mapping[str, Sequence[float]], unit: str, title: str) -> str:
    values = [v for s in series.values() for v in s]
    if not values:
        raise ValueError("nothing to plot")
    low, high = min(values), max(values)
    if high == low:
        high = low + 1
    rounds = max(len(s) for s in series.values())

    def x(i: int) -> float:
        return _PAD + (_W - 2 * _PAD) * (i / max(1, rounds - 1))

    def y(v: float) -> float:
        return _H - _PAD - (_H - 2 * _PAD) * ((v - low) / (high - low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{_PAD}" y="20" font-size="14">{escape(title)}</text>',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#888"/>',
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#888"/>',
        f'<text x="4" y="{_PAD + 4}">{high:.4g}</text>',
        f'<text x="4" y="{_H - _PAD}">{low:.4g}</text>',
        f'<text x="{_W / 2}" y="{_H - 12}" text-anchor="middle">round ({escape(unit)} per '
        "call)</text>",
    ]
    for number, (name, samples) in enumerate(series.items()):
        colour = _COLOURS[number % len(_COLOURS)]
        dots = "".join(
            f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="1.6" fill="{colour}"/>'
            for i, v in enumerate(samples)
        )
        parts.append(dots)
        parts.append(
            f'<text x="{_W - _PAD - 140}" y="{_PAD + 16 * number}" fill="{colour}">'
            f"● {escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
