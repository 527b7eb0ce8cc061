"""Run a sanitised notebook in the sandbox, from the trusted side.

Starts `python -m runner.execute` inside the sandbox, relays its progress lines, enforces the
wall clock on the whole process tree, and reads back what it wrote. All of that output is
untrusted: it is parsed defensively and used only to tell the learner what happened.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from runner.execute import EXECUTED, OUTCOME, SUBMITTED, ExecutionOutcome, parse_progress
from runner.sandbox import ResourceLimits, SandboxPolicy, describe_exit, kill

# Kernel start-up and nbclient import come on top of the notebook's own total limit.
STARTUP_SLACK_S = 60
LOG_TAIL_BYTES = 8192
_MAX_OUTCOME_BYTES = 64 * 1024
_MAX_STDOUT_BYTES = 1 << 20
_STATUSES = ("ok", "error", "timeout")


@dataclass
class NotebookRun:
    outcome: ExecutionOutcome
    executed: dict[str, Any] | None  # the executed notebook, when it came back readable
    stderr_tail: str


def run_notebook(
    nb: Any,
    *,
    policy: SandboxPolicy,
    jobdir: Path,
    log_path: Path,
    cell_timeout_s: float,
    total_timeout_s: float,
    max_output_bytes: int,
    max_notebook_bytes: int,
    on_progress: Callable[..., None],
) -> NotebookRun:
    """Execute `nb` in the sandbox with `jobdir` as its only writable folder."""
    nbformat.write(nb, jobdir / SUBMITTED)
    cells = len(nb.cells)
    argv = [
        sys.executable,
        "-m",
        "runner.execute",
        policy.job_path(jobdir),
        "--cell-timeout",
        str(cell_timeout_s),
        "--total-timeout",
        str(total_timeout_s),
        "--max-output-bytes",
        str(max_output_bytes),
    ]
    limits = ResourceLimits(
        cpu_seconds=int(total_timeout_s * (os.cpu_count() or 1) + STARTUP_SLACK_S),
        file_size_bytes=256 << 20,
    )
    scratch = "/tmp" if policy.mode == "bwrap" else str(jobdir)
    # Keep IPython's and Jupyter's scratch files out of the learner's folder.
    env = {"IPYTHONDIR": f"{scratch}/.ipython", "JUPYTER_RUNTIME_DIR": f"{scratch}/.jupyter"}
    deadline = time.monotonic() + total_timeout_s + STARTUP_SLACK_S
    with open(log_path, "ab") as log:
        process = policy.spawn(
            argv, jobdir=jobdir, limits=limits, env=env, stdout=subprocess.PIPE, stderr=log
        )
    relay = _ProgressRelay(on_progress)
    try:
        finished = relay.follow(process, deadline)
        if finished:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                finished = False
    finally:
        kill(process)
    stderr_tail = tail(log_path)
    executed = _read_notebook(jobdir / EXECUTED, max_notebook_bytes + 2 * max_output_bytes)
    if not finished:
        where = f" while running cell {relay.last_cell}" if relay.last_cell else ""
        outcome = ExecutionOutcome(
            status="timeout",
            message=f"The notebook ran past its total limit of {total_timeout_s:g} s{where}.",
            cells=cells,
            cell=relay.last_cell,
        )
        return NotebookRun(outcome=outcome, executed=executed, stderr_tail=stderr_tail)
    outcome = _read_outcome(jobdir / OUTCOME, cells) or ExecutionOutcome(
        status="error",
        message=(
            f"The notebook run ended without a result: its process "
            f"{describe_exit(process.returncode)}."
        ),
        cells=cells,
        cell=relay.last_cell,
    )
    return NotebookRun(outcome=outcome, executed=executed, stderr_tail=stderr_tail)


class _ProgressRelay:
    """Reads the executor's stdout line by line until EOF or the deadline."""

    def __init__(self, on_progress: Callable[..., None]) -> None:
        self.on_progress = on_progress
        self.last_cell: int | None = None
        self.cells: int | None = None
        # The live log: the tail of what the cells printed, shown while the job runs.
        self.log_tail = ""
        self.seen = 0
        self.pending = b""

    def follow(self, process: subprocess.Popen, deadline: float) -> bool:
        """True when stdout closed before the deadline, False when time ran out."""
        fd = process.stdout.fileno()
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], min(timeout, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return True
            self.seen += len(chunk)
            if self.seen > _MAX_STDOUT_BYTES:
                continue  # keep draining so the child never blocks, but stop parsing
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            self.pending = self.pending[-4096:]
            for line in lines:
                self._line(line.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        parsed = parse_progress(line.strip())
        if parsed is None:
            return
        stage, info = parsed
        if stage == "output":
            self.log_tail = (self.log_tail + info["text"])[-LOG_TAIL_BYTES:]
            stage, info = "running", {"cell": self.last_cell, "cells": self.cells}
        if stage == "running" and "cell" in info:
            self.last_cell = info["cell"]
        self.cells = info.get("cells", self.cells)
        if self.log_tail:
            info = info | {"log_tail": self.log_tail}
        self.on_progress(stage, **info)


def _read_outcome(path: Path, cells: int) -> ExecutionOutcome | None:
    try:
        if path.stat().st_size > _MAX_OUTCOME_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("status") not in _STATUSES:
        return None
    cell = data.get("cell")
    if not (isinstance(cell, int) and 1 <= cell <= cells):
        cell = None
    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    exception = data.get("exception")
    return ExecutionOutcome(
        status=data["status"],
        message=" ".join(message.split())[:500],
        cells=cells,
        cell=cell,
        exception=exception[:100] if isinstance(exception, str) else None,
        output_truncated=data.get("output_truncated") is True,
    )


def _read_notebook(path: Path, max_bytes: int) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > max_bytes:
            return None
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not shown
        return None
    return json.loads(nbformat.writes(nb))


def tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
