"""Inline SVG charts for the instructor pages, built on the server from plain numbers.

Pure functions: plain data in, an SVG string out (no queries, no JavaScript; the same
approach as labs/fleet.py's sparklines). Every label passes through format_html, so a lab
title or criterion name is text, never markup. Each chart is a role="img" with an
aria-label summary; the page puts a table of the same numbers beside it. Colour is never the
only signal: segments and bars carry their numbers as text, and the legend names each colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from django.utils.html import format_html
from django.utils.safestring import SafeString

WIDTH = 640
LABEL_W = 180  # room for the row labels on the left of horizontal bars
ROW_H = 22
GAP = 6


def _html(template: str, **values: object) -> SafeString:
    """format_html with coordinates rounded to one decimal; text values are escaped."""
    return format_html(
        template,
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in values.items()},
    )


def _svg(*, height: int, summary: str, body: SafeString, width: int = WIDTH) -> SafeString:
    return _html(
        '<svg class="chart" viewBox="0 0 {w} {h}" width="100%" preserveAspectRatio="xMinYMin meet" '
        'role="img" aria-label="{summary}"><title>{summary}</title>{body}</svg>',
        w=width,
        h=height,
        summary=summary,
        body=body,
    )


def _join(parts: list[SafeString]) -> SafeString:
    return SafeString("".join(parts))


def _short(label: str, length: int = 26) -> str:
    return label if len(label) <= length else label[: length - 1] + "…"


def stacked_bars(
    rows: Sequence[tuple[str, Sequence[tuple[str, str, int]]]], *, summary: str
) -> SafeString:
    """One horizontal bar per row, `(label, [(css_class, word, count), ...])`, each segment's
    width its share of the row's total and its count written on it; a legend under the bars
    names each class's word."""
    bar_w = WIDTH - LABEL_W - 10
    parts: list[SafeString] = []
    for i, (label, segments) in enumerate(rows):
        y = i * (ROW_H + GAP)
        parts.append(
            _html(
                '<text class="chart-label" x="{x}" y="{ty}" text-anchor="end">{label}</text>',
                x=LABEL_W - 6,
                ty=y + ROW_H - 6,
                label=_short(label),
            )
        )
        total = sum(count for _, _, count in segments)
        x = float(LABEL_W)
        for css, word, count in segments:
            if not count or not total:
                continue
            w = count / total * bar_w
            parts.append(
                _html(
                    '<g class="seg seg-{css}"><title>{label}: {word} {count}</title>'
                    '<rect x="{x}" y="{y}" width="{w}" height="{h}"/>'
                    '<text x="{tx}" y="{ty}" text-anchor="middle">{count}</text></g>',
                    css=css,
                    label=label,
                    word=word,
                    count=count,
                    x=x,
                    y=y,
                    w=w,
                    h=ROW_H,
                    tx=x + w / 2,
                    ty=y + ROW_H - 6,
                )
            )
            x += w
    top = len(rows) * (ROW_H + GAP) + 4
    legend = rows[0][1] if rows else []
    per_row = 3  # three entries a line: six side by side do not fit their words in WIDTH
    for i, (css, word, _) in enumerate(legend):
        lx = 10 + (i % per_row) * (WIDTH - 10) // per_row
        ly = top + (i // per_row) * 18
        parts.append(
            _html(
                '<g class="seg seg-{css}"><rect x="{x}" y="{y}" width="12" height="12"/></g>'
                '<text class="chart-legend" x="{tx}" y="{ty}">{word}</text>',
                css=css,
                x=lx,
                y=ly,
                tx=lx + 16,
                ty=ly + 11,
                word=word,
            )
        )
    lines = -(-len(legend) // per_row)
    return _svg(height=top + 18 * lines + 2, summary=summary, body=_join(parts))


def percent_bars(bars: Sequence[tuple[str, float | None]], *, summary: str) -> SafeString:
    """One horizontal bar per `(label, percent)` on a 0-100 scale, the percent written beside
    it; None (nothing evaluated) is written as "no data" with no bar."""
    bar_w = WIDTH - LABEL_W - 60
    parts: list[SafeString] = []
    for i, (label, percent) in enumerate(bars):
        y = i * (ROW_H + GAP)
        w = 0.0 if percent is None else max(0.0, min(percent, 100.0)) / 100 * bar_w
        parts.append(
            _html(
                '<text class="chart-label" x="{lx}" y="{ty}" text-anchor="end">{label}</text>'
                '<rect class="bar-track" x="{x}" y="{y}" width="{bw}" height="{h}"/>'
                '<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}"/>'
                '<text class="chart-value" x="{vx}" y="{ty}">{value}</text>',
                lx=LABEL_W - 6,
                ty=y + ROW_H - 6,
                label=_short(label),
                x=LABEL_W,
                y=y,
                bw=bar_w,
                w=w,
                h=ROW_H,
                vx=LABEL_W + bar_w + 6,
                value="no data" if percent is None else f"{percent:.0f}%",
            )
        )
    return _svg(height=max(len(bars), 1) * (ROW_H + GAP), summary=summary, body=_join(parts))


def log_bins(low: float = 0.25, high: float = 64.0) -> list[float]:
    """Bin edges at powers of two from `low` to `high` (speedups are ratios)."""
    edges = [low]
    while edges[-1] < high:
        edges.append(edges[-1] * 2)
    return edges


def bin_counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]); values outside go into the first or last bin."""
    counts = [0] * (len(edges) - 1)
    for value in values:
        index = sum(1 for edge in edges[1:-1] if value >= edge)
        counts[index] += 1
    return counts


def histogram(
    counts: Sequence[int],
    edges: Sequence[float],
    *,
    markers: Sequence[tuple[float, str]] = (),
    summary: str,
    height: int = 140,
) -> SafeString:
    """Vertical bars over log-spaced `edges` (equal widths on a log axis), each count written
    over its bar, edge values under the axis, and each `(value, label)` marker as a dashed
    vertical line at its place on the same log scale."""
    left, bottom, top = 30, height - 20, 14
    plot_w = WIDTH - left - 10
    n = len(counts)
    step = plot_w / n if n else plot_w
    high = max(counts, default=0) or 1
    parts: list[SafeString] = [
        _html(
            '<line class="axis" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}"/>',
            x1=left,
            x2=left + plot_w,
            y=bottom,
        )
    ]
    for i, count in enumerate(counts):
        h = count / high * (bottom - top - 12)
        x = left + i * step
        parts.append(
            _html(
                '<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}"/>'
                '<text class="chart-value" x="{tx}" y="{ty}" text-anchor="middle">'
                "{count}</text>",
                x=x + 2,
                y=bottom - h,
                w=step - 4,
                h=h,
                tx=x + step / 2,
                ty=bottom - h - 3,
                count=count,
            )
        )
    for i, edge in enumerate(edges):
        parts.append(
            _html(
                '<text class="chart-legend" x="{x}" y="{y}" text-anchor="middle">{edge}×</text>',
                x=left + i * step,
                y=height - 4,
                edge=f"{edge:g}",
            )
        )
    if n and len(edges) >= 2:
        span = math.log(edges[-1]) - math.log(edges[0])
        for value, label in markers:
            if value <= 0:
                continue
            fraction = (math.log(value) - math.log(edges[0])) / span
            x = left + max(0.0, min(fraction, 1.0)) * plot_w
            parts.append(
                _html(
                    '<line class="threshold" x1="{x}" y1="{y1}" x2="{x}" y2="{y2}"/>'
                    '<text class="chart-legend" x="{tx}" y="{ty}">{label}</text>',
                    x=x,
                    y1=top - 4,
                    y2=bottom,
                    tx=x + 3,
                    ty=top + 2,
                    label=label,
                )
            )
    return _svg(height=height, summary=summary, body=_join(parts))


def column_chart(
    columns: Sequence[tuple[str, int]], *, summary: str, every: int = 7, height: int = 120
) -> SafeString:
    """Vertical bars of `(label, count)`, a count over each non-zero bar, and every
    `every`-th label (from the last one back) under the axis."""
    left, bottom, top = 10, height - 20, 14
    plot_w = WIDTH - 2 * left
    n = len(columns)
    step = plot_w / n if n else plot_w
    high = max((count for _, count in columns), default=0) or 1
    parts: list[SafeString] = [
        _html(
            '<line class="axis" x1="{x1}" y1="{y}" x2="{x2}" y2="{y}"/>',
            x1=left,
            x2=left + plot_w,
            y=bottom,
        )
    ]
    for i, (label, count) in enumerate(columns):
        x = left + i * step
        h = count / high * (bottom - top)
        parts.append(
            _html(
                '<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}">'
                "<title>{label}: {count}</title></rect>",
                x=x + 1,
                y=bottom - h,
                w=max(step - 2, 1),
                h=h,
                label=label,
                count=count,
            )
        )
        if count:
            parts.append(
                _html(
                    '<text class="chart-value" x="{x}" y="{y}" text-anchor="middle">{count}</text>',
                    x=x + step / 2,
                    y=bottom - h - 2,
                    count=count,
                )
            )
        if (n - 1 - i) % every == 0:
            parts.append(
                _html(
                    '<text class="chart-legend" x="{x}" y="{y}" text-anchor="middle">'
                    "{label}</text>",
                    x=x + step / 2,
                    y=height - 4,
                    label=label,
                )
            )
    return _svg(height=height, summary=summary, body=_join(parts))
