"""One cgroup v2 per sandbox: a memory limit with no swap, a process limit, and a kill that
takes every process in it, however it was started.

Layout: a *parent* cgroup that the worker may write to (`RUNNER_CGROUP_PARENT`, or, for a
root worker, `<cgroup2 mount>/inference-roadmap`, created on first use) with the memory and
pids controllers enabled for its children, and one child `sandbox-<worker pid>-<random>` per
sandboxed process tree. The trusted launcher (runner.launch) moves the sandbox's first
process into the child before it execs bwrap, so everything the learner starts is counted and
killed with it. Children left by dead worker processes are swept before each new one.

Every path here is a parameter, so tests can run the same code against a fake cgroup folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

AUTO_NAME = "inference-roadmap"
CHILD_PREFIX = "sandbox-"
NEEDED = ("memory", "pids")


@dataclass(frozen=True)
class CgroupSupport:
    """Whether per-sandbox cgroups can be used here, and why (not)."""

    available: bool
    reason: str
    parent: Path | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "available": self.available,
            "reason": self.reason,
            "parent": str(self.parent) if self.parent else None,
        }


def prepare(
    setting: str | None,
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    euid: int | None = None,
) -> CgroupSupport:
    """Find (and, where allowed, create) the parent cgroup for sandboxes.

    `setting` is RUNNER_CGROUP_PARENT: None or "" for automatic, "off" to disable, or a path.
    Never raises: anything missing comes back as an unavailable CgroupSupport with a reason
    an operator can act on.
    """
    if setting == "off":
        return CgroupSupport(False, "cgroup limits are turned off (RUNNER_CGROUP_PARENT=off)")
    mount = cgroup2_mount(mountinfo)
    if mount is None:
        return CgroupSupport(
            False, "no cgroup v2 hierarchy is mounted (this host uses cgroup v1 only)"
        )
    euid = os.geteuid() if euid is None else euid
    if setting:
        parent = Path(setting)
        if not _inside(parent, mount):
            return CgroupSupport(False, f"RUNNER_CGROUP_PARENT={setting} is not under {mount}")
    elif euid != 0:
        return CgroupSupport(
            False,
            "the worker is not root and RUNNER_CGROUP_PARENT names no delegated cgroup "
            "(see docs/security.md)",
        )
    else:
        parent = mount / AUTO_NAME
    try:
        return _prepare_parent(parent, mount)
    except OSError as exc:
        return CgroupSupport(False, f"cannot set up {parent}: {exc.strerror or exc}")


def _prepare_parent(parent: Path, mount: Path) -> CgroupSupport:
    # The controllers a new cgroup gets are the ones its parent enables in subtree_control.
    offered = parent / "cgroup.controllers" if parent.is_dir() else None
    source = offered or parent.parent / "cgroup.subtree_control"
    missing = [c for c in NEEDED if c not in _words(source)]
    if missing:
        hint = ""
        if any(c not in _words(mount / "cgroup.controllers") for c in missing):
            hint = " (on this host they are attached to cgroup v1, a 'hybrid' setup)"
        return CgroupSupport(
            False,
            f"the cgroup v2 hierarchy at {mount} does not offer the "
            f"{' and '.join(missing)} controller{'s' if len(missing) > 1 else ''} to "
            f"{parent}{hint}",
        )
    parent.mkdir(mode=0o755, exist_ok=True)
    enabled = _words(parent / "cgroup.subtree_control")
    wanted = [c for c in NEEDED if c not in enabled]
    if wanted:
        try:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            why = (
                "it holds processes itself; move them into a child cgroup"
                if exc.errno == errno.EBUSY
                else exc.strerror or str(exc)
            )
            return CgroupSupport(
                False, f"cannot enable {' and '.join(wanted)} for the children of {parent}: {why}"
            )
    sweep_stale(parent)
    return CgroupSupport(
        True,
        f"cgroup v2 under {parent}: memory (no swap) and process limits per sandbox",
        parent,
    )


def cgroup2_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """The first cgroup2 mount point in mountinfo (e.g. /sys/fs/cgroup, or .../unified)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype == "cgroup2":
            # mountinfo escapes spaces and the like as octal (\040).
            return Path(fields[4].encode().decode("unicode_escape"))
    return None


class SandboxCgroup:
    """The cgroup of one sandbox: create it, let the launcher join it, kill it, remove it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: dict[str, int] = {}

    @classmethod
    def create(
        cls, parent: Path, *, memory_bytes: int | None, max_processes: int | None
    ) -> SandboxCgroup:
        # A Celery pool process killed mid-job leaves its (emptied) cgroups behind.
        sweep_stale(parent)
        path = parent / f"{CHILD_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o755)
        cgroup = cls(path)
        try:
            if memory_bytes:
                _write(path / "memory.max", str(memory_bytes))
                # Without swap accounting (kernel option) the file is absent: nothing to limit.
                if (path / "memory.swap.max").exists():
                    _write(path / "memory.swap.max", "0")
            if max_processes:
                _write(path / "pids.max", str(max_processes))
        except BaseException:
            cgroup.remove()
            raise
        return cgroup

    @property
    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def pids(self) -> list[int]:
        return [int(p) for p in _words(self.procs_file) if p.isdigit()]

    def read_events(self) -> dict[str, int]:
        """oom_kill (processes killed for memory) and pids_max (forks refused), cumulative."""
        memory = _keyed(self.path / "memory.events")
        pids = _keyed(self.path / "pids.events")
        return {"oom_kill": memory.get("oom_kill", 0), "pids_max": pids.get("max", 0)}

    def kill(self) -> None:
        """SIGKILL every process in the cgroup (cgroup.kill, Linux 5.14+; else one by one)."""
        if not self.path.is_dir():
            return
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                _write(kill_file, "1")
                return
        # Older kernels: freeze so nothing forks between reading the list and killing it.
        freeze = self.path / "cgroup.freeze"
        with contextlib.suppress(OSError):
            _write(freeze, "1")
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            _write(freeze, "0")

    def remove(self, *, timeout_s: float = 5.0) -> bool:
        """Kill what is left, wait until it is empty and remove it; False if it stayed."""
        if not self.path.is_dir():
            return True
        with contextlib.suppress(OSError):
            self.events = self.read_events()
        self.kill()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                # EBUSY: killed processes are still exiting (a process in D state can take a
                # while); anything else will not get better by waiting.
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    logger.warning("could not remove cgroup %s: %s", self.path, exc)
                    return False
            time.sleep(0.01)
            self.kill()


def sweep_stale(parent: Path) -> list[Path]:
    """Remove the sandbox cgroups of workers that died without cleaning up."""
    removed = []
    with contextlib.suppress(OSError):
        for child in parent.iterdir():
            owner = _owner(child.name)
            if owner is None or owner == os.getpid() or _alive(owner):
                continue
            if SandboxCgroup(child).remove(timeout_s=1):
                removed.append(child)
    return removed


def _owner(name: str) -> int | None:
    if not name.startswith(CHILD_PREFIX):
        return None
    pid = name[len(CHILD_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _inside(path: Path, root: Path) -> bool:
    path, root = Path(os.path.normpath(path)), Path(os.path.normpath(root))
    return path == root or root in path.parents


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _keyed(path: Path) -> dict[str, int]:
    values = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return values
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def _write(path: Path, value: str) -> None:
    # cgroupfs wants one write per value; no O_CREAT on a real cgroup (tests use a folder).
    with open(path, "w") as handle:
        handle.write(value)


def _rmdir(path: Path) -> None:
    """rmdir on cgroupfs removes the interface files with the folder; tests replace this."""
    os.rmdir(path)
