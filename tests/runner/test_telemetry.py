"""GPU telemetry with a fake NVML (CI has no GPU): what is sampled, what counts as throttled,
what happens when NVML lacks a call or is missing, and that the sampling thread ends."""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import pytest

from runner.measure.telemetry import TelemetrySampler, reason_names, snapshot

HW_THERMAL = 0x40
GPU_IDLE = 0x1
APPLICATION_CLOCKS = 0x2
SW_POWER_CAP = 0x4


class FakeNvml:
    """The pynvml calls the sampler makes. `reasons` are returned in order (the last one
    repeats), like the clocks-event bitmask of a GPU over time."""

    def __init__(self, *reasons: int) -> None:
        self.reasons = list(reasons) or [0]
        self.inits = 0
        self.shutdowns = 0
        self.reads = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:
        self.reads += 1
        return {1: 1980, 2: 2619}[clock]  # NVML_CLOCK_SM, NVML_CLOCK_MEM

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        assert sensor == 0  # NVML_TEMPERATURE_GPU
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return 350_500  # milliwatts

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(gpu=99, memory=73)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return self.reasons.pop(0) if len(self.reasons) > 1 else self.reasons[0]


def telemetry_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("telemetry-")]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    assert telemetry_threads() == []


def test_it_samples_clocks_temperature_power_and_utilisation():
    nvml = FakeNvml()
    with TelemetrySampler(nvml, 3, interval_s=0.005) as sampler:
        deadline = time.monotonic() + 5
        while len(sampler.samples) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
    summary = sampler.summary()
    assert summary["available"] is True and summary["reason"] is None
    assert summary["index"] == 3
    assert summary["n"] >= 6  # the first, at least four from the thread, and the last
    assert summary["sm_clock_mhz"] == {"min": 1980, "median": 1980, "max": 1980}
    assert summary["memory_clock_mhz"]["median"] == 2619
    assert summary["temperature_c"]["max"] == 61
    assert summary["power_w"]["median"] == pytest.approx(350.5)
    assert summary["gpu_utilization_pct"]["min"] == 99
    assert summary["memory_utilization_pct"]["min"] == 73
    assert summary["clock_event_reasons"] == []
    assert summary["throttled"] is False and summary["throttle_note"] is None
    assert summary["unreadable"] == {}
    assert summary["duration_s"] > 0
    assert nvml.inits == nvml.shutdowns == 1


def test_min_median_and_max_follow_the_samples():
    nvml = FakeNvml()
    temperatures = iter([50, 70, 60])
    nvml.nvmlDeviceGetTemperature = lambda handle, sensor: next(temperatures)
    sampler = TelemetrySampler(nvml, 0, interval_s=60)  # only the start and stop samples
    sampler.start()
    sampler._record()  # one more, as the thread would
    sampler.stop()
    assert sampler.summary()["temperature_c"] == {"min": 50, "median": 60, "max": 70}


def test_a_hardware_thermal_slowdown_flags_the_run_as_throttled():
    nvml = FakeNvml(0, HW_THERMAL | GPU_IDLE, 0)
    with TelemetrySampler(nvml, 0, interval_s=60) as sampler:
        sampler._record()
    summary = sampler.summary()
    assert summary["n"] == 3
    assert summary["clock_event_reasons"] == ["GpuIdle", "HwThermalSlowdown"]
    assert summary["clock_event_reason_counts"] == {"GpuIdle": 1, "HwThermalSlowdown": 1}
    assert summary["throttled"] is True
    assert summary["throttle_note"] == (
        "The GPU lowered its clocks during the measurement (HwThermalSlowdown in 1 of 3 "
        "samples), so these times may be slower than this GPU is when it is not throttled."
    )


def test_idle_and_application_clocks_do_not_count_as_throttling():
    with TelemetrySampler(FakeNvml(GPU_IDLE | APPLICATION_CLOCKS), 0, interval_s=60) as sampler:
        pass
    summary = sampler.summary()
    assert summary["clock_event_reasons"] == ["ApplicationsClocksSetting", "GpuIdle"]
    assert summary["throttled"] is False and summary["throttle_note"] is None


def test_a_power_cap_counts_as_throttling():
    with TelemetrySampler(FakeNvml(SW_POWER_CAP), 0, interval_s=60) as sampler:
        pass
    assert sampler.summary()["throttled"] is True
    assert "SwPowerCap in 2 of 2 samples" in sampler.summary()["throttle_note"]


def test_reason_bits_have_nvml_names():
    assert reason_names(0) == []
    assert reason_names(0x8 | 0x20 | 0x80) == [
        "HwSlowdown",
        "SwThermalSlowdown",
        "HwPowerBrakeSlowdown",
    ]
    assert reason_names(0x1000 | 0x1) == ["GpuIdle", "unknown 0x1000"]


def test_missing_nvml_calls_leave_their_fields_empty():
    # An old pynvml: no power reading, only the deprecated throttle-reasons call.
    missing = ("nvmlDeviceGetPowerUsage", "nvmlDeviceGetCurrentClocksEventReasons")
    full = FakeNvml()
    nvml = SimpleNamespace(
        **{n: getattr(full, n) for n in dir(full) if n.startswith("nvml") and n not in missing}
    )
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = lambda handle: HW_THERMAL
    with TelemetrySampler(nvml, 0, interval_s=60) as sampler:
        pass
    summary = sampler.summary()
    assert summary["power_w"] is None
    assert "power_w" in summary["unreadable"]
    assert summary["sm_clock_mhz"]["median"] == 1980
    assert summary["throttled"] is True  # read through the older call
    assert summary["clock_event_reasons"] == ["HwThermalSlowdown"]


def test_a_reading_that_fails_is_tolerated_and_named():
    class NotSupported(Exception):
        def __str__(self) -> str:
            return "Not Supported"

    nvml = FakeNvml()

    def unsupported(handle: str) -> int:
        raise NotSupported()

    nvml.nvmlDeviceGetUtilizationRates = unsupported
    nvml.nvmlDeviceGetCurrentClocksEventReasons = unsupported
    with TelemetrySampler(nvml, 0, interval_s=60) as sampler:
        pass
    summary = sampler.summary()
    assert summary["gpu_utilization_pct"] is None and summary["memory_utilization_pct"] is None
    assert summary["unreadable"] == {
        "clock_event_reasons": "NotSupported: Not Supported",
        "utilization": "NotSupported: Not Supported",
    }
    assert summary["clock_event_reasons"] == [] and summary["throttled"] is False
    assert summary["temperature_c"]["median"] == 61


def test_without_pynvml_telemetry_is_unavailable_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with TelemetrySampler(None, 0) as sampler:
        pass
    summary = sampler.summary()
    assert summary["available"] is False
    assert summary["reason"].startswith("pynvml (nvidia-ml-py) is not installed")
    assert summary["n"] == 0 and summary["sm_clock_mhz"] is None
    assert summary["throttled"] is False


def test_an_nvml_that_does_not_start_is_unavailable():
    nvml = FakeNvml()

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    nvml.nvmlInit = no_driver
    with TelemetrySampler(nvml, 0) as sampler:
        pass
    assert sampler.summary()["reason"] == (
        "NVML did not start (RuntimeError: NVML Shared Library Not Found)"
    )


def test_a_gpu_index_nvml_does_not_know_is_unavailable_and_nvml_is_released():
    nvml = FakeNvml()

    def no_such_gpu(index: int) -> None:
        raise ValueError("Invalid Argument")

    nvml.nvmlDeviceGetHandleByIndex = no_such_gpu
    with TelemetrySampler(nvml, 7) as sampler:
        pass
    assert sampler.summary()["reason"] == "NVML has no GPU 7 (ValueError: Invalid Argument)"
    assert nvml.inits == nvml.shutdowns == 1


def test_the_thread_stops_when_the_block_raises():
    nvml = FakeNvml()
    with pytest.raises(KeyError), TelemetrySampler(nvml, 0, interval_s=0.001):
        assert len(telemetry_threads()) == 1
        raise KeyError("the measurement failed")
    assert telemetry_threads() == []
    reads = nvml.reads
    time.sleep(0.02)
    assert nvml.reads == reads  # nothing samples after the block
    assert nvml.shutdowns == 1


def test_a_sampler_starts_once_and_stops_idempotently():
    sampler = TelemetrySampler(FakeNvml(), 0)
    sampler.stop()  # never started: nothing to do
    with pytest.raises(RuntimeError, match="started once"):
        sampler.start()
    with TelemetrySampler(FakeNvml(), 0) as running:
        pass
    running.stop()
    assert running.summary()["n"] == 2


def test_a_snapshot_is_one_reading_and_names_what_nvml_lacks():
    # This fake has no name, UUID or memory calls: those are empty and named, the rest read.
    nvml = FakeNvml(SW_POWER_CAP | GPU_IDLE)
    reading = snapshot(nvml, 2)
    assert reading["index"] == 2 and reading["available"] is True
    assert reading["sm_clock_mhz"] == 1980 and reading["power_w"] == pytest.approx(350.5)
    assert reading["gpu_utilization_pct"] == 99 and reading["temperature_c"] == 61
    assert reading["clock_event_reasons"] == ["GpuIdle", "SwPowerCap"]
    assert reading["throttled"] is True
    assert reading["name"] is None and reading["memory_used_bytes"] is None
    assert set(reading["unreadable"]) == {"memory", "name", "uuid"}
    assert nvml.inits == 0  # the caller holds NVML open; a snapshot starts no thread


def test_a_snapshot_of_a_gpu_nvml_does_not_know_says_so():
    nvml = FakeNvml()
    nvml.nvmlDeviceGetHandleByIndex = lambda index: (_ for _ in ()).throw(RuntimeError("gone"))
    assert snapshot(nvml, 5) == {
        "index": 5,
        "available": False,
        "reason": "NVML has no GPU 5 (RuntimeError: gone)",
    }
