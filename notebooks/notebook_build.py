"""What the labs' build scripts share: the protected-cell metadata, cells formatted as
`ruff format` keeps them (the repository's lint checks notebooks too), and the notebook around
the cells. Imported by notebooks/<lab>/build_notebooks.py, which put this folder on sys.path
(notebooks/ is not a package)."""

from __future__ import annotations

import subprocess
import sys

import nbformat
from nbformat.v4 import new_notebook

LOCKED = {"deletable": False, "editable": False, "tags": ["protected"]}


def formatted(source: str) -> str:
    """The cell as `ruff format` writes it, so that the strings in a build script can stay
    readable and fixtures can be made by str.replace."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--line-length", "100", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 else source


def notebook(cells: list) -> nbformat.NotebookNode:
    """A Python 3 notebook of `cells`, code cells formatted, every cell stored as Jupyter and
    `ruff format` store them (no trailing newline); validated."""
    for cell in cells:
        if cell.cell_type == "code":
            cell.source = formatted(cell.source)
        cell.source = cell.source.rstrip("\n")
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb
