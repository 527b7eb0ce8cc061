from __future__ import annotations

import math

from django import template

register = template.Library()


@register.filter
def measured(value) -> str:
    """A measured value or threshold for display: whole numbers as such, others to 4
    significant digits; the report's "NaN"/"Infinity" strings as they are; nothing as a dash.
    Numbers that arrive as text (mismatch tables) get the same treatment."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if not math.isfinite(number):
            return value
        value = number
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
