"""The life of a sandboxed process tree, once started: kill it whole and wait until nothing
of it runs, then say in a learner's words how it ended (a limit, a signal, an exit code).

Split from runner.sandbox, which builds and starts sandboxes; both are imported from there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
from typing import TYPE_CHECKING

from runner import proctree

if TYPE_CHECKING:
    from runner.cgroup import SandboxCgroup
    from runner.sandbox import ResourceLimits

logger = logging.getLogger(__name__)


class SandboxProcess(subprocess.Popen):
    """A Popen that remembers its cgroup and limits, for kill() and describe_end()."""

    cgroup: SandboxCgroup | None = None
    limits: ResourceLimits | None = None
    cgroup_events: dict[str, int] | None = None
    sandboxed: bool = False
    # A pidfd of the sandbox's init (its PID namespace's pid 1), which exits only once every
    # process in the namespace is gone.
    init_pidfd: int | None = None


def kill(process: subprocess.Popen) -> None:
    """Kill the process, its cgroup, its group and every descendant; reap it; remove its
    cgroup. Safe to call more than once."""
    cgroup = getattr(process, "cgroup", None)
    if cgroup is not None:
        cgroup.kill()
    tree: list[int] = []
    if process.poll() is None:
        # Collect the tree first: once the root dies its children are reparented away.
        tree = proctree.signal_tree(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    # bwrap's own process dies at once, but the sandbox's PID namespace is torn down after
    # it: its init exits only once every process inside is gone. Wait for that, so that when
    # kill() returns nothing of the sandbox runs any more.
    still = proctree.wait_gone(tree)
    pidfd = getattr(process, "init_pidfd", None)
    if pidfd is not None:
        process.init_pidfd = None
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # its namespace dies with it
        ready, _, _ = select.select([pidfd], [], [], 5)
        if not ready:
            still.append(-1)
        os.close(pidfd)
    if still:
        logger.warning("sandbox processes %s survived SIGKILL for 5 s", still)
    if cgroup is not None:
        cgroup.remove()
        process.cgroup_events = cgroup.events
        process.cgroup = None


def init_pidfd_from(info_fd: int) -> int | None:
    """Read bwrap's --info-fd JSON and open a pidfd of the sandbox's init; None if bwrap
    ended before saying (it then failed to start, and there is nothing to wait for)."""
    data = b""
    try:
        while len(data) < 4096:
            ready, _, _ = select.select([info_fd], [], [], 10)
            chunk = os.read(info_fd, 4096) if ready else b""
            if not chunk:
                break
            data += chunk
            with contextlib.suppress(ValueError):
                pid = json.loads(data)["child-pid"]
                return os.pidfd_open(int(pid))
    except (OSError, KeyError, TypeError, ValueError):
        return None
    finally:
        os.close(info_fd)
    return None


def describe_exit(returncode: int | None) -> str:
    """A learner-facing phrase for how a sandboxed process ended."""
    if returncode is None:
        return "is still running"
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    reasons = {
        signal.SIGXCPU: "it used up its CPU-time limit",
        signal.SIGXFSZ: "it wrote more than its file-size limit",
        signal.SIGKILL: "by a limit, or by code of its own",
        signal.SIGSEGV: "it crashed (segmentation fault)",
        signal.SIGABRT: "it aborted",
    }
    name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else number
    reason = reasons.get(number)
    return f"was killed by signal {name}" + (f" ({reason})" if reason else "")


def describe_end(process: subprocess.Popen) -> str:
    """describe_exit, told by the cgroup when a limit did it, and reading bwrap's 128+N."""
    events = getattr(process, "cgroup_events", None)
    cgroup = getattr(process, "cgroup", None)
    if cgroup is not None:
        with contextlib.suppress(OSError):
            events = cgroup.read_events()
    limits = getattr(process, "limits", None)
    if events and events.get("oom_kill") and limits:
        return (
            f"was stopped because it used more than its memory limit of "
            f"{format_bytes(limits.memory_bytes)}"
        )
    code = process.returncode
    # bwrap exits with 128 + N when the sandboxed program was killed by signal N.
    if getattr(process, "sandboxed", False) and code is not None and 128 < code < 160:
        code = -(code - 128)
    phrase = describe_exit(code)
    if events and events.get("pids_max") and limits:
        phrase += f" (it also hit its limit of {limits.max_processes} processes)"
    return phrase


def format_bytes(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value} bytes"
