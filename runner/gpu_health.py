"""GPU checks before each job on a GPU node: no stray processes, no new critical Xid error,
and, before a timing job, no clock slowdown that would spoil the measurement.

The memory check after each job (runner/gpu.py: GpuMemoryCheck) finds what a job left
behind; these find what went wrong on the node itself. A failed check is a *problem*: the
pipeline marks the worker unhealthy (runner/health.py), the job is answered with an error that
says it is not the learner's fault, and the heartbeat says why (runner/heartbeat.py). What
does not stop the worker is a *note*: on the job's report (`environment.gpu_slot`), or on the
worker's heartbeat when it concerns every job (a check this node cannot make).

    check = GpuHealthCheck(indices=(0,))             # device-node minors, as RUNNER_GPU_DEVICES
    verdict = check.before_job(alone=True, timing=True)
    verdict.problem   # None, or a sentence for the operator
    verdict.notes     # things worth saying in the report

1. **Stray processes** (only when no other job of ours is on the GPU): any compute process
   NVML lists on the GPU (`nvmlDeviceGetComputeRunningProcesses`). Between jobs nothing of
   ours runs there, so a process is one that escaped a sandbox, or another program on a GPU
   that is meant to be ours. The previous job's processes may still be exiting: the check
   waits up to `settle_s` for them to go before it fails.
2. **Xid errors**: each process registers for `nvmlEventTypeXidCriticalError` on its GPUs at
   its first check and, before each job, drains the events since the last one (a wait of
   0 ms). The Xids that NVIDIA's catalogue lists as usually caused by the running application
   (13, 31, 43, 45: an exception or an illegal address in a kernel, the channel reset and
   clean-up after it) are what a learner's buggy kernel raises: they are logged, not held
   against the node. Any other Xid is a problem. Where NVML cannot register for the events
   (some virtualised GPUs), the worker says so once in a note and skips this check.
3. **Slowdowns before a timing job**: the clocks-event reasons that cut the clocks of an idle
   GPU (HwSlowdown, HwThermalSlowdown, HwPowerBrakeSlowdown, SwThermalSlowdown). The check
   waits up to `throttle_wait_s` for them to clear. A software thermal slowdown that stays
   (a hot card that the driver slows down) is graded anyway, with a note: the grader's own
   telemetry says whether it lasted into the measurement and flags the timing. A hardware
   slowdown that stays is a problem: the hardware holds the clocks down (power supply,
   a thermal or power-brake signal), every timing on that GPU would be wrong, and it does not
   pass by itself. The worker then stops taking any job, not only timing jobs: queues do not
   separate timing from correctness-only jobs, so it cannot pick, and a worker that stops
   consuming leaves the jobs to healthy GPUs instead of answering them with errors.

NVML stays open in the process once the first check opens it (the event sets need it), so a
healthy check is three or four NVML calls per GPU: well under 50 ms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.gpu import mib, nvml_index
from runner.health import WORKER_HEALTH
from runner.measure.telemetry import current_reasons, reason_names

logger = logging.getLogger(__name__)

XID_CRITICAL_EVENT = 0x8  # pynvml.nvmlEventTypeXidCriticalError
NVML_ERROR_NOT_SUPPORTED = 3  # pynvml.NVML_ERROR_NOT_SUPPORTED
NVML_ERROR_TIMEOUT = 10  # pynvml.NVML_ERROR_TIMEOUT: no event waiting
# NVIDIA's Xid catalogue: usually the application's doing (a fault in its kernel), not the node's.
APPLICATION_XIDS = frozenset({13, 31, 43, 45})
# A few critical Xids by name, so that the problem says what it is.
XID_MEANINGS = {
    48: "a double-bit ECC error",
    63: "an ECC page retirement or row remapping",
    64: "a failed row remapping",
    74: "an NVLink error",
    79: "the GPU has fallen off the bus",
    92: "a high single-bit ECC error rate",
    94: "a contained ECC error",
    95: "an uncontained ECC error",
    119: "a GSP firmware timeout",
    120: "a GSP firmware error",
}
HARDWARE_SLOWDOWNS = frozenset({"HwSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown"})
SOFTWARE_SLOWDOWNS = frozenset({"SwThermalSlowdown"})
# Events drained per check at most: a fake or a driver that never says "no more" cannot hang it.
MAX_EVENTS_PER_CHECK = 256


@dataclass(frozen=True)
class HealthVerdict:
    problem: str | None = None
    notes: tuple[str, ...] = ()


@dataclass
class GpuHealthCheck:
    """The checks above for the GPUs `indices` (device-node minor numbers). One per worker
    process: it keeps NVML open and its Xid event sets between jobs."""

    indices: tuple[int, ...]
    nvml: Any = None  # the pynvml module, or a fake
    settle_s: float = 5.0
    throttle_wait_s: float = 30.0
    poll_s: float = 0.25
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # Where a note about the node (not about one job) goes: the heartbeat's, by default.
    note: Callable[[str], None] = field(default=WORKER_HEALTH.note)
    _handles: dict[int, Any] = field(default_factory=dict, repr=False)
    _events: dict[int, Any] = field(default_factory=dict, repr=False)

    def before_job(self, *, alone: bool, timing: bool) -> HealthVerdict:
        """Check the GPUs before a job: stray processes only when `alone` (no other job of
        ours on the GPU), slowdowns only for a `timing` job."""
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - a GPU node whose NVML fails cannot be checked
            return HealthVerdict(problem=f"NVML did not start for the GPU check ({exc})")
        notes: list[str] = []
        problem = self.xid_errors()
        if problem is None and alone:
            problem = self.stray_processes()
        if problem is None and timing:
            problem = self.slowdowns(notes)
        return HealthVerdict(problem=problem, notes=tuple(notes))

    # -- the checks ---------------------------------------------------------------------------

    def xid_errors(self) -> str | None:
        """A sentence naming the critical Xid errors since the last check, or None."""
        found: list[str] = []
        for minor, events in self._events.items():
            if events is None:
                continue
            wait = getattr(self.nvml, "nvmlEventSetWait_v2", None) or self.nvml.nvmlEventSetWait
            for _ in range(MAX_EVENTS_PER_CHECK):
                try:
                    data = wait(events, 0)
                except Exception as exc:  # noqa: BLE001 - NVMLError_Timeout: nothing new
                    if getattr(exc, "value", None) == NVML_ERROR_TIMEOUT:
                        break
                    return f"NVML could not read GPU {minor}'s Xid errors ({_describe(exc)})"
                xid = int(getattr(data, "eventData", 0))
                if xid in APPLICATION_XIDS:
                    logger.info("GPU %s reported Xid %s (a job's own fault, as a rule)", minor, xid)
                    continue
                meaning = XID_MEANINGS.get(xid)
                found.append(f"GPU {minor}: Xid {xid}" + (f" ({meaning})" if meaning else ""))
        if not found:
            return None
        return (
            f"the GPU reported a critical error since the last job ({'; '.join(found)}); "
            "NVIDIA's Xid catalogue says what it needs (the kernel log names it too: "
            "dmesg | grep Xid)"
        )

    def stray_processes(self) -> str | None:
        """None when no compute process is on the GPUs (waiting up to settle_s for the last
        job's processes to exit); otherwise a sentence naming each PID and its memory."""
        deadline = self.clock() + self.settle_s
        while True:
            found: dict[int, list[Any]] = {}
            for minor, handle in self._handles.items():
                try:
                    processes = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except Exception as exc:  # noqa: BLE001
                    if getattr(exc, "value", None) == NVML_ERROR_NOT_SUPPORTED:
                        self.note(
                            f"NVML cannot list GPU {minor}'s processes here ({exc}): "
                            "this worker does not check for stray processes"
                        )
                        continue
                    return f"NVML could not list GPU {minor}'s processes ({_describe(exc)})"
                if processes:
                    found[minor] = list(processes)
            if not found:
                return None
            if self.clock() >= deadline:
                break
            self.sleep(self.poll_s)
        detail = "; ".join(
            f"GPU {minor}: " + ", ".join(_process(p) for p in processes)
            for minor, processes in sorted(found.items())
        )
        return (
            f"processes that no job of this worker runs were on the GPU {self.settle_s:g} s "
            f"after the last job ended ({detail}): a process that escaped its sandbox, or "
            "another program on a GPU that should be this worker's alone"
        )

    def slowdowns(self, notes: list[str]) -> str | None:
        """Wait up to throttle_wait_s for the slowdowns that spoil a timing to clear; a
        hardware one that stays is a problem, a software thermal one a note."""
        started = self.clock()
        while True:
            active: dict[int, set[str]] = {}
            for minor, handle in self._handles.items():
                try:
                    names = set(reason_names(current_reasons(self.nvml, handle)))
                except Exception as exc:  # noqa: BLE001 - telemetry, not a reason to fail
                    self.note(
                        f"NVML cannot read GPU {minor}'s clocks-event reasons ({exc}): "
                        "timing jobs start without checking for slowdowns"
                    )
                    continue
                spoiling = names & (HARDWARE_SLOWDOWNS | SOFTWARE_SLOWDOWNS)
                if spoiling:
                    active[minor] = spoiling
            waited = self.clock() - started
            if not active:
                if waited > 0:
                    notes.append(
                        f"waited {waited:.1f} s for the GPU to leave a clock slowdown before timing"
                    )
                return None
            if waited >= self.throttle_wait_s:
                break
            self.sleep(self.poll_s)
        hardware = {m: names & HARDWARE_SLOWDOWNS for m, names in active.items()}
        if any(hardware.values()):
            detail = ", ".join(
                f"GPU {m}: {' and '.join(sorted(names))}"
                for m, names in sorted(hardware.items())
                if names
            )
            return (
                f"the GPU stayed in a hardware slowdown for {self.throttle_wait_s:g} s before a "
                f"timing job ({detail}): the hardware holds its clocks down (power supply, a "
                "thermal or power-brake signal), so no timing on it would mean anything "
                "(nvidia-smi -q -d PERFORMANCE shows it)"
            )
        detail = ", ".join(f"GPU {m}: {' and '.join(sorted(n))}" for m, n in sorted(active.items()))
        notes.append(
            f"the GPU was still slowed down after {self.throttle_wait_s:g} s ({detail}, the "
            "driver cooling a hot card); graded anyway: the timing's telemetry says whether "
            "the slowdown lasted into the measurement"
        )
        return None

    # -- NVML ----------------------------------------------------------------------------------

    def _open(self) -> None:
        """Start NVML once for this process, find the GPUs, register for Xid events."""
        if self._handles:
            return
        if self.nvml is None:
            import pynvml  # noqa: PLC0415 - GPU nodes only

            self.nvml = pynvml
        self.nvml.nvmlInit()
        handles = {
            minor: self.nvml.nvmlDeviceGetHandleByIndex(nvml_index(self.nvml, minor))
            for minor in self.indices
        }
        for minor, handle in handles.items():
            try:
                events = self.nvml.nvmlEventSetCreate()
                self.nvml.nvmlDeviceRegisterEvents(handle, XID_CRITICAL_EVENT, events)
            except Exception as exc:  # noqa: BLE001 - NotSupported on some virtual GPUs
                self.note(
                    f"NVML cannot report GPU {minor}'s Xid errors here ({_describe(exc)}): "
                    "this worker does not watch for them"
                )
                events = None
            self._events[minor] = events
        self._handles = handles


def _process(process: Any) -> str:
    used = getattr(process, "usedGpuMemory", None)
    memory = f"{mib(int(used))} in use" if isinstance(used, int) else "memory not reported"
    return f"PID {getattr(process, 'pid', '?')} ({memory})"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
