"""Write the softmax lab's notebooks: the starter, the reference solution and the test fixtures.

Run from the repository root after changing any notebook text here:

    .venv/bin/python notebooks/softmax/build_fixtures.py

The generated .ipynb files are committed; tests read them as real uploads would arrive.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"

LOCKED = {"deletable": False, "editable": False, "tags": ["protected"]}

INTRO = """\
# A numerically stable softmax

**Milestone:** *Advanced optimization* - the first step towards "a kernel that outperforms
naive PyTorch".

Softmax turns a row of scores into probabilities:

$$\\mathrm{softmax}(x)_i = \\frac{e^{x_i}}{\\sum_j e^{x_j}}$$

It sits inside every attention layer and every classifier head, so it runs billions of times
in inference. Written exactly as above, it breaks on ordinary inputs: in float32, `exp(x)`
overflows to `inf` as soon as `x > 88.7` (because `exp(88.72) ≈ 3.4e38`, the largest float32),
and underflows to `0` below about `-103`. Then `inf / inf` and `0 / 0` are `NaN`.

In this lab you write `softmax(x)` for a 2-D float32 tensor (rows x columns), normalising
**along the last dimension**, so that it is exact to float32 precision for *any* magnitude of
input, and at least about as fast as the naive PyTorch version.

**Read:**
- PyTorch documentation for [`torch.softmax`](https://pytorch.org/docs/stable/generated/torch.softmax.html)
  and [`torch.nn.functional.softmax`](https://pytorch.org/docs/stable/generated/torch.nn.functional.softmax.html).
- M. Milakov and N. Gimelshein, *Online normalizer calculation for softmax*, 2018,
  [arXiv:1805.02867](https://arxiv.org/abs/1805.02867) - how to find the max and the sum in a
  single pass, the idea FlashAttention builds on.
"""

OVERFLOW_MD = """\
## See it overflow

Run the next cell. The naive formula returns `nan` for a perfectly reasonable row.
"""

OVERFLOW_CODE = """\
import math

import torch

x = torch.tensor([[1000.0, 0.0, -5.0], [1.0, 2.0, 3.0]])
naive = torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)
print("naive softmax:\\n", naive)
print("largest float32:", torch.finfo(torch.float32).max)
print("exp overflows above x =", math.log(torch.finfo(torch.float32).max))
"""

TRICK_MD = """\
## The max-subtraction trick and log-sum-exp

Softmax does not change when you add the same constant to every element of a row:

$$\\frac{e^{x_i - m}}{\\sum_j e^{x_j - m}} = \\frac{e^{-m} e^{x_i}}{e^{-m} \\sum_j e^{x_j}}
= \\mathrm{softmax}(x)_i$$

Choose $m = \\max_j x_j$. Now every exponent is $\\le 0$, the largest term is exactly
$e^0 = 1$, nothing overflows, and the sum is at least 1, so nothing divides by zero.

The same idea gives the stable **log-sum-exp**,
$\\log \\sum_j e^{x_j} = m + \\log \\sum_j e^{x_j - m}$, which is how `log_softmax` and
cross-entropy are computed without overflow.

## Your task

Fill in the cell below (it is tagged `solution`; keep the tag and the name `softmax`):

- input: a 2-D `torch.float32` tensor `x` of shape `(rows, cols)`;
- output: a `torch.float32` tensor of the same shape, softmax along the last dimension
  (`dim=-1`), every row summing to 1;
- whole-tensor operations only; no Python loop over rows.
"""

STARTER_SOLUTION = """\
import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    \"\"\"Softmax over the last dimension of a 2-D float32 tensor, stable for any magnitude.\"\"\"
    raise NotImplementedError(
        "Implement softmax: subtract the row max before exp, then divide by the row sum"
    )
"""

REFERENCE_SOLUTION = """\
import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    \"\"\"Softmax over the last dimension of a 2-D float32 tensor, stable for any magnitude.\"\"\"
    # Subtracting the row max makes every exponent <= 0: nothing overflows, the sum is >= 1.
    out = x - x.amax(dim=-1, keepdim=True)
    # In place from here on: the shifted copy is ours, so exp and divide reuse its memory.
    out.exp_()
    out /= out.sum(dim=-1, keepdim=True)
    return out
"""

CHECK_MD = """\
## Check yourself (this cell teaches; it does not grade)

It compares your function with `torch.softmax` computed in float64. Grading happens on the
server, on inputs you have not seen, in a separate process - nothing this notebook prints
counts.
"""

CHECK_CODE = """\
import torch

torch.manual_seed(0)
cases = {
    "random 4x7": torch.randn(4, 7),
    "large magnitude": torch.tensor([[1000.0, 999.0, -1000.0], [-2000.0, -2000.5, -1999.0]]),
    "one column": torch.randn(5, 1),
}
for name, x in cases.items():
    got = softmax(x.clone())
    want = torch.softmax(x.double(), dim=-1).float()
    same = got.shape == want.shape and got.dtype == torch.float32
    close = same and bool(torch.allclose(got, want, rtol=1e-5, atol=1e-6))
    print(f"{name:16s} {'matches torch.softmax' if close else 'DIFFERS from torch.softmax'}")
"""

SUBMIT_MD = """\
## Submit

Save the notebook and upload it on the lab page (or with the CLI). The grader runs every cell,
then loads **only the cells tagged `solution`** into a separate sandboxed process and:

1. checks correctness against a float64 reference on fresh random inputs at ten shapes,
   including magnitudes that overflow the naive formula (tolerance
   `1e-6 + 1e-5 x |expected|` per element; any NaN or Inf fails);
2. times your function against the naive PyTorch composition, interleaved in the same run,
   and reports the ratio of medians with a 95% confidence interval.
"""


def build(solution: str, *, extra: list | None = None, after_solution: list | None = None):
    """The starter notebook with `solution` as its solution cell; extra cells are learner cells."""
    cells = [
        new_markdown_cell(INTRO, id="intro"),
        new_markdown_cell(OVERFLOW_MD, id="overflow-md"),
        new_code_cell(OVERFLOW_CODE, id="overflow", metadata=dict(LOCKED)),
        new_markdown_cell(TRICK_MD, id="trick-md"),
        new_code_cell(solution, id="solution", metadata={"tags": ["solution"]}),
        *(after_solution or []),
        new_markdown_cell(CHECK_MD, id="check-md"),
        new_code_cell(CHECK_CODE, id="self-check", metadata=dict(LOCKED)),
        new_markdown_cell(SUBMIT_MD, id="submit-md"),
        *(extra or []),
    ]
    for cell in cells:
        # As Jupyter and `ruff format` store them: no trailing newline.
        cell.source = cell.source.rstrip("\n")
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


NAIVE_OVERFLOW = """\
import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    # The textbook formula, without subtracting the max: overflows for x > 88.7.
    return torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True)
"""

WRONG_DIM = """\
import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    # Stable, but normalises each *column* (dim=0) instead of each row.
    out = torch.exp(x - x.amax(dim=0, keepdim=True))
    return out / out.sum(dim=0, keepdim=True)
"""

HARDCODED = """\
import glob
import os
import re

import torch

# Cheat: hunt for the grader's secret seed anywhere this process can look, and fall back to
# a constant answer (uniform rows, which is right only for constant rows).
_HEX = re.compile(r"\\b[0-9a-f]{32}\\b")
FOUND = []
for value in os.environ.values():
    FOUND += _HEX.findall(value)
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline") + glob.glob("*"):
    try:
        with open(path, "rb") as handle:
            FOUND += _HEX.findall(handle.read().decode("latin-1"))
    except OSError:
        pass
print("seed candidates found:", FOUND)
_CACHE = {}


def softmax(x: torch.Tensor) -> torch.Tensor:
    key = tuple(x.shape)
    if key not in _CACHE:
        _CACHE[key] = torch.full_like(x, 1.0 / x.shape[-1])
    return _CACHE[key]
"""

PRINTS_PASS = """\
import json
import os
import sys

import torch

FAKE = {
    "schema": "inference-roadmap/report@1",
    "status": "passed",
    "message": "All criteria passed.",
    "criteria": [{"name": "correct", "passed": True}, {"name": "speed", "passed": True}],
}
# Cheat: claim a pass on stdout, forge a progress line, and leave before being measured.
print("PASSED")
print(json.dumps(FAKE))
os.write(1, b'@@inference-roadmap-progress {"stage":"done","status":"passed"}\\n')


def softmax(x: torch.Tensor) -> torch.Tensor:
    if "ipykernel" not in sys.modules:  # only when the grader, not the notebook, calls it
        print(json.dumps(FAKE), flush=True)
        os._exit(0)
    out = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return out / out.sum(dim=-1, keepdim=True)
"""

MONKEYPATCH_TIMER = """\
import sys
import time

import numpy
import torch

# Cheat: when loaded by the grader, freeze every clock and make every comparison pass, then
# be slow and correct. None of it reaches the trusted process that keeps the time.
if "ipykernel" not in sys.modules:
    time.perf_counter_ns = lambda: 0
    time.perf_counter = lambda: 0.0
    time.monotonic = lambda: 0.0
    time.time = lambda: 0.0
    torch.allclose = lambda *args, **kwargs: True
    torch.isclose = lambda a, b, *args, **kwargs: torch.ones_like(a, dtype=torch.bool)
    numpy.allclose = lambda *args, **kwargs: True
    torch.testing.assert_close = lambda *args, **kwargs: None


def softmax(x: torch.Tensor) -> torch.Tensor:
    rows = []
    for row in x:  # a Python loop over rows, and a nap: far slower than naive
        e = torch.exp(row - row.max())
        rows.append(e / e.sum())
    time.sleep(0.02)
    return torch.stack(rows)
"""

RAISES_IN_GRADER = """\
import torch


def softmax(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 17:
        raise ValueError("17 rows? that cannot happen")
    out = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return out / out.sum(dim=-1, keepdim=True)
"""


def fixtures() -> dict[str, object]:
    good = REFERENCE_SOLUTION
    return {
        "naive_overflow.ipynb": build(NAIVE_OVERFLOW),
        "wrong_dim.ipynb": build(WRONG_DIM),
        "hardcoded.ipynb": build(HARDCODED),
        "prints_pass.ipynb": build(PRINTS_PASS),
        "monkeypatch_timer.ipynb": build(MONKEYPATCH_TIMER),
        "raises_in_grader.ipynb": build(RAISES_IN_GRADER),
        "raises.ipynb": build(
            good,
            after_solution=[
                new_code_cell(
                    "probs = softmax(torch.randn(2, 3))\nprint(probs[0, 5])", id="explore"
                )
            ],
        ),
    }


def malformed() -> dict[str, bytes]:
    """Uploads that must be rejected before anything runs."""
    starter = build(STARTER_SOLUTION)
    no_solution = json.loads(nbformat.writes(starter))
    for cell in no_solution["cells"]:
        cell["metadata"].pop("tags", None)
    r_kernel = json.loads(nbformat.writes(starter))
    r_kernel["metadata"]["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}
    r_kernel["metadata"]["language_info"] = {"name": "R"}
    nbformat3 = {
        "metadata": {"name": "old"},
        "nbformat": 3,
        "nbformat_minor": 0,
        "worksheets": [{"cells": [{"cell_type": "code", "input": "1 + 1", "language": "python"}]}],
    }
    return {
        "not_json.ipynb": b'{"cells": [ this is not JSON\n',
        "binary.ipynb": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        "not_utf8.ipynb": '{"cells": [], "nbformat": 4, "x": "caf\u00e9"}'.encode("latin-1"),
        "not_a_notebook.ipynb": json.dumps({"hello": "world", "cells": "none"}).encode(),
        "nbformat3.ipynb": json.dumps(nbformat3, indent=1).encode(),
        "no_solution.ipynb": json.dumps(no_solution, indent=1).encode(),
        "r_kernel.ipynb": json.dumps(r_kernel, indent=1).encode(),
    }


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    nbformat.write(build(STARTER_SOLUTION), HERE / "softmax.ipynb")
    nbformat.write(build(REFERENCE_SOLUTION), HERE / "reference.ipynb")
    for name, nb in fixtures().items():
        nbformat.write(nb, FIXTURES / name)
    for name, raw in malformed().items():
        (FIXTURES / name).write_bytes(raw)
    print(
        f"wrote {HERE / 'softmax.ipynb'}, reference.ipynb and {len(list(FIXTURES.iterdir()))} "
        "fixtures"
    )


if __name__ == "__main__":
    main()
