from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def measured(value) -> str:
    """A measured value for display: numbers to 4 significant digits, the report's
    "NaN"/"Infinity" strings as they are, nothing as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
