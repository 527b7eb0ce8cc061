"""Grouped bar charts for result pages (runner/graders/charts.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from runner.graders.charts import bars_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_a_bar_per_value_with_its_label_and_a_legend_per_series():
    svg = bars_svg(
        "Decode <tokens>/s",
        groups=["batch 1", "batch 32"],
        series={"bf16": [30.1, 1116.0], "int4": [31.8, None]},
        unit="tokens/s",
    )
    root = ET.fromstring(svg)  # valid XML: the title's "<" is escaped
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert [b.find(f"{SVG}title").text for b in bars] == [
        "bf16, batch 1: 30.10 tokens/s",
        "int4, batch 1: 31.80 tokens/s",
        "bf16, batch 32: 1,116 tokens/s",
    ]
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "n/a" in texts and "Decode <tokens>/s" in texts and {"bf16", "int4"} <= set(texts)
    # Heights are proportional to the values, from a common zero line.
    heights = [float(b.get("height")) for b in bars]
    assert heights[2] / heights[0] == pytest.approx(1116 / 30.1, rel=0.02)


def test_negative_values_draw_below_the_zero_line():
    svg = bars_svg("Perplexity change", groups=["int8"], series={"a": [-0.5], "b": [1.0]})
    bars = [r for r in ET.fromstring(svg).iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    zero = next(float(line.get("y1")) for line in ET.fromstring(svg).iter(f"{SVG}line"))
    assert float(bars[0].get("y")) == pytest.approx(zero, abs=0.2)
    assert float(bars[1].get("y")) + float(bars[1].get("height")) == pytest.approx(zero, abs=0.2)


def test_mismatched_or_empty_series_are_refused():
    with pytest.raises(ValueError, match="has 1 values for 2 groups"):
        bars_svg("x", groups=["a", "b"], series={"s": [1.0]})
    with pytest.raises(ValueError, match="at least one group"):
        bars_svg("x", groups=[], series={})
