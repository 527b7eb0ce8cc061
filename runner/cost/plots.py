"""Dependency-free SVG plots for fleet plans (the project has no matplotlib): a cost vs
latency scatter with its Pareto front, and a day of load and replicas. The grader puts them
in its report (shown as images, which run no script) and the lab's notebook draws the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

_W, _H, _PAD = 640, 320, 56
_COLOURS = ("#1c7ed6", "#d9480f", "#2b8a3e", "#862e9c")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both),
    ordered by the first axis."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{_PAD}" y="20" font-size="14">{escape(title)}</text>',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#888"/>',
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#888"/>',
        f'<text x="{_W / 2}" y="{_H - 14}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="14" y="{_H / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_H / 2})">{escape(y_label)}</text>',
    ]


def _scale(low: float, high: float, out_low: float, out_high: float):
    if high <= low:
        high = low + 1
    return lambda v: out_low + (out_high - out_low) * (v - low) / (high - low)


def cost_latency_svg(
    *,
    points: Sequence[tuple[float, float, str]],
    highlight: Sequence[tuple[float, float, str]] = (),
    title: str,
    x_label: str = "p99 TPOT (ms)",
    y_label: str = "cost per day ($)",
) -> str:
    """Each (latency, cost, label) as a dot, the Pareto front joined by a line, and the
    `highlight` points (e.g. a learner's plans) as larger labelled marks."""
    everything = list(points) + list(highlight)
    if not everything:
        raise ValueError("nothing to plot")
    xs = [p[0] for p in everything]
    ys = [p[1] for p in everything]
    x = _scale(min(xs) * 0.95, max(xs) * 1.05, _PAD, _W - _PAD)
    y = _scale(min(ys) * 0.95, max(ys) * 1.05, _H - _PAD, _PAD)
    parts = _frame(title, x_label, y_label)
    parts.append(
        f'<text x="{_PAD - 4}" y="{_PAD + 4}" text-anchor="end">{max(ys) * 1.05:.4g}</text>'
    )
    parts.append(
        f'<text x="{_PAD - 4}" y="{_H - _PAD}" text-anchor="end">{min(ys) * 0.95:.4g}</text>'
    )
    parts.append(f'<text x="{_PAD}" y="{_H - _PAD + 16}">{min(xs) * 0.95:.4g}</text>')
    parts.append(
        f'<text x="{_W - _PAD}" y="{_H - _PAD + 16}" text-anchor="end">{max(xs) * 1.05:.4g}</text>'
    )
    front = [points[i] for i in pareto_front([(p[0], p[1]) for p in points])]
    if len(front) > 1:
        path = " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{_COLOURS[0]}"/>')
    for px, py, label in points:
        parts.append(
            f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="3" fill="{_COLOURS[0]}">'
            f"<title>{escape(label)}</title></circle>"
        )
    for px, py, label in highlight:
        parts.append(
            f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="6" fill="none" '
            f'stroke="{_COLOURS[1]}" stroke-width="2"/>'
            f'<text x="{x(px) + 8:.1f}" y="{y(py) - 8:.1f}" fill="{_COLOURS[1]}">'
            f"{escape(label)}</text>"
        )
    parts.append(
        f'<text x="{_W - _PAD}" y="{_PAD - 8}" text-anchor="end" fill="{_COLOURS[0]}">'
        "line: Pareto front (nothing is both cheaper and faster)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def day_svg(*, load: Sequence[float], replicas: Sequence[int], title: str) -> str:
    """24 hours: bars of replicas running (left axis) and a line of utilisation, load as a
    fraction of what the running replicas were planned to carry (right axis, 0-100%)."""
    if len(load) != len(replicas) or not load:
        raise ValueError("need one load and one replica count per hour")
    hours = len(load)
    top = max(replicas) or 1
    bar = (_W - 2 * _PAD) / hours
    y = _scale(0, top * 1.1, _H - _PAD, _PAD)
    u = _scale(0, 1.1, _H - _PAD, _PAD)
    parts = _frame(title, "hour of the day", "replicas (bars)")
    parts.append(f'<text x="{_PAD - 4}" y="{y(top) + 4:.1f}" text-anchor="end">{top}</text>')
    for hour, count in enumerate(replicas):
        left = _PAD + hour * bar
        parts.append(
            f'<rect x="{left + 1:.1f}" y="{y(count):.1f}" width="{bar - 2:.1f}" '
            f'height="{y(0) - y(count):.1f}" fill="#d0ebff"><title>{hour}:00 {count} '
            "replicas</title></rect>"
        )
        if hour % 3 == 0:
            parts.append(f'<text x="{left:.1f}" y="{_H - _PAD + 16}">{hour}</text>')
    line = " ".join(
        f"{_PAD + (h + 0.5) * bar:.1f},{u(min(1.1, load[h])):.1f}" for h in range(hours)
    )
    parts.append(f'<polyline points="{line}" fill="none" stroke="{_COLOURS[1]}" stroke-width="2"/>')
    parts.append(
        f'<text x="{_W - _PAD + 4}" y="{u(1.0) + 4:.1f}" fill="{_COLOURS[1]}">100%</text>'
        f'<line x1="{_PAD}" y1="{u(1.0):.1f}" x2="{_W - _PAD}" y2="{u(1.0):.1f}" '
        f'stroke="{_COLOURS[1]}" stroke-dasharray="4 4"/>'
        f'<text x="{_W - _PAD}" y="{_PAD - 8}" text-anchor="end" fill="{_COLOURS[1]}">'
        "line: utilisation (load / planned per-replica load)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
