"""Run a sanitised notebook in the sandbox, from the trusted side.

Starts `python -m runner.execute` inside the sandbox, relays its progress lines, enforces the
wall clock on the whole process tree, and reads back what it sends. Three pipes come out of
the sandbox: stdout (progress lines), stderr (the executor's and kernel's own messages, kept
in a size-capped log) and a results channel (the outcome and the executed notebook). All of
it is untrusted: read with caps, parsed defensively and used only to tell the learner what
happened. Nothing is read from a folder the sandbox could write to.
"""

from __future__ import annotations

import dataclasses
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

from runner import safeio
from runner.execute import SUBMITTED, ExecutionOutcome, parse_progress
from runner.sandbox import ResourceLimits, SandboxPolicy, describe_end, format_bytes, kill

# Kernel start-up and nbclient import come on top of the notebook's own total limit.
STARTUP_SLACK_S = 60
LOG_TAIL_BYTES = 8192
# The most of the executor's stderr kept on disk; the rest is counted and dropped.
MAX_LOG_BYTES = 1 << 20
_MAX_STDOUT_BYTES = 1 << 20
# After the executor exits, how long to wait for pipes still held by stray processes (only
# possible unsandboxed: in the sandbox they die with its PID namespace).
_DRAIN_GRACE_S = 1.0
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
    limits: ResourceLimits | None = None,
) -> NotebookRun:
    """Execute `nb` in the sandbox; `jobdir` holds its input (never its output)."""
    safeio.write_new(jobdir / SUBMITTED, nbformat.writes(nb).encode())
    cells = len(nb.cells)
    results_r, results_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
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
        "--results-fd",
        str(results_w),
    ]
    limits = dataclasses.replace(
        limits or ResourceLimits(cpu_seconds=1, file_size_bytes=1),
        cpu_seconds=int(total_timeout_s * (os.cpu_count() or 1) + STARTUP_SLACK_S),
        file_size_bytes=256 << 20,
    )
    scratch = "/tmp" if policy.mode == "bwrap" else str(jobdir)
    # Keep IPython's and Jupyter's scratch files out of the learner's folder.
    env = {"IPYTHONDIR": f"{scratch}/.ipython", "JUPYTER_RUNTIME_DIR": f"{scratch}/.jupyter"}
    deadline = time.monotonic() + total_timeout_s + STARTUP_SLACK_S
    try:
        process = policy.spawn(
            argv,
            jobdir=jobdir,
            limits=limits,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr_w,
            pass_fds=(results_w,),
            inputs=(SUBMITTED,),
        )
    except BaseException:
        os.close(results_r)
        os.close(stderr_r)
        raise
    finally:
        os.close(results_w)
        os.close(stderr_w)
    relay = _Relay(
        on_progress,
        log_path=log_path,
        results_cap=max_notebook_bytes + 2 * max_output_bytes + (64 << 10),
    )
    try:
        finished = relay.follow(process, deadline, stderr_fd=stderr_r, results_fd=results_r)
        if finished:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                finished = False
    finally:
        kill(process)
        relay.close()
        os.close(stderr_r)
        os.close(results_r)
    stderr_tail = safeio.read_tail(log_path, limit=LOG_TAIL_BYTES)
    outcome, executed = _read_results(relay.results, cells)
    if not finished:
        where = f" while running cell {relay.last_cell}" if relay.last_cell else ""
        outcome = ExecutionOutcome(
            status="timeout",
            message=f"The notebook ran past its total limit of {total_timeout_s:g} s{where}.",
            cells=cells,
            cell=relay.last_cell,
        )
    elif outcome is None:
        ending = describe_end(process)
        message = (
            f"The notebook run sent back an unreadable result (something in the sandbox wrote "
            f"to the executor's results channel); its process {ending}."
            if relay.results or relay.results_overflow
            else f"The notebook run ended without a result: its process {ending}."
        )
        outcome = ExecutionOutcome(
            status="error", message=message, cells=cells, cell=relay.last_cell
        )
    elif outcome.exception == "DeadKernelError" and (process.cgroup_events or {}).get("oom_kill"):
        # The cgroup knows what nbclient could only guess: the kernel was killed for memory.
        outcome.message = (
            f"The Python kernel was stopped while running cell {outcome.cell}: the notebook "
            f"used more than its memory limit of {format_bytes(limits.memory_bytes)}."
        )
    return NotebookRun(outcome=outcome, executed=executed, stderr_tail=stderr_tail)


class _Relay:
    """Drains the sandbox's three pipes until they close or time runs out: progress lines
    from stdout, a capped copy of stderr into the log, and the results channel."""

    def __init__(self, on_progress: Callable[..., None], *, log_path: Path, results_cap: int):
        self.on_progress = on_progress
        self.last_cell: int | None = None
        self.cells: int | None = None
        # The live log: the tail of what the cells printed, shown while the job runs.
        self.log_tail = ""
        self.seen = 0
        self.pending = b""
        self.log_fd = safeio.open_append(log_path)
        self.logged = 0
        self.dropped = 0
        self.results = b""
        self.results_cap = results_cap
        self.results_overflow = False

    def follow(
        self, process: subprocess.Popen, deadline: float, *, stderr_fd: int, results_fd: int
    ) -> bool:
        """True when the executor ended (and its pipes closed) before the deadline."""
        handlers = {
            process.stdout.fileno(): self._stdout,
            stderr_fd: self._stderr,
            results_fd: self._results,
        }
        open_fds = set(handlers)
        exited_at = None
        while open_fds:
            now = time.monotonic()
            if now >= deadline:
                return False
            if exited_at is None and process.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _DRAIN_GRACE_S:
                return True
            ready, _, _ = select.select(list(open_fds), [], [], min(deadline - now, 0.5))
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    handlers[fd](chunk)
                else:
                    open_fds.discard(fd)
        return True

    def close(self) -> None:
        if self.dropped:
            note = f"\n[log truncated: {self.dropped} more bytes on stderr were dropped]\n"
            os.write(self.log_fd, note.encode())
        os.close(self.log_fd)

    def _stderr(self, chunk: bytes) -> None:
        room = MAX_LOG_BYTES - self.logged
        if room > 0:
            os.write(self.log_fd, chunk[:room])
            self.logged += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - max(room, 0))

    def _results(self, chunk: bytes) -> None:
        if self.results_overflow:
            return
        self.results += chunk
        if len(self.results) > self.results_cap:
            self.results, self.results_overflow = b"", True

    def _stdout(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > _MAX_STDOUT_BYTES:
            return  # keep draining so the child never blocks, but stop parsing
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


def _read_results(raw: bytes, cells: int) -> tuple[ExecutionOutcome | None, dict[str, Any] | None]:
    """The outcome and executed notebook from the results channel, or None for what is not
    exactly one well-formed object (the learner can write to the channel too)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    return _outcome(data.get("outcome"), cells), _notebook(data.get("notebook"))


def _outcome(data: Any, cells: int) -> ExecutionOutcome | None:
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


def _notebook(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not shown
        return None
    return json.loads(nbformat.writes(nb))
