"""The executed notebook as a standalone, inert HTML document.

Everything in an executed notebook is learner-controlled. It is rendered here with Django's
autoescaping (no output is ever inserted as HTML), served from its own URL with
`Content-Security-Policy: sandbox` (no script runs, the document gets an opaque origin) and
shown inside `<iframe sandbox>`, never swapped into a page by htmx.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from django.template.loader import render_to_string

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Raster images only: an SVG can carry script, and there is no need to risk it.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif")
MAX_IMAGE_BASE64 = 2_000_000

CSP = (
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)


def _text(value: Any) -> str:
    if isinstance(value, list):
        value = "".join(str(v) for v in value)
    return _ANSI.sub("", str(value or ""))


def _image(mime: str, data: Any) -> str | None:
    """A data: URI for a well-formed base64 raster image, else None."""
    raw = _text(data).replace("\n", "")
    if len(raw) > MAX_IMAGE_BASE64:
        return None
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return f"data:{mime};base64,{raw}"


def _output(output: dict) -> dict | None:
    kind = output.get("output_type")
    if kind == "stream":
        return {"kind": "text", "text": _text(output.get("text")), "name": output.get("name")}
    if kind == "error":
        traceback = "\n".join(_text(line) for line in output.get("traceback") or [])
        return {
            "kind": "error",
            "text": traceback or f"{output.get('ename')}: {output.get('evalue')}",
        }
    if kind in ("execute_result", "display_data"):
        data = output.get("data") or {}
        for mime in IMAGE_TYPES:
            if mime in data and (uri := _image(mime, data[mime])):
                return {"kind": "image", "src": uri}
        if "text/plain" in data:
            return {"kind": "text", "text": _text(data["text/plain"])}
        others = ", ".join(sorted(data))
        return {"kind": "omitted", "text": f"[{others} output not shown]"}
    return None


def notebook_cells(notebook: dict) -> list[dict]:
    cells = []
    for cell in notebook.get("cells") or []:
        if not isinstance(cell, dict):
            continue
        outputs = [o for o in (cell.get("outputs") or []) if isinstance(o, dict)]
        cells.append(
            {
                "type": cell.get("cell_type"),
                "source": _text(cell.get("source")),
                "count": cell.get("execution_count"),
                "outputs": [rendered for o in outputs if (rendered := _output(o))],
            }
        )
    return cells


def render_notebook(notebook: dict, *, title: str) -> str:
    return render_to_string(
        "labs/notebook_document.html", {"cells": notebook_cells(notebook), "title": title}
    )
