"""Notebook pipeline steps that need no kernel: validate an upload, sanitise it, extract the
solution. The web side calls validate_notebook() before queueing, so this module stays light
(nbformat only; no torch, no nbclient).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass

import nbformat
from nbformat import NotebookNode

SOLUTION_TAG = "solution"
PROTECTED_TAG = "protected"
CELL_TYPES = ("code", "markdown", "raw")

_CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAGIC_LINE = re.compile(r"^(\s*)[%!]")
_KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


class NotebookRejected(ValueError):
    """The upload is not a notebook we can grade; str(exc) is the learner-facing reason."""


def validate_notebook(raw: bytes, *, max_bytes: int, max_cells: int) -> NotebookNode:
    """Check an uploaded .ipynb and return it parsed; raise NotebookRejected saying why not.

    Checks run cheapest first so that a 500 MB upload is refused before it is decoded.
    """
    if len(raw) > max_bytes:
        raise NotebookRejected(
            f"The notebook is {_size(len(raw))}, over the {_size(max_bytes)} limit. "
            "Clear all outputs (Kernel > Restart & Clear Output), save, and upload again."
        )
    text = _decode(raw)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookRejected(
            f"The file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "upload the .ipynb file exactly as Jupyter saved it."
        ) from None
    if not isinstance(data, dict) or "nbformat" not in data:
        raise NotebookRejected(
            "The file is JSON but not a Jupyter notebook: it has no 'nbformat' field."
        )
    major = data["nbformat"]
    if isinstance(major, bool) or not isinstance(major, int):
        raise NotebookRejected("The notebook's 'nbformat' field is not a version number.")
    if major < 4:
        raise NotebookRejected(
            f"The notebook uses nbformat {major}, which is not supported; open it in "
            "Jupyter 4 or newer and save it again (nbformat 4)."
        )
    if major > 4:
        raise NotebookRejected(f"The notebook uses nbformat {major}; only nbformat 4 is supported.")
    cells = data.get("cells")
    if not isinstance(cells, list):
        raise NotebookRejected("The notebook's 'cells' field is not a list of cells.")
    if len(cells) > max_cells:
        raise NotebookRejected(
            f"The notebook has {len(cells)} cells; the limit is {max_cells}. "
            "Merge or delete scratch cells and upload again."
        )
    for number, cell in enumerate(cells, start=1):
        _check_cell(cell, number)
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        raise NotebookRejected("The notebook's 'metadata' field is missing or not an object.")
    _check_language(metadata)
    if not any(_is_solution(cell) for cell in cells):
        raise NotebookRejected(
            f"No code cell is tagged '{SOLUTION_TAG}'. Keep the starter's solution cell (its "
            f"tag is '{SOLUTION_TAG}') and write your code in it."
        )
    return nbformat.from_dict(data)


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:4096]:
        raise NotebookRejected(
            "The file is binary, not a notebook; upload the .ipynb file that Jupyter saved."
        )
    try:
        # utf-8-sig tolerates the byte-order mark some Windows editors add.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotebookRejected(
            f"The file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "upload the .ipynb file that Jupyter saved."
        ) from None


def _check_cell(cell: object, number: int) -> None:
    if not isinstance(cell, dict):
        raise NotebookRejected(f"Cell {number} is not an object.")
    if cell.get("cell_type") not in CELL_TYPES:
        raise NotebookRejected(
            f"Cell {number} has cell_type {cell.get('cell_type')!r}; expected code, markdown "
            "or raw."
        )
    source = cell.get("source", "")
    if not (
        isinstance(source, str)
        or (isinstance(source, list) and all(isinstance(s, str) for s in source))
    ):
        raise NotebookRejected(f"Cell {number}'s source is not text.")
    metadata = cell.get("metadata", {})
    if not isinstance(metadata, dict):
        raise NotebookRejected(f"Cell {number}'s metadata is not an object.")
    tags = metadata.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise NotebookRejected(f"Cell {number}'s tags are not a list of strings.")


def _check_language(metadata: dict) -> None:
    kernelspec = metadata.get("kernelspec")
    language_info = metadata.get("language_info")
    declared = []
    if isinstance(kernelspec, dict) and isinstance(kernelspec.get("language"), str):
        declared.append(kernelspec["language"])
    if isinstance(language_info, dict) and isinstance(language_info.get("name"), str):
        declared.append(language_info["name"])
    for language in declared:
        if language.strip().lower() != "python":
            raise NotebookRejected(
                f"The notebook's kernel language is {language!r}; labs run Python 3 only. "
                "Choose the Python 3 kernel and save again."
            )


def _is_solution(cell: object) -> bool:
    return (
        isinstance(cell, dict) and cell.get("cell_type") == "code" and SOLUTION_TAG in _tags(cell)
    )


def _tags(cell: dict) -> list[str]:
    metadata = cell.get("metadata")
    tags = metadata.get("tags", []) if isinstance(metadata, dict) else []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f} MB"
    if n >= 1_000:
        return f"{n / 1_000:.1f} kB"
    return f"{n} bytes"


def is_protected(cell: dict) -> bool:
    """A starter cell the learner may not change: locked in Jupyter or tagged `protected`."""
    metadata = cell.get("metadata") or {}
    return (
        metadata.get("deletable") is False
        or metadata.get("editable") is False
        or PROTECTED_TAG in _tags(cell)
    )


def sanitise_notebook(nb: NotebookNode, *, starter: NotebookNode | None) -> NotebookNode:
    """Rebuild a validated notebook from what we trust in it.

    Outputs are cleared (a learner's saved outputs mean nothing here), metadata is reduced to a
    python3 kernel, cell ids are made valid and unique, and the starter's protected cells are put
    back by id, where a learner edited or deleted them.
    """
    cells = [_clean_cell(cell) for cell in nb.get("cells", [])]
    _normalise_ids(cells)
    if starter is not None:
        cells = _restore_protected(cells, [_clean_cell(c) for c in starter.get("cells", [])])
        _normalise_ids(cells)
    clean = nbformat.v4.new_notebook(cells=cells)
    clean.metadata = nbformat.from_dict(
        {"kernelspec": dict(_KERNEL), "language_info": {"name": "python"}}
    )
    try:
        nbformat.validate(clean)
    except nbformat.ValidationError as exc:
        raise NotebookRejected(f"The notebook is malformed: {exc.message}") from None
    return clean


def _clean_cell(cell: dict) -> NotebookNode:
    source = cell.get("source", "")
    if isinstance(source, list):
        source = "".join(source)
    metadata = cell.get("metadata") or {}
    kept: dict[str, object] = {}
    if _tags(cell):
        kept["tags"] = _tags(cell)
    for flag in ("deletable", "editable"):
        if isinstance(metadata.get(flag), bool):
            kept[flag] = metadata[flag]
    cell_type = cell.get("cell_type")
    if cell_type == "code":
        new = nbformat.v4.new_code_cell(source=source, metadata=kept)
    elif cell_type == "markdown":
        new = nbformat.v4.new_markdown_cell(source=source, metadata=kept)
    else:
        new = nbformat.v4.new_raw_cell(source=source, metadata=kept)
    cell_id = cell.get("id")
    new["id"] = cell_id if isinstance(cell_id, str) else ""
    return new


def _normalise_ids(cells: list[NotebookNode]) -> None:
    """Valid, unique, deterministic ids: the first holder of an id keeps it."""
    seen: set[str] = set()
    for index, cell in enumerate(cells):
        cell_id = cell.get("id", "")
        if not _CELL_ID.match(cell_id) or cell_id in seen:
            cell_id = _unused(f"cell-{index + 1}", seen | {c.get("id", "") for c in cells})
            cell["id"] = cell_id
        seen.add(cell_id)


def _unused(base: str, taken: set[str]) -> str:
    candidate, suffix = base, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{base}-{suffix}"
    return candidate


def _restore_protected(
    cells: list[NotebookNode], starter_cells: list[NotebookNode]
) -> list[NotebookNode]:
    result = list(cells)
    previous_id: str | None = None
    for starter_cell in starter_cells:
        if is_protected(starter_cell):
            restored = copy.deepcopy(starter_cell)
            position = _position(result, starter_cell["id"])
            if position is not None:
                result[position] = restored
            else:
                # Deleted by the learner: put it back after the starter cell that preceded it.
                anchor = _position(result, previous_id)
                result.insert(anchor + 1 if anchor is not None else 0, restored)
        if _position(result, starter_cell["id"]) is not None:
            previous_id = starter_cell["id"]
    return result


def _position(cells: list[NotebookNode], cell_id: str | None) -> int | None:
    for index, cell in enumerate(cells):
        if cell_id is not None and cell.get("id") == cell_id:
            return index
    return None


@dataclass(frozen=True)
class SolutionSpan:
    cell_number: int  # 1-based position in the sanitised notebook, as messages name cells
    first_line: int  # 1-based line in solution.py
    line_count: int


@dataclass(frozen=True)
class SolutionSource:
    text: str
    spans: tuple[SolutionSpan, ...]

    def locate(self, line: int) -> tuple[int, int] | None:
        """Map a solution.py line to (cell number, line within that cell)."""
        for span in self.spans:
            if span.first_line <= line < span.first_line + span.line_count:
                return span.cell_number, line - span.first_line + 1
        return None


def extract_solution(nb: NotebookNode) -> SolutionSource:
    """Concatenate the code cells tagged `solution` into the text of solution.py.

    IPython magics (`%timeit`, `!pip`) are not Python, so their lines become `pass`; a cell
    magic (`%%bash`) turns its whole cell into comments.
    """
    lines = ["# solution.py: the cells tagged 'solution', in notebook order.", ""]
    spans = []
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code" or SOLUTION_TAG not in cell.metadata.get("tags", []):
            continue
        lines.append(f"# --- cell {number} ---")
        body = _strip_magics(cell.source).split("\n")
        spans.append(SolutionSpan(number, len(lines) + 1, len(body)))
        lines.extend(body)
        lines.append("")
    return SolutionSource(text="\n".join(lines) + "\n", spans=tuple(spans))


def _strip_magics(source: str) -> str:
    lines = source.split("\n")
    if lines and lines[0].lstrip().startswith("%%"):
        return "\n".join(f"# (cell magic, not run when grading) {line}" for line in lines)
    out = []
    for line in lines:
        match = _MAGIC_LINE.match(line)
        out.append(
            f"{match.group(1)}pass  # (IPython magic, not run when grading) {line.strip()}"
            if match
            else line
        )
    return "\n".join(out)
