"""The trusted steps between fork and exec of every sandbox: join its cgroup, set resource
limits, make the interpreter reachable, and drop root before bubblewrap starts.

A worker that runs as root must not run learner code as root: bwrap's `--uid` only renames
the user inside a user namespace, and the process would still be uid 0 on the host (a kernel
escape would then be a root escape). So the launcher switches to an unprivileged uid (65534,
"nobody", or RUNNER_SANDBOX_UID) *before* exec'ing bwrap, which then builds its namespaces as
that user, like on any desktop.

That user may be unable to reach some of what the sandbox binds: a Python under /root
(pyenv) or a checkout in a private home. While still root, in a mount namespace of its own
that nobody else sees, the launcher covers each unreachable ancestor (say /root) with a small
tmpfs and binds just the needed folder back at the same path; bwrap, as the unprivileged
user, then finds every path where it expects it.

Everything is computed in the parent; the launcher itself only makes system calls. A failure
prints one line on the sandbox's stderr and exits 127: the learner's code never starts.
"""

from __future__ import annotations

import ctypes
import os
import resource
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_CLONE_NEWNS = 0x00020000
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18

LAUNCH_FAILED = 127

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Staging:
    """Cover `ancestor` with a tmpfs and bind each of `sources` back at its own path."""

    ancestor: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Launch:
    """The preexec_fn of a sandbox. Frozen, hashable data; called in the forked child."""

    rlimits: tuple[tuple[int, int, int], ...] = ()
    cgroup_procs: str | None = None
    cpus: frozenset[int] | None = None
    uid: int | None = None
    gid: int | None = None
    staging: tuple[Staging, ...] = field(default=())

    def __call__(self) -> None:
        step = "starting"
        try:
            if self.cgroup_procs:
                # First, so that everything after (bwrap, the learner's processes) is inside.
                step = f"joining the cgroup {self.cgroup_procs}"
                with open(self.cgroup_procs, "w") as procs:
                    procs.write(str(os.getpid()))
            step = "setting resource limits"
            for which, soft, hard in self.rlimits:
                resource.setrlimit(which, (soft, hard))
            if self.cpus:
                os.sched_setaffinity(0, self.cpus)
            if self.staging:
                step = "making the Python environment reachable for the sandbox user"
                _stage(self.staging)
            if self.uid is not None:
                step = f"switching to uid {self.uid}"
                gid = self.uid if self.gid is None else self.gid
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(self.uid, self.uid, self.uid)
                if os.getuid() != self.uid or os.geteuid() != self.uid or os.getgroups():
                    raise OSError("the switch did not take")
        except BaseException as exc:  # noqa: BLE001 - the child must never run on
            os.write(2, f"sandbox launcher failed while {step}: {exc}\n".encode())
            os._exit(LAUNCH_FAILED)


def rlimits(
    *,
    cpu_seconds: int,
    file_size_bytes: int,
    data_bytes: int | None,
    max_processes: int | None,
) -> tuple[tuple[int, int, int], ...]:
    """(resource, soft, hard) triples, never above the worker's own hard limits."""
    wanted = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5),
        (resource.RLIMIT_FSIZE, file_size_bytes, file_size_bytes),
    ]
    if data_bytes:
        wanted.append((resource.RLIMIT_DATA, data_bytes, data_bytes))
    if max_processes:
        wanted.append((resource.RLIMIT_NPROC, max_processes, max_processes))
    limited = []
    for which, soft, hard in wanted:
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)
            soft = min(soft, hard)
        limited.append((which, soft, hard))
    return tuple(limited)


def plan_staging(sources: Iterable[str], *, uid: int, gid: int) -> tuple[Staging, ...]:
    """For each source below a folder `uid` cannot search, the staging that makes it
    reachable; grouped by the highest such folder. Sources are real paths (no links)."""
    groups: dict[str, list[str]] = {}
    for source in sorted(set(sources)):
        blocked = _first_blocked_ancestor(source, uid=uid, gid=gid)
        if blocked is not None:
            groups.setdefault(blocked, []).append(source)
    plan = []
    for ancestor, members in sorted(groups.items()):
        # A source inside another one comes along with it.
        kept = [m for m in members if not any(m.startswith(o + "/") for o in members if o != m)]
        plan.append(Staging(ancestor=ancestor, sources=tuple(kept)))
    return tuple(plan)


def can_search(path: str, *, uid: int, gid: int) -> bool:
    """Whether `uid` (with only group `gid`) may pass through the folder `path`."""
    if uid == 0:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _first_blocked_ancestor(path: str, *, uid: int, gid: int) -> str | None:
    parts = [p for p in path.split("/") if p]
    current = "/"
    for part in parts[:-1]:
        if not can_search(current, uid=uid, gid=gid):
            return current if current != "/" else None
        current = os.path.join(current, part)
    if not can_search(current, uid=uid, gid=gid):
        return current if current != "/" else None
    return None


def _stage(plan: Sequence[Staging]) -> None:
    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Private: nothing mounted below propagates back to the host's mount namespace.
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    for staging in plan:
        # Opened after unshare: a bind source must belong to this mount namespace.
        held = [(s, os.open(s, os.O_PATH | os.O_CLOEXEC)) for s in staging.sources]
        _check(
            _libc.mount(
                b"tmpfs",
                staging.ancestor.encode(),
                b"tmpfs",
                _MS_NOSUID | _MS_NODEV,
                b"mode=0755,size=1m",
            ),
            f"covering {staging.ancestor}",
        )
        for source, fd in held:
            os.makedirs(os.path.dirname(source), exist_ok=True)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.makedirs(source, exist_ok=True)
            else:
                os.close(os.open(source, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            _check(
                _libc.mount(
                    f"/proc/self/fd/{fd}".encode(), source.encode(), None, _MS_BIND | _MS_REC, None
                ),
                f"binding {source}",
            )
            os.close(fd)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
