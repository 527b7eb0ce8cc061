"""Find and signal every process descended from one pid, by reading /proc.

A sandboxed learner can fork, double-fork or setsid; a process group or session does not
reliably hold all of them, but the parent links in /proc do (from the worker's pid namespace).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

_PROC = Path("/proc")


def _parents() -> dict[int, int]:
    parents = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name is in parentheses and may itself contain spaces or ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(pid: int) -> list[int]:
    """Every living descendant of `pid` (not `pid` itself), parents before children."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def signal_tree(pid: int, sig: int, *, include_root: bool = True) -> list[int]:
    """Send `sig` to `pid` and all its descendants; return the pids that got it.

    For SIGSTOP we rescan until no new process appears, so a child forked between the scan and
    the stop of its parent is caught too.
    """
    signalled: set[int] = set()
    for _ in range(5):
        targets = ([pid] if include_root else []) + descendants(pid)
        fresh = [p for p in targets if p not in signalled]
        if not fresh:
            break
        for target in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
            signalled.add(target)
        if sig != signal.SIGSTOP:
            break
    if sig == signal.SIGSTOP:
        _wait_stopped(signalled)
    return sorted(signalled)


def _state(pid: int) -> str | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _wait_stopped(pids: set[int], timeout_s: float = 0.2) -> None:
    """SIGSTOP is delivered asynchronously: a process running on another CPU keeps running
    for a moment after kill() returns. Wait until each one has really stopped (or exited)."""
    deadline = time.monotonic() + timeout_s
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        waiting = {p for p in waiting if _state(p) not in (None, "T", "t", "Z", "X")}
        if waiting:
            time.sleep(0.0005)


def signal_pids(pids: list[int], sig: int) -> None:
    """Signal known pids, e.g. SIGCONT to exactly the processes an earlier SIGSTOP reached."""
    for target in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


def wait_gone(pids: list[int], *, timeout_s: float = 5.0) -> list[int]:
    """Wait until every pid has exited (a zombie counts as exited: it runs nothing and its
    parent reaps it); return those still running at the timeout."""
    deadline = time.monotonic() + timeout_s
    waiting = list(pids)
    while True:
        waiting = [p for p in waiting if _state(p) not in (None, "Z", "X")]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.005)


def count_tasks(uid: int) -> int:
    """Processes and threads whose real uid is `uid`, host-wide: what RLIMIT_NPROC counts."""
    total = 0
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields.get("Threads", "1").strip() or 1)
        except (KeyError, ValueError):
            continue
    return total
