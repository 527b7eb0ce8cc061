"""Who may use a GPU now: a timing job alone, or several correctness-only jobs side by side
when their declared memory fits (memory-aware co-scheduling).

A lab whose GPU jobs time nothing says so in lab.toml (`exclusive = false` and
`job_gpu_memory_mib`, runner/routing.py); every other job times something and takes the GPU
alone. A worker started with `gpu-workers --share N` runs up to N jobs at once, each in its own
pool process, and each job asks for its slot here first:

    admission = GpuAdmission((0,))                  # the GPUs of RUNNER_GPU_DEVICES, by minor
    with admission.slot(Request(exclusive=False, memory_bytes=2000 << 20),
                        before=lambda ticket: ..., after=lambda: ...) as ticket:
        ...                                         # run the job

- A timing job (exclusive) takes an exclusive flock on `gpu-<minor>.lock`, so it waits until
  the shared jobs there leave. While it waits, its name is in the GPU's state file and no new
  shared job starts: a stream of small jobs cannot starve it.
- A correctness-only job takes a shared flock on the same file, but only when `decide` admits
  it: no timing job running or waiting, and its declared memory fits in what NVML reports free
  minus what the shared jobs already admitted declared and do not hold yet, minus a spare
  margin. Otherwise it waits, polling; after `max_wait_s` it queues as a timing job would and
  runs alone.
- `before(ticket)` runs once the job is admitted. When the job is alone on the GPU it runs
  while nobody else can enter (under the state lock, or the exclusive flock): the checks that
  need an idle GPU (no stray processes, the memory baseline) see only what no job of ours
  holds. `after()` runs for the last job to leave, again while nobody can enter: the check
  that memory is back at its baseline is right even when jobs overlapped.

Every worker process of the host agrees through files under runner.gpu.lock_dir(): the flock
on `gpu-<minor>.lock`, and a small state file `gpu-<minor>.share.json` (shared jobs admitted
with their declared memory, timing jobs waiting, a memory check in progress, the memory used
while the GPU was idle), read and replaced under an exclusive flock on
`gpu-<minor>.share.lock`. Each entry names its process (pid and start time): an entry whose
process is gone (killed mid-job) is dropped by the next reader, and the kernel drops its flock.

A worker that owns several GPUs runs every job alone on all of them: memory fits per GPU, and
sharing across several is not worth the bookkeeping.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.gpu import lock_dir, mib, nvml_index

logger = logging.getLogger(__name__)

# Kept free beside every declaration: NVML's free memory is not all allocatable (the driver
# takes some when a context starts, allocators round up), and a job that outgrows its
# declaration by a little must not make the next one fail with out-of-memory.
DEFAULT_HEADROOM_BYTES = 512 << 20
DEFAULT_MAX_WAIT_S = 120.0
DEFAULT_POLL_S = 0.5


@dataclass(frozen=True)
class Request:
    """What a job asks of its GPU: the GPU alone (it times something), or a shared slot with
    at most `memory_bytes` of GPU memory."""

    exclusive: bool = True
    memory_bytes: int = 0


@dataclass(frozen=True)
class Reservations:
    """What the GPU is doing, as far as admitting a shared job is concerned."""

    declared_bytes: tuple[int, ...] = ()  # of each shared job admitted now
    # What those jobs hold now according to NVML (used now - used while the GPU was idle);
    # None when unknown, and then every declaration counts in full.
    held_bytes: int | None = None
    timing_running: bool = False
    timing_waiting: int = 0
    checking: bool = False  # the last job out is checking that memory came back


@dataclass(frozen=True)
class Decision:
    admit: bool
    reason: str


def decide(
    free_bytes: int,
    reservations: Reservations,
    request_bytes: int,
    *,
    headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
) -> Decision:
    """Whether a correctness-only job that declares `request_bytes` may start now beside the
    shared jobs already on the GPU, given what NVML reports free."""
    if reservations.timing_running:
        return Decision(False, "a timing job has the GPU")
    if reservations.timing_waiting:
        return Decision(False, "a timing job is waiting for the GPU, and goes first")
    if reservations.checking:
        return Decision(False, "the last job's GPU memory is being checked")
    promised = sum(reservations.declared_bytes)
    # Memory a job already holds is no longer in `free`; only what it declared and has not
    # allocated yet must be set aside. NVML cannot say which job holds what, so the total
    # held is spread over the total promised (never below zero, never above it).
    held = min(max(reservations.held_bytes or 0, 0), promised)
    room = free_bytes - (promised - held) - headroom_bytes
    others = len(reservations.declared_bytes)
    detail = (
        f"{mib(request_bytes)} asked, {mib(free_bytes)} free, {mib(promised - held)} of it "
        f"promised to {others} running job{'' if others == 1 else 's'}, "
        f"{mib(headroom_bytes)} kept spare"
    )
    if request_bytes <= room:
        return Decision(True, f"fits: {detail}")
    return Decision(False, f"not enough GPU memory: {detail}")


@dataclass
class Ticket:
    """How a job was admitted, and what its before/after hooks returned."""

    mode: str  # "exclusive", "shared", or "none" (a worker without GPUs)
    alone: bool  # no other job of ours was on the GPU when it entered
    reason: str
    waited_s: float = 0.0
    shared_with: int = 0  # other shared jobs on the GPU when it entered
    # NVML's used memory while no job of ours was on each GPU (minor -> bytes), if known.
    idle_used_bytes: dict[int, int] = field(default_factory=dict)
    before_result: Any = None
    after_result: Any = None
    token: str = ""  # names its entry in the GPU's state file

    def describe(self) -> dict[str, Any]:
        """For the report's environment: how this job shared its GPU."""
        return {
            "mode": self.mode,
            "shared_with": self.shared_with,
            "waited_s": round(self.waited_s, 3),
            "reason": self.reason,
        }


@dataclass
class GpuAdmission:
    """Admission to the GPUs `minors` (device-node minor numbers) for one job at a time of
    this process; see the module docstring. `nvml` is the pynvml module or a fake."""

    minors: tuple[int, ...]
    folder: Path | None = None
    nvml: Any = None
    headroom_bytes: int = DEFAULT_HEADROOM_BYTES
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    poll_s: float = DEFAULT_POLL_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self.minors = tuple(sorted(set(self.minors)))

    @contextlib.contextmanager
    def slot(
        self,
        request: Request,
        *,
        before: Callable[[Ticket], Any] | None = None,
        after: Callable[[], Any] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[Ticket]:
        """Wait for a slot on the GPUs, run `before(ticket)`, yield the ticket; on leaving, run
        `after()` if this job is the last one on the GPUs. Their results are on the ticket.
        `on_wait(reason)` hears each new reason to wait."""
        started = self.clock()
        if not self.minors:
            ticket = Ticket(mode="none", alone=True, reason="this worker has no GPU")
            ticket.before_result = before(ticket) if before else None
            try:
                yield ticket
            finally:
                ticket.after_result = after() if after else None
            return
        entered: tuple[Ticket, list[int]] | None = None
        if not request.exclusive and len(self.minors) == 1:
            entered, why = self._enter_shared(request, started, before, on_wait)
        else:
            why = (
                "a timing job has the GPU alone"
                if request.exclusive
                else f"this worker owns {len(self.minors)} GPUs: each job takes them all"
            )
        if entered is None:
            entered = self._enter_exclusive(why, started, before)
        ticket, fds = entered
        try:
            yield ticket
        finally:
            if ticket.mode == "shared":
                self._leave_shared(ticket, fds, after)
            else:
                try:
                    ticket.after_result = after() if after else None
                finally:
                    _release(fds)

    # -- shared ------------------------------------------------------------------------------

    def _enter_shared(
        self,
        request: Request,
        started: float,
        before: Callable[[Ticket], Any] | None,
        on_wait: Callable[[str], None] | None,
    ) -> tuple[tuple[Ticket, list[int]] | None, str]:
        """(the ticket and the held flock, "") once admitted; (None, why) to run alone."""
        minor = self.minors[0]
        token = secrets.token_hex(8)
        last_reason = ""
        while True:
            fd = self._open(f"gpu-{minor}.lock")
            admitted = False
            try:
                with self._state(minor) as state:
                    got = _try_lock(fd, fcntl.LOCK_SH)
                    memory = self._memory(minor) if got else (0, None)
                    if memory is None:
                        return None, "NVML could not read the GPU's free memory: ran alone"
                    free, used = memory
                    if got and not state.shared and not state.checking and used is not None:
                        # No job of ours on the GPU, and none draining: the idle reading.
                        state.idle_used = used
                    held = (
                        used - state.idle_used
                        if used is not None and state.idle_used is not None
                        else None
                    )
                    reservations = Reservations(
                        declared_bytes=tuple(e["memory_bytes"] for e in state.shared.values()),
                        held_bytes=held,
                        timing_running=not got,
                        timing_waiting=len(state.timing_waiting),
                        checking=state.checking is not None,
                    )
                    decision = decide(
                        free, reservations, request.memory_bytes, headroom_bytes=self.headroom_bytes
                    )
                    if decision.admit:
                        alone = not state.shared
                        ticket = Ticket(
                            mode="shared",
                            alone=alone,
                            reason=decision.reason,
                            waited_s=self.clock() - started,
                            shared_with=len(state.shared),
                            idle_used_bytes=(
                                {minor: state.idle_used} if state.idle_used is not None else {}
                            ),
                            token=token,
                        )
                        state.shared[token] = _entry(memory_bytes=request.memory_bytes)
                        state.save()
                        if alone and before:
                            # Under the state lock: nobody enters while the idle checks run.
                            try:
                                ticket.before_result = before(ticket)
                            except BaseException:
                                state.shared.pop(token, None)
                                state.save()
                                raise
                        admitted = True
                        break
            finally:
                if not admitted:
                    _release([fd])
            # Said once per kind of reason, not each time the free memory moves.
            if decision.reason.split(":")[0] != last_reason:
                last_reason = decision.reason.split(":")[0]
                logger.info("waiting for GPU %s: %s", minor, decision.reason)
                if on_wait:
                    on_wait(decision.reason)
            if self.clock() - started >= self.max_wait_s:
                return None, (
                    f"waited {self.max_wait_s:g} s for a shared slot ({decision.reason}): ran alone"
                )
            self.sleep(self.poll_s)
        if not ticket.alone and before:
            try:
                ticket.before_result = before(ticket)
            except BaseException:
                self._leave_shared(ticket, [fd], None)
                raise
        return (ticket, [fd]), ""

    def _leave_shared(
        self, ticket: Ticket, fds: list[int], after: Callable[[], Any] | None
    ) -> None:
        minor = self.minors[0]
        token = ticket.token
        try:
            with self._state(minor) as state:
                state.shared.pop(token, None)
                last = not state.shared
                if last and after:
                    # New shared jobs wait while the check runs; a timing job waits for our
                    # shared flock, which is held until the check is done.
                    state.checking = _entry(token=token)
                state.save()
            if last and after:
                try:
                    ticket.after_result = after()
                finally:
                    with self._state(minor) as state:
                        if (state.checking or {}).get("token") == token:
                            state.checking = None
                            state.save()
        finally:
            _release(fds)

    # -- exclusive ---------------------------------------------------------------------------

    def _enter_exclusive(
        self, reason: str, started: float, before: Callable[[Ticket], Any] | None
    ) -> tuple[Ticket, list[int]]:
        token = secrets.token_hex(8)
        fds: list[int] = []
        idle_used: dict[int, int] = {}
        try:
            for minor in self.minors:
                with self._state(minor) as state:
                    state.timing_waiting[token] = _entry()
                    state.save()
                fd = self._open(f"gpu-{minor}.lock")
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits for every job on this GPU to leave
                with self._state(minor) as state:
                    state.timing_waiting.pop(token, None)
                    memory = self._memory(minor, quiet=True)
                    if memory is not None and memory[1] is not None:
                        state.idle_used = memory[1]
                    if state.idle_used is not None:
                        idle_used[minor] = state.idle_used
                    state.save()
            ticket = Ticket(
                mode="exclusive",
                alone=True,
                reason=reason,
                waited_s=self.clock() - started,
                idle_used_bytes=idle_used,
            )
            if before:
                ticket.before_result = before(ticket)
            return ticket, fds
        except BaseException:
            # Interrupted (the task's time limit) or failed: leave no waiting mark behind.
            for minor in self.minors:
                with contextlib.suppress(OSError), self._state(minor) as state:
                    if state.timing_waiting.pop(token, None) is not None:
                        state.save()
            _release(fds)
            raise

    # -- files and NVML ----------------------------------------------------------------------

    def _folder(self) -> Path:
        folder = self.folder or lock_dir()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _open(self, name: str) -> int:
        return os.open(self._folder() / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    @contextlib.contextmanager
    def _state(self, minor: int) -> Iterator[_State]:
        """The GPU's state, read under its exclusive lock (held until the block ends)."""
        fd = self._open(f"gpu-{minor}.share.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield _State.load(self._folder() / f"gpu-{minor}.share.json")
        finally:
            _release([fd])

    def _memory(self, minor: int, *, quiet: bool = False) -> tuple[int, int | None] | None:
        """(free bytes, used bytes) of the GPU from NVML; None when NVML cannot say (logged
        unless `quiet`: a timing job only notes the idle reading, it needs none)."""
        nvml = self.nvml
        log = logger.debug if quiet else logger.warning
        try:
            if nvml is None:
                import pynvml as nvml  # noqa: PLC0415 - GPU nodes only
            nvml.nvmlInit()
        except Exception:  # noqa: BLE001 - then the job runs alone
            log("NVML did not start to read GPU %s's memory", minor, exc_info=True)
            return None
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(
                nvml.nvmlDeviceGetHandleByIndex(nvml_index(nvml, minor))
            )
            return int(info.free), int(info.used)
        except Exception:  # noqa: BLE001
            log("NVML could not read GPU %s's memory", minor, exc_info=True)
            return None
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()


@dataclass
class _State:
    """One GPU's state file; entries of processes that are gone are dropped on load."""

    path: Path
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing_waiting: dict[str, dict[str, Any]] = field(default_factory=dict)
    checking: dict[str, Any] | None = None
    idle_used: int | None = None

    @classmethod
    def load(cls, path: Path) -> _State:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raw = {}
        except (OSError, ValueError):
            # Written by replacement, so never half-written; unreadable means edited by hand.
            logger.warning("%s is unreadable; starting it afresh", path, exc_info=True)
            raw = {}
        if not isinstance(raw, dict):
            raw = {}
        state = cls(path=path)
        state.shared = _live(raw.get("shared"), path, "a shared job")
        state.timing_waiting = _live(raw.get("timing_waiting"), path, "a waiting timing job")
        checking = raw.get("checking")
        if isinstance(checking, dict) and _alive(checking):
            state.checking = checking
        idle = raw.get("idle_used_bytes")
        if isinstance(idle, int) and not isinstance(idle, bool) and idle >= 0:
            state.idle_used = idle
        return state

    def save(self) -> None:
        data = {
            "shared": self.shared,
            "timing_waiting": self.timing_waiting,
            "checking": self.checking,
            "idle_used_bytes": self.idle_used,
        }
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(temporary, self.path)


def _entry(**extra: Any) -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "start": _process_start(pid), "since": time.time(), **extra}


def _live(raw: Any, path: Path, what: str) -> dict[str, dict[str, Any]]:
    entries = {}
    for token, entry in (raw or {}).items() if isinstance(raw, dict) else ():
        if not isinstance(entry, dict) or not _alive(entry):
            pid = entry.get("pid") if isinstance(entry, dict) else "?"
            logger.warning("%s: dropped %s of process %s, which is gone", path, what, pid)
            continue
        memory = entry.get("memory_bytes", 0)
        if isinstance(memory, bool) or not isinstance(memory, int):
            entry["memory_bytes"] = 0
        entries[str(token)] = entry
    return entries


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22): with
    the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(entry: dict[str, Any]) -> bool:
    pid = entry.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    start = _process_start(pid)
    if start is None:
        return False
    return entry.get("start") in (None, start)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _release(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)
