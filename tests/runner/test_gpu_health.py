"""The GPU checks before each job (runner/gpu_health.py) with a fake NVML, and what the
pipeline does when one fails. No GPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from runner.gpu_health import GpuHealthCheck, HealthVerdict
from runner.health import WORKER_HEALTH
from runner.pipeline import run_job
from tests.runner.support import LAB, make_job, read_notebook, requires_bwrap

MIB = 1 << 20
HW_SLOWDOWN = 0x8
SW_THERMAL = 0x20
GPU_IDLE = 0x1


class NvmlError(Exception):
    """pynvml's NVMLError: the code is in `value`."""

    def __init__(self, value: int, text: str) -> None:
        super().__init__(text)
        self.value = value


class FakeNvml:
    """The pynvml calls the checks make, for GPU 0. Each list is what successive calls see
    (the last entry stays)."""

    def __init__(self, *, processes=([],), reasons=(GPU_IDLE,), xids=(), events=True) -> None:
        self.processes = list(processes)
        self.reasons = list(reasons)
        self.xids = list(xids)
        self.events = events
        self.inits = 0

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlEventSetCreate(self) -> str:
        return "event set"

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, events: str) -> None:
        assert types == 0x8  # nvmlEventTypeXidCriticalError
        if not self.events:
            raise NvmlError(3, "Not Supported")

    def nvmlEventSetWait_v2(self, events: str, timeout_ms: int) -> SimpleNamespace:
        assert timeout_ms == 0  # never blocks the job
        if not self.xids:
            raise NvmlError(10, "Timeout")
        return SimpleNamespace(eventType=0x8, eventData=self.xids.pop(0), device=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:
        return self.processes.pop(0) if len(self.processes) > 1 else self.processes[0]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self.reasons.pop(0) if len(self.reasons) > 1 else self.reasons[0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def check_with(nvml: FakeNvml) -> GpuHealthCheck:
    clock = FakeClock()
    check = GpuHealthCheck(
        indices=(0,), nvml=nvml, clock=clock, sleep=clock.sleep, settle_s=5, throttle_wait_s=30
    )
    check.notes_taken = []
    check.note = check.notes_taken.append
    return check


def process(pid: int, used_mib: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=None if used_mib is None else used_mib * MIB)


@pytest.fixture(autouse=True)
def healthy_worker():
    WORKER_HEALTH.reset()
    yield
    WORKER_HEALTH.reset()


def test_a_healthy_gpu_passes_every_check_and_adds_nothing():
    check = check_with(FakeNvml())
    for _ in range(3):
        assert check.before_job(alone=True, timing=True) == HealthVerdict()
    assert check.clock.now == 0  # nothing waited
    assert check.notes_taken == []
    assert check.nvml.inits == 1  # NVML stays open between jobs


def test_a_stray_process_makes_the_worker_unhealthy_naming_its_pid_and_memory():
    nvml = FakeNvml(processes=[[process(4242, 1536), process(77, None)]])
    verdict = check_with(nvml).before_job(alone=True, timing=False)
    assert verdict.problem == (
        "processes that no job of this worker runs were on the GPU 5 s after the last job "
        "ended (GPU 0: PID 4242 (1536 MiB in use), PID 77 (memory not reported)): a process "
        "that escaped its sandbox, or another program on a GPU that should be this worker's "
        "alone"
    )


def test_the_last_jobs_processes_may_take_a_moment_to_exit():
    nvml = FakeNvml(processes=[[process(4242, 1536)], [process(4242, 10)], []])
    check = check_with(nvml)
    assert check.before_job(alone=True, timing=False).problem is None
    assert 0 < check.clock.now < 5


def test_processes_beside_a_shared_job_are_the_other_jobs_and_not_checked():
    nvml = FakeNvml(processes=[[process(4242, 1536)]])
    assert check_with(nvml).before_job(alone=False, timing=False).problem is None


def test_a_critical_xid_makes_the_worker_unhealthy_naming_the_xid():
    check = check_with(FakeNvml())
    assert check.before_job(alone=True, timing=True).problem is None  # registers for events
    check.nvml.xids = [79]
    problem = check.before_job(alone=True, timing=True).problem
    assert problem.startswith(
        "the GPU reported a critical error since the last job (GPU 0: Xid 79 (the GPU has "
        "fallen off the bus))"
    )
    assert check.nvml.xids == []  # drained: the next check looks at what is new


def test_an_xid_a_learners_kernel_causes_is_not_held_against_the_node():
    check = check_with(FakeNvml(xids=[31, 13, 43]))  # illegal address, exception, reset
    assert check.before_job(alone=True, timing=True) == HealthVerdict()


def test_without_xid_events_the_worker_says_so_once_and_skips_that_check():
    check = check_with(FakeNvml(events=False, xids=[79]))
    assert check.before_job(alone=True, timing=True).problem is None
    assert check.before_job(alone=True, timing=True).problem is None
    (note,) = check.notes_taken
    assert note.startswith("NVML cannot report GPU 0's Xid errors here (NvmlError: Not Supported)")


def test_a_hardware_slowdown_that_stays_stops_the_worker_before_a_timing_job():
    check = check_with(FakeNvml(reasons=[HW_SLOWDOWN | GPU_IDLE]))
    problem = check.before_job(alone=True, timing=True).problem
    assert problem.startswith(
        "the GPU stayed in a hardware slowdown for 30 s before a timing job (GPU 0: HwSlowdown)"
    )
    assert check.clock.now >= 30


def test_a_correctness_only_job_does_not_wait_for_clocks():
    check = check_with(FakeNvml(reasons=[HW_SLOWDOWN]))
    assert check.before_job(alone=True, timing=False) == HealthVerdict()
    assert check.clock.now == 0


def test_a_slowdown_that_clears_while_waiting_is_only_a_note():
    check = check_with(FakeNvml(reasons=[SW_THERMAL, SW_THERMAL, HW_SLOWDOWN, GPU_IDLE]))
    verdict = check.before_job(alone=True, timing=True)
    assert verdict.problem is None
    assert verdict.notes == ("waited 0.8 s for the GPU to leave a clock slowdown before timing",)


def test_a_software_thermal_slowdown_that_stays_is_graded_anyway_with_a_note():
    verdict = check_with(FakeNvml(reasons=[SW_THERMAL])).before_job(alone=True, timing=True)
    assert verdict.problem is None
    (note,) = verdict.notes
    assert note.startswith("the GPU was still slowed down after 30 s (GPU 0: SwThermalSlowdown")
    assert "graded anyway" in note


def test_nvml_that_does_not_start_is_a_problem():
    nvml = FakeNvml()
    nvml.nvmlInit = lambda: (_ for _ in ()).throw(NvmlError(9, "Driver Not Loaded"))
    problem = check_with(nvml).before_job(alone=True, timing=True).problem
    assert problem == "NVML did not start for the GPU check (Driver Not Loaded)"


class Refusing:
    """A check whose GPU has a stray process."""

    def before_job(self, *, alone: bool, timing: bool) -> HealthVerdict:
        return HealthVerdict(problem="processes that no job of this worker runs were on the GPU")


@requires_bwrap
@pytest.mark.timeout(60)
def test_a_failed_check_refuses_the_job_and_stops_the_worker(policy, tmp_path):
    progress = []
    report = run_job(
        make_job(read_notebook(LAB / "reference.ipynb")),
        workroot=tmp_path,
        policy=policy,
        gpu_health=Refusing(),
        on_progress=lambda stage, **info: progress.append(stage),
    )
    assert report["status"] == "error"
    assert report["message"].startswith(
        "This worker stopped taking jobs: processes that no job of this worker runs"
    )
    assert "not your code's fault" in report["message"]
    assert WORKER_HEALTH.problem.startswith("processes that no job of this worker runs")
    assert progress == ["done"]  # nothing of the notebook ran
    assert list(tmp_path.iterdir()) == []
