"""Execute a sanitised notebook with nbclient, cell by cell, under time and output limits.

This module runs *inside* the sandbox, as `python -m runner.execute <jobdir>`: nbclient and the
kernel it starts talk ZMQ over loopback, which exists only inside the sandbox's own network
namespace, so both live in that one sandboxed process tree. It reads
`<jobdir>/submitted.ipynb`, prints progress lines on stdout and, at the end, writes one JSON
object `{"outcome": ..., "notebook": ...}` (the executed notebook) to the descriptor given as
`--results-fd`. Nothing goes through the job folder, which in the sandbox is a tmpfs that
disappears with it. Everything it sends can be forged by the learner's kernel (same user,
same sandbox), so the trusted side uses it only to tell the learner what happened; no grade
comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat.v4 import new_output

PROGRESS_PREFIX = "@@inference-roadmap-progress "
# The most of one cell's printed output that travels as a live-log progress line.
OUTPUT_LINE_CHARS = 2000
SUBMITTED = "submitted.ipynb"

ProgressCallback = Callable[..., None]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class ExecutionOutcome:
    """What happened to the notebook; status is "ok", "error" or "timeout"."""

    status: str
    message: str
    cells: int
    cell: int | None = None  # 1-based, as learners count cells
    exception: str | None = None
    output_truncated: bool = False
    notebook: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "cells": self.cells,
            "cell": self.cell,
            "exception": self.exception,
            "output_truncated": self.output_truncated,
        }


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def execute_notebook(
    nb: Any,
    *,
    cwd: Path,
    cell_timeout_s: float,
    total_timeout_s: float,
    max_output_bytes: int,
    on_progress: ProgressCallback | None = None,
) -> ExecutionOutcome:
    """Run every code cell in order and stop at the first error or timeout.

    Student errors and timeouts come back as an outcome, never as an exception.
    """
    progress = on_progress or (lambda stage, **info: None)
    cells = len(nb.cells)
    client = _LimitedClient(
        nb,
        kernel_name="python3",
        max_output_bytes=max_output_bytes,
        resources={"metadata": {"path": str(cwd)}},
        allow_errors=False,
        # Kernel start under the sandbox takes seconds; a notebook gets its full cell budget.
        startup_timeout=60,
    )
    progress("starting", cells=cells)
    number = 0
    limit_used = cell_timeout_s
    try:
        with client.setup_kernel(cwd=str(cwd)):
            # The total budget is for the learner's cells, not for starting the kernel.
            deadline = time.monotonic() + total_timeout_s
            for index, cell in enumerate(nb.cells):
                number = index + 1
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _total_timeout(nb, cells, number, total_timeout_s, client)
                limit_used = min(cell_timeout_s, remaining)
                client.timeout = max(1, int(limit_used + 0.999))
                progress("running", cell=number, cells=cells)
                try:
                    client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                finally:
                    text = _stream_text(cell)
                    if text:
                        progress("output", text=text[-OUTPUT_LINE_CHARS:])
    except CellTimeoutError:
        if limit_used < cell_timeout_s:
            return _total_timeout(nb, cells, number, total_timeout_s, client)
        return ExecutionOutcome(
            status="timeout",
            message=f"Cell {number} ran past the {cell_timeout_s:g} s limit for one cell.",
            cells=cells,
            cell=number,
            output_truncated=client.truncated,
            notebook=nb,
        )
    except CellExecutionError as exc:
        return ExecutionOutcome(
            status="error",
            message=f"Cell {number} raised {exc.ename}: {_shorten(strip_ansi(exc.evalue))}",
            cells=cells,
            cell=number,
            exception=exc.ename,
            output_truncated=client.truncated,
            notebook=nb,
        )
    except DeadKernelError:
        return ExecutionOutcome(
            status="error",
            message=(
                f"The Python kernel died while running cell {number} (it exited, crashed or "
                "ran out of memory)."
            ),
            cells=cells,
            cell=number,
            exception="DeadKernelError",
            output_truncated=client.truncated,
            notebook=nb,
        )
    return ExecutionOutcome(
        status="ok",
        message=f"All {cells} cells ran.",
        cells=cells,
        output_truncated=client.truncated,
        notebook=nb,
    )


def _total_timeout(
    nb: Any, cells: int, number: int, total_timeout_s: float, client: Any
) -> ExecutionOutcome:
    return ExecutionOutcome(
        status="timeout",
        message=(
            f"The notebook ran past its total limit of {total_timeout_s:g} s "
            f"while running cell {number}."
        ),
        cells=cells,
        cell=number,
        output_truncated=client.truncated,
        notebook=nb,
    )


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _LimitedClient(NotebookClient):
    """A NotebookClient that stops storing outputs past a byte budget for the whole notebook.

    nbclient has no output limit of its own; a `while True: print(...)` would otherwise grow
    the executed notebook until the cell timeout.
    """

    def __init__(self, nb: Any, *, max_output_bytes: int, **kw: Any) -> None:
        super().__init__(nb, **kw)
        self.max_output_bytes = max_output_bytes
        self.output_bytes = 0
        self.truncated = False

    def output(self, outs: list, msg: dict, display_id: Any, cell_index: int) -> Any:
        size = len(json.dumps(msg.get("content", {}), default=str))
        if self.output_bytes + size <= self.max_output_bytes:
            self.output_bytes += size
            return super().output(outs, msg, display_id, cell_index)
        if not self.truncated:
            self.truncated = True
            outs.append(
                new_output(
                    "stream",
                    name="stderr",
                    text=(
                        f"\n[output truncated: the notebook printed more than "
                        f"{self.max_output_bytes} bytes; the rest was dropped]\n"
                    ),
                )
            )
        return None


def _stream_text(cell: Any) -> str:
    """What a cell printed (stdout, stderr), for the live log on the status page."""
    parts = [o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"]
    return strip_ansi("".join(p if isinstance(p, str) else "".join(p) for p in parts))


def format_progress(stage: str, **info: Any) -> str:
    return PROGRESS_PREFIX + json.dumps({"stage": stage, **info}, separators=(",", ":"))


def parse_progress(line: str) -> tuple[str, dict[str, Any]] | None:
    """Read a progress line; anything odd is dropped, because the learner can print these too."""
    if not line.startswith(PROGRESS_PREFIX) or len(line) > 2 * OUTPUT_LINE_CHARS:
        return None
    try:
        data = json.loads(line[len(PROGRESS_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("stage") not in ("starting", "running", "output"):
        return None
    if data["stage"] == "output":
        text = data.get("text")
        if not isinstance(text, str):
            return None
        return "output", {"text": text[-OUTPUT_LINE_CHARS:]}
    info: dict[str, Any] = {}
    for key in ("cell", "cells"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100_000:
            info[key] = value
    return data["stage"], info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.execute")
    parser.add_argument("jobdir", type=Path)
    parser.add_argument("--cell-timeout", type=float, required=True)
    parser.add_argument("--total-timeout", type=float, required=True)
    parser.add_argument("--max-output-bytes", type=int, required=True)
    parser.add_argument("--results-fd", type=int, required=True)
    args = parser.parse_args(argv)
    # The kernel runs learner code as the same user as this process. Not dumpable, this
    # process cannot be ptraced, read through /proc/<pid>/mem or robbed of its descriptors
    # (pidfd_getfd) by it; and the kernel does not inherit the results descriptor (nbclient
    # starts it with close_fds). The trusted side still believes nothing it reads here.
    _not_dumpable()
    os.set_inheritable(args.results_fd, False)

    def emit(stage: str, **info: Any) -> None:
        print(format_progress(stage, **info), flush=True)

    nb = nbformat.read(args.jobdir / SUBMITTED, as_version=4)
    outcome = execute_notebook(
        nb,
        cwd=args.jobdir,
        cell_timeout_s=args.cell_timeout,
        total_timeout_s=args.total_timeout,
        max_output_bytes=args.max_output_bytes,
        on_progress=emit,
    )
    results = json.dumps(
        {"outcome": outcome.to_dict(), "notebook": nbformat.writes(outcome.notebook)}
    ).encode()
    with os.fdopen(args.results_fd, "wb") as channel:
        channel.write(results)
    return 0


def _not_dumpable() -> None:
    import ctypes  # noqa: PLC0415 - only the sandboxed executor needs it

    pr_set_dumpable = 4
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0)


if __name__ == "__main__":
    sys.exit(main())
