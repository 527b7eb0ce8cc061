"""GPU hygiene between jobs, which no cgroup provides: GPU memory back at its baseline after
each job, or this worker stops taking jobs. Who may use a GPU at a time (a timing job alone,
correctness-only jobs side by side) is runner/gpu_share.py; the checks before each job (stray
processes, Xid errors, slowdowns) are runner/gpu_health.py.

GPU memory is not charged to any cgroup. A process that escaped the sandbox's kill, a driver
that did not release a context, or a learner who found a way to keep an allocation alive
would leave less memory (and a possible side channel) for the next learner. So after every
job on a GPU node the worker polls NVML until each of its GPUs is back within a tolerance of
the memory it used before the first job; if not, it marks itself unhealthy, logs why, and
answers every later job with an error report that names the problem (see runner.health).
Where jobs share a GPU, the last one to leave checks, while no new job may enter.

NVML comes from `pynvml` (the nvidia-ml-py distribution); tests pass a fake with the same
four functions.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCK_DIR_ENV = "RUNNER_LOCK_DIR"
_DEVICE_INDEX = re.compile(r"^/dev/nvidia(\d+)$")


def gpu_indices(devices: Sequence[str]) -> tuple[int, ...]:
    """The GPUs a worker owns, from its RUNNER_GPU_DEVICES (/dev/nvidiaN -> N): device-node
    minor numbers, which need not be NVML's indices (nvml_index maps one to the other)."""
    found = []
    for device in devices:
        match = _DEVICE_INDEX.match(device)
        if match:
            found.append(int(match.group(1)))
    return tuple(sorted(set(found)))


def nvml_index(nvml: Any, minor: int) -> int:
    """NVML's index of the GPU whose device node is /dev/nvidia<minor> (RUNNER_GPU_DEVICES
    names device nodes; NVML numbers GPUs in PCI order, which need not match). Falls back to
    `minor` itself when NVML cannot say."""
    try:
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            if int(nvml.nvmlDeviceGetMinorNumber(handle)) == minor:
                return index
    except Exception:  # noqa: BLE001 - then the usual case: minor == index
        pass
    return minor


def nvml_index_of_minor(minor: int) -> int:
    """NVML's index of /dev/nvidia<minor>, opening NVML for the question (graders use it to
    sample the GPU they time); `minor` itself where NVML cannot be read."""
    try:
        import pynvml  # noqa: PLC0415 - GPU nodes only

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: the usual case, minor == index
        return minor
    try:
        return nvml_index(pynvml, minor)
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


@dataclass
class GpuMemoryCheck:
    """Compare each GPU's used memory with the baseline taken before this worker's first job.
    `indices` are device-node minor numbers (/dev/nvidia<N>), as RUNNER_GPU_DEVICES names
    them; NVML is asked which of its GPUs each one is."""

    indices: tuple[int, ...]
    nvml: Any = None  # the pynvml module, or a fake
    tolerance_bytes: int = 64 << 20
    settle_s: float = 10.0
    poll_s: float = 0.25
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    baseline: dict[int, int] | None = field(default=None)

    def used(self) -> dict[int, int]:
        """Bytes in use on each GPU now, from NVML."""
        nvml = self.nvml
        if nvml is None:
            import pynvml as nvml  # noqa: PLC0415 - only GPU nodes need it
        nvml.nvmlInit()
        try:
            return {
                minor: int(
                    nvml.nvmlDeviceGetMemoryInfo(
                        nvml.nvmlDeviceGetHandleByIndex(nvml_index(nvml, minor))
                    ).used
                )
                for minor in self.indices
            }
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()

    def before_job(self, *, alone: bool = True, idle_used: Mapping[int, int] | None = None) -> None:
        """Take the baseline once, before the first job this worker process runs. A job that
        entered a GPU beside other jobs cannot read it (their memory is in use): it adopts
        `idle_used`, what NVML read while no job of ours was on the GPU (runner.gpu_share),
        or, without it, leaves the baseline to a later job that enters alone."""
        if self.baseline is not None:
            return
        if alone:
            self.baseline = self.used()
        elif idle_used and all(i in idle_used for i in self.indices):
            self.baseline = {i: int(idle_used[i]) for i in self.indices}

    def after_job(self) -> str | None:
        """None when every GPU is back at its baseline (waiting up to settle_s for the driver
        to release memory); otherwise a sentence naming the GPUs that are not."""
        if self.baseline is None:
            return None
        deadline = self.clock() + self.settle_s
        while True:
            try:
                now = self.used()
            except Exception as exc:  # noqa: BLE001 - an NVML failure is itself unhealthy
                return f"NVML could not read GPU memory after the job ({exc})"
            over = {
                i: now[i] - self.baseline.get(i, 0)
                for i in self.indices
                if now.get(i, 0) - self.baseline.get(i, 0) > self.tolerance_bytes
            }
            if not over:
                return None
            if self.clock() >= deadline:
                detail = ", ".join(
                    f"GPU {i}: {mib(now[i])} in use, baseline {mib(self.baseline.get(i, 0))}"
                    for i in sorted(over)
                )
                return (
                    f"GPU memory did not return to its baseline {self.settle_s:g} s after the "
                    f"last job ended ({detail})"
                )
            self.sleep(self.poll_s)


def mib(value: int) -> str:
    return f"{value / (1 << 20):.0f} MiB"


def lock_dir() -> Path:
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    shared = Path("/run/lock")
    if shared.is_dir() and os.access(shared, os.W_OK):
        return shared / "inference-roadmap"
    from runner.broker import var_dir  # noqa: PLC0415 - avoids a cycle at import

    return var_dir() / "locks"


@contextlib.contextmanager
def exclusive_gpus(indices: Sequence[int], *, folder: Path | None = None) -> Iterator[None]:
    """Have the GPUs alone for the duration of a block, as a timing job does, so that two
    workers on one host that were given the same GPU never time on it at once (the second
    one waits, and shared jobs wait for both)."""
    from runner.gpu_share import GpuAdmission, Request  # noqa: PLC0415 - it imports this module

    with GpuAdmission(tuple(indices), folder=folder).slot(Request(exclusive=True)):
        yield
