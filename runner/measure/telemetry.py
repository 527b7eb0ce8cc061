"""What the GPU was doing while a measurement ran: clocks, temperature, power, utilisation and
the reasons NVML gives for clocks below their maximum, sampled by a background thread.

A measurement taken while the GPU slowed itself down (too hot, at its power cap, a hardware
slowdown) says more about the machine room than about the kernel, so the summary flags it.
Telemetry is evidence, never a reason to fail: a field NVML cannot read is left out (None)
and a node without NVML gets a summary that says telemetry was unavailable and why.

NVML comes from `pynvml` (the nvidia-ml-py distribution); tests pass a fake module. `index` is
NVML's device index, which is not CUDA's when CUDA_VISIBLE_DEVICES reorders devices.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any

# nvmlClocksEventReason* bits (nvidia-ml-py 13.615, pynvml.py; the same values as the
# deprecated nvmlClocksThrottleReason* names, which also have BoardLimit and Reliability).
CLOCK_EVENT_REASONS = {
    0x1: "GpuIdle",
    0x2: "ApplicationsClocksSetting",
    0x4: "SwPowerCap",
    0x8: "HwSlowdown",
    0x10: "SyncBoost",
    0x20: "SwThermalSlowdown",
    0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown",
    0x100: "DisplayClockSetting",
    0x200: "BoardLimit",
    0x400: "Reliability",
}

# Reasons that lower clocks below what the card does when healthy and cool, and so spoil a
# timing. GpuIdle (nothing running: between calls), ApplicationsClocksSetting and
# DisplayClockSetting (an operator's fixed clocks, the same for every run) and SyncBoost (a
# group of GPUs kept at one clock) describe the node rather than an accident during the run.
SPOILING_REASONS = frozenset(
    {
        "SwPowerCap",
        "HwSlowdown",
        "SwThermalSlowdown",
        "HwThermalSlowdown",
        "HwPowerBrakeSlowdown",
        "BoardLimit",
        "Reliability",
    }
)

NVML_CLOCK_SM = 1  # pynvml.NVML_CLOCK_SM
NVML_CLOCK_MEM = 2  # pynvml.NVML_CLOCK_MEM
NVML_TEMPERATURE_GPU = 0  # pynvml.NVML_TEMPERATURE_GPU


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the sampler started
    sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    temperature_c: int | None
    power_w: float | None
    gpu_utilization_pct: int | None
    memory_utilization_pct: int | None
    clock_event_reasons: int | None  # NVML's bitmask


FIELDS = tuple(f.name for f in fields(Sample) if f.name not in ("t_s", "clock_event_reasons"))


def reason_names(mask: int) -> list[str]:
    """The names of the bits set in a clocks-event-reasons mask; unknown bits as hex."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(f"unknown 0x{unknown:x}")
    return names


class TelemetrySampler:
    """Sample one GPU every `interval_s` seconds from a background thread, from start() (or
    entering the `with` block) until stop() (or leaving it); then summary().

    One sample is taken at start and one at stop, so even a short measurement has two.
    """

    def __init__(
        self,
        nvml: Any = None,
        index: int = 0,
        *,
        interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.nvml = nvml
        self.index = index
        self.interval_s = interval_s
        self.clock = clock
        self.unavailable: str | None = None  # why there is no telemetry, when there is none
        self.errors: dict[str, str] = {}  # field -> first error reading it
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        self._started_at = 0.0
        self._stopped_at: float | None = None
        self._state = "new"

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> TelemetrySampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> TelemetrySampler:
        if self._state != "new":
            raise RuntimeError("a TelemetrySampler is started once")
        self._state = "running"
        self._started_at = self.clock()
        if self.nvml is None:
            try:
                import pynvml  # noqa: PLC0415 - GPU nodes only
            except ImportError as exc:
                return self._give_up(f"pynvml (nvidia-ml-py) is not installed ({exc})")
            self.nvml = pynvml
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError subclasses vary by driver
            return self._give_up(f"NVML did not start ({_describe(exc)})")
        try:
            self._handle = self.nvml.nvmlDeviceGetHandleByIndex(self.index)
        except Exception as exc:  # noqa: BLE001
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
            return self._give_up(f"NVML has no GPU {self.index} ({_describe(exc)})")
        self._record()
        self._thread = threading.Thread(
            target=self._run, name=f"telemetry-gpu{self.index}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (idempotent): end the thread, take a last sample, release NVML."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        self._stop.set()
        if self._thread is not None:
            # An NVML call can hang on a GPU that fell off the bus; do not hang with it.
            self._thread.join(timeout=max(5.0, 10 * self.interval_s))
            if self._thread.is_alive():
                with self._lock:
                    self.errors.setdefault("sampler", "the sampling thread did not stop in time")
                self._handle = None  # it is inside NVML: neither sample nor shut down
            self._thread = None
        if self._handle is not None:
            self._record()
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
            self._handle = None
        self._stopped_at = self.clock()

    def _give_up(self, reason: str) -> TelemetrySampler:
        self.unavailable = reason
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._record()

    # -- sampling ---------------------------------------------------------------------------

    def _record(self) -> None:
        values = read_values(self.nvml, self._handle, self._read)
        sample = Sample(t_s=self.clock() - self._started_at, **values)
        with self._lock:
            self._samples.append(sample)

    def _read(self, field: str, read: Callable[[], Any]) -> Any:
        """One reading, or None when NVML cannot give it (the first error is kept)."""
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - NotSupported, NoPermission, missing call...
            with self._lock:
                self.errors.setdefault(field, _describe(exc))
            return None

    # -- results ----------------------------------------------------------------------------

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def summary(self) -> dict[str, Any]:
        """n, per field min/median/max (None when never read), the clocks-event reasons seen
        and how often, and `throttled` with a note when a reason that spoils a timing was
        seen. Every key is always present; `available` is false (with `reason`) without
        NVML, and then `throttled` is false because nothing is known."""
        with self._lock:
            samples = list(self._samples)
            errors = dict(sorted(self.errors.items()))
        end = self._stopped_at if self._stopped_at is not None else self.clock()
        result: dict[str, Any] = {
            "available": self.unavailable is None,
            "reason": self.unavailable,
            "index": self.index,
            "interval_s": self.interval_s,
            "n": len(samples),
            "duration_s": max(0.0, end - self._started_at) if self._state != "new" else 0.0,
        }
        for name in FIELDS:
            values = [v for v in (getattr(s, name) for s in samples) if v is not None]
            result[name] = (
                {"min": min(values), "median": statistics.median(values), "max": max(values)}
                if values
                else None
            )
        counts: Counter[str] = Counter()
        read = [s.clock_event_reasons for s in samples if s.clock_event_reasons is not None]
        for mask in read:
            counts.update(reason_names(mask))
        spoilers = sorted(name for name in counts if name in SPOILING_REASONS)
        result["clock_event_reasons"] = sorted(counts)
        result["clock_event_reason_counts"] = dict(sorted(counts.items()))
        result["throttled"] = bool(spoilers)
        result["throttle_note"] = (
            "The GPU lowered its clocks during the measurement ("
            + ", ".join(f"{name} in {counts[name]} of {len(read)} samples" for name in spoilers)
            + "), so these times may be slower than this GPU is when it is not throttled."
            if spoilers
            else None
        )
        result["unreadable"] = errors
        return result


def read_values(
    nvml: Any, handle: Any, read: Callable[[str, Callable[[], Any]], Any]
) -> dict[str, Any]:
    """One reading of every Sample field but t_s. `read(field, call)` makes each NVML call
    and returns None (keeping the error) when NVML cannot give that field."""

    def utilization() -> tuple[int, int]:
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        return int(rates.gpu), int(rates.memory)

    rates = read("utilization", utilization)
    return {
        "sm_clock_mhz": read(
            "sm_clock_mhz", lambda: int(nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM))
        ),
        "memory_clock_mhz": read(
            "memory_clock_mhz", lambda: int(nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_MEM))
        ),
        "temperature_c": read(
            "temperature_c",
            lambda: int(nvml.nvmlDeviceGetTemperature(handle, NVML_TEMPERATURE_GPU)),
        ),
        # NVML reports milliwatts.
        "power_w": read("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000),
        "gpu_utilization_pct": None if rates is None else rates[0],
        "memory_utilization_pct": None if rates is None else rates[1],
        "clock_event_reasons": read("clock_event_reasons", lambda: current_reasons(nvml, handle)),
    }


def current_reasons(nvml: Any, handle: Any) -> int:
    """The current clocks-event reasons, from the newer call or the older, deprecated one
    (drivers before 535 have only nvmlDeviceGetCurrentClocksThrottleReasons)."""
    problem: Exception | None = None
    for name in (
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
    ):
        read = getattr(nvml, name, None)
        if read is None:
            continue
        try:
            return int(read(handle))
        except Exception as exc:  # noqa: BLE001 - try the other name
            problem = exc
    raise problem or AttributeError("NVML has no clocks-event-reasons call")


def snapshot(nvml: Any, index: int) -> dict[str, Any]:
    """What GPU `index` (NVML's index; NVML already initialised) is doing now, in one reading,
    for a worker's heartbeat (runner/heartbeat.py): the Sample fields, name, uuid, memory used
    and total, the clocks-event reason names and `throttled` (one of them spoils timings).
    A field NVML cannot read is None and named in `unreadable`; a GPU NVML does not know has
    `available` false and a `reason`."""
    errors: dict[str, str] = {}

    def read(field: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - NotSupported, NoPermission, missing call...
            errors.setdefault(field, _describe(exc))
            return None

    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:  # noqa: BLE001
        reason = f"NVML has no GPU {index} ({_describe(exc)})"
        return {"index": index, "available": False, "reason": reason}
    values = read_values(nvml, handle, read)
    memory = read("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    mask = values.pop("clock_event_reasons")
    reasons = reason_names(mask) if mask is not None else []
    return {
        "index": index,
        "available": True,
        "reason": None,
        "name": read("name", lambda: _text(nvml.nvmlDeviceGetName(handle))),
        "uuid": read("uuid", lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
        **values,
        "memory_used_bytes": None if memory is None else int(memory.used),
        "memory_total_bytes": None if memory is None else int(memory.total),
        "clock_event_reasons": reasons,
        "throttled": any(name in SPOILING_REASONS for name in reasons),
        "unreadable": dict(sorted(errors.items())),
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
