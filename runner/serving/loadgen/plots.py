"""Dependency-free SVG plots of load runs (the project has no matplotlib): latency CDFs of
one or several runs (TTFT, TPOT, E2EL side by side) and, for a sweep, throughput and p99
TTFT against the offered request rate. SVG shown as an image runs no script; every label
is escaped, since run names may come from users.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape

import numpy as np

from runner.serving.loadgen.metrics import RequestOutput
from runner.serving.loadgen.sweep import SweepPoint

_COLOURS = ("#1c7ed6", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#495057")
_PANEL_W, _PANEL_H, _PAD, _TOP = 320, 260, 48, 56
_CDF_POINTS = 200  # a CDF of many samples is drawn through this many quantiles


def _scale(low: float, high: float, out_low: float, out_high: float) -> Callable[[float], float]:
    if high <= low:
        high = low + 1
    return lambda v: out_low + (out_high - out_low) * (v - low) / (high - low)


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{_PAD}" y="20" font-size="14">{escape(title)}</text>',
    ]


def _axes(
    left: float, x_max: float, y_max: float, *, x_label: str, y_label: str, title: str
) -> list[str]:
    right, top, bottom = left + _PANEL_W - _PAD, _TOP, _TOP + _PANEL_H - _PAD
    return [
        f'<text x="{left}" y="{top - 8}" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#888"/>',
        f'<text x="{left}" y="{bottom + 14}" text-anchor="middle">0</text>',
        f'<text x="{right}" y="{bottom + 14}" text-anchor="middle">{x_max:.4g}</text>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y_max:.4g}</text>',
        f'<text x="{(left + right) / 2}" y="{bottom + 30}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text x="{left - 34}" y="{(top + bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {left - 34} {(top + bottom) / 2})">{escape(y_label)}</text>',
    ]


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    return [
        f'<text x="{x + 150 * i}" y="{y}" fill="{_COLOURS[i % len(_COLOURS)]}">'
        f"● {escape(name)}</text>"
        for i, name in enumerate(names)
    ]


def _cdf_points(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(np.asarray(values, dtype=float))
    if len(ordered) > _CDF_POINTS:
        levels = np.linspace(0, 1, _CDF_POINTS + 1)
        return np.quantile(ordered, levels), levels
    # The empirical CDF as steps: up by 1/n at each sample.
    n = len(ordered)
    xs = np.repeat(ordered, 2)
    ys = np.repeat(np.arange(n + 1) / n, 2)[1:-1]
    return xs, ys


def latency_cdf_svg(
    runs: Mapping[str, Sequence[RequestOutput]], *, title: str = "Latency CDFs"
) -> str:
    """One CDF per run (name -> its outputs, e.g. {"static": r1.outputs, "continuous":
    r2.outputs}) on each of three panels: TTFT, TPOT and E2EL in ms, completed requests."""
    if not runs:
        raise ValueError("nothing to plot")
    extractors: list[tuple[str, Callable[[RequestOutput], float | None]]] = [
        ("TTFT", lambda o: o.ttft_s if o.success else None),
        ("TPOT", lambda o: o.tpot_s),
        ("E2EL", lambda o: o.e2el_s if o.success else None),
    ]
    width = _PAD + 3 * _PANEL_W
    parts = _svg_open(width, _TOP + _PANEL_H + 20, title)
    parts += _legend(list(runs), _PAD + 200, 20)
    for number, (metric, extract) in enumerate(extractors):
        left = _PAD + number * _PANEL_W
        samples = {
            name: [v * 1000 for o in outputs if (v := extract(o)) is not None]
            for name, outputs in runs.items()
        }
        x_max = max((max(s) for s in samples.values() if s), default=1.0)
        parts += _axes(
            left,
            x_max,
            1.0,
            x_label=f"{metric} (ms)",
            y_label="fraction of requests",
            title=metric,
        )
        x = _scale(0, x_max, left, left + _PANEL_W - _PAD)
        y = _scale(0, 1, _TOP + _PANEL_H - _PAD, _TOP)
        for i, (name, values) in enumerate(samples.items()):
            if not values:
                continue
            xs, ys = _cdf_points(values)
            path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(xs, ys, strict=True))
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{_COLOURS[i % len(_COLOURS)]}" '
                f'stroke-width="1.5"><title>{escape(name)}: {escape(metric)}, '
                f"{len(values)} samples</title></polyline>"
            )
    parts.append("</svg>")
    return "".join(parts)


def sweep_svg(
    points: Sequence[SweepPoint],
    *,
    slo: Mapping[str, float] | None = None,
    title: str = "Request rate sweep",
) -> str:
    """Output token throughput and p99 TTFT against the offered request rate; filled dots
    met the SLO, open ones did not; a p99_ttft_ms bound in `slo` is drawn dashed."""
    if not points:
        raise ValueError("nothing to plot")
    ordered = sorted(points, key=lambda p: p.rate)
    rate_max = max(p.rate for p in ordered)
    panels = [
        ("output_throughput", "Output throughput", "tok/s"),
        ("p99_ttft_ms", "p99 TTFT", "ms"),
    ]
    width = _PAD + 2 * _PANEL_W
    parts = _svg_open(width, _TOP + _PANEL_H + 20, title)
    parts.append(
        f'<text x="{width - 10}" y="20" text-anchor="end">filled: met the SLO; open: missed</text>'
    )
    for number, (key, name, unit) in enumerate(panels):
        left = _PAD + number * _PANEL_W
        known = [(p, p.summary.get(key)) for p in ordered]
        known = [(p, v) for p, v in known if v is not None]
        bound = (slo or {}).get(key)
        y_max = max([v for _, v in known] + ([bound] if bound is not None else []), default=1.0)
        y_max = y_max * 1.1 or 1.0
        parts += _axes(
            left,
            rate_max,
            y_max,
            x_label="offered request rate (req/s)",
            y_label=f"{name} ({unit})",
            title=name,
        )
        x = _scale(0, rate_max, left, left + _PANEL_W - _PAD)
        y = _scale(0, y_max, _TOP + _PANEL_H - _PAD, _TOP)
        colour = _COLOURS[number]
        if len(known) > 1:
            path = " ".join(f"{x(p.rate):.1f},{y(v):.1f}" for p, v in known)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        for p, v in known:
            fill = colour if p.met else "white"
            parts.append(
                f'<circle cx="{x(p.rate):.1f}" cy="{y(v):.1f}" r="4" fill="{fill}" '
                f'stroke="{colour}"><title>{p.rate:.4g} req/s: {v:.4g} {escape(unit)}'
                f"</title></circle>"
            )
        if bound is not None:
            parts.append(
                f'<line x1="{left}" y1="{y(bound):.1f}" x2="{left + _PANEL_W - _PAD}" '
                f'y2="{y(bound):.1f}" stroke="#c92a2a" stroke-dasharray="4 4"/>'
                f'<text x="{left + _PANEL_W - _PAD}" y="{y(bound) - 4:.1f}" text-anchor="end" '
                f'fill="#c92a2a">SLO {bound:g} {escape(unit)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
