"""GPU hygiene between jobs with a fake NVML (CI has no GPU), and the worker's health flag."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from unittest import mock

import pytest

from runner.gpu import GpuMemoryCheck, exclusive_gpus, gpu_indices
from runner.health import WORKER_HEALTH
from runner.pipeline import run_job
from tests.runner.support import LAB, make_job, read_notebook, requires_bwrap

MIB = 1 << 20


class FakeNvml:
    """The four pynvml calls the check makes; `used` is what each GPU reports, in order."""

    def __init__(self, *readings: dict[int, int]) -> None:
        self.readings = list(readings)
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        self.current = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=self.current[handle], total=80 << 30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def check_with(*readings: dict[int, int], indices=(0,)) -> GpuMemoryCheck:
    clock = FakeClock()
    return GpuMemoryCheck(
        indices=indices, nvml=FakeNvml(*readings), clock=clock, sleep=clock.sleep, settle_s=5
    )


@pytest.fixture(autouse=True)
def healthy_worker():
    WORKER_HEALTH.reset()
    yield
    WORKER_HEALTH.reset()


def test_memory_back_at_baseline_is_healthy():
    check = check_with({0: 500 * MIB}, {0: 500 * MIB})
    check.before_job()
    assert check.after_job() is None
    assert check.nvml.inits == check.nvml.shutdowns == 2


def test_memory_that_comes_back_while_the_driver_settles_is_healthy():
    check = check_with({0: 500 * MIB}, {0: 9000 * MIB}, {0: 4000 * MIB}, {0: 510 * MIB})
    check.before_job()
    assert check.after_job() is None


def test_memory_still_held_after_the_settle_time_names_the_gpu():
    check = check_with({0: 500 * MIB, 1: 0}, {0: 500 * MIB, 1: 7000 * MIB}, indices=(0, 1))
    check.before_job()
    problem = check.after_job()
    assert problem == (
        "GPU memory did not return to its baseline 5 s after the last job ended "
        "(GPU 1: 7000 MiB in use, baseline 0 MiB)"
    )


def test_the_baseline_is_the_one_before_the_first_job():
    check = check_with({0: 100 * MIB}, {0: 150 * MIB}, {0: 200 * MIB})
    check.before_job()
    assert check.after_job() is None  # 50 MiB over: within the 64 MiB tolerance
    check.before_job()  # does not re-baseline at 150 MiB
    assert check.after_job() is not None  # 100 MiB over the first baseline


def test_a_job_that_entered_beside_others_adopts_the_idle_gpus_baseline():
    check = check_with({0: 9000 * MIB}, {0: 520 * MIB})  # others' memory is in use now
    check.before_job(alone=False, idle_used={0: 500 * MIB})
    assert check.baseline == {0: 500 * MIB}
    assert check.nvml.inits == 0  # nothing read while other jobs hold memory
    assert check.after_job() is None


def test_without_an_idle_reading_the_baseline_waits_for_a_job_that_enters_alone():
    check = check_with({0: 300 * MIB})
    check.before_job(alone=False, idle_used={})
    assert check.baseline is None and check.after_job() is None
    check.before_job(alone=True)
    assert check.baseline == {0: 300 * MIB}


def test_an_nvml_failure_after_a_job_is_unhealthy_too():
    check = check_with({0: 0})
    check.before_job()
    check.nvml.nvmlInit = mock.Mock(side_effect=RuntimeError("NVML_ERROR_GPU_IS_LOST"))
    assert "NVML could not read GPU memory" in check.after_job()


class NvmlWithMinors(FakeNvml):
    """NVML's order (PCI bus) need not be the device nodes' minor numbers: here NVML's GPU 0
    is /dev/nvidia1 and GPU 1 is /dev/nvidia0."""

    minors = {0: 1, 1: 0}

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetMinorNumber(self, handle: int) -> int:
        return self.minors[handle]


def test_memory_is_read_from_the_gpu_whose_device_node_the_worker_owns():
    clock = FakeClock()
    # The worker owns /dev/nvidia1, which NVML calls GPU 0; NVML's GPU 1 is someone else's.
    nvml = NvmlWithMinors({0: 500 * MIB, 1: 70_000 * MIB}, {0: 500 * MIB, 1: 10 * MIB})
    check = GpuMemoryCheck(indices=(1,), nvml=nvml, clock=clock, sleep=clock.sleep, settle_s=5)
    check.before_job()
    assert check.baseline == {1: 500 * MIB}
    assert check.after_job() is None


def test_gpu_indices_come_from_the_device_nodes():
    devices = ("/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0")
    assert gpu_indices(devices) == (0, 3)


def test_one_job_per_gpu_at_a_time(tmp_path):
    order = []

    def job(name: str, hold: float) -> None:
        with exclusive_gpus([0], folder=tmp_path):
            order.append(f"{name} in")
            time.sleep(hold)
            order.append(f"{name} out")

    first = threading.Thread(target=job, args=("a", 0.3))
    first.start()
    time.sleep(0.05)
    job("b", 0)
    first.join()
    assert order == ["a in", "a out", "b in", "b out"]


@requires_bwrap
@pytest.mark.timeout(120)
def test_a_gpu_left_dirty_stops_the_worker_and_every_later_job_is_refused(policy, tmp_path, caplog):
    # Cheap jobs: the untouched starter errors in its self-check cell, without grading.
    starter = make_job(read_notebook(LAB / "softmax.ipynb"))
    check = check_with({0: 300 * MIB}, {0: 5000 * MIB})
    first = run_job(starter, workroot=tmp_path, policy=policy, gpu_check=check)
    assert first["status"] == "error" and "NotImplementedError" in first["message"]
    assert not WORKER_HEALTH.ok
    assert "GPU memory did not return to its baseline" in caplog.text

    progress = []
    later = run_job(
        make_job(read_notebook(LAB / "reference.ipynb"), submission_id="next"),
        workroot=tmp_path,
        policy=policy,
        on_progress=lambda stage, **info: progress.append(stage),
    )
    assert later["status"] == "error"
    assert later["message"].startswith("This worker stopped taking jobs: GPU memory did not")
    assert "not your code's fault" in later["message"]
    assert progress == ["done"]  # nothing ran
    assert list(tmp_path.iterdir()) == []


def test_an_unhealthy_worker_asks_to_stop_consuming_its_queue():
    from runner import worker

    WORKER_HEALTH.fail("GPU memory did not return to its baseline")
    request = SimpleNamespace(hostname="gpu@node1", delivery_info={"routing_key": "gpu"})
    with mock.patch.object(worker.app.control, "cancel_consumer") as cancel:
        worker.stop_consuming(request)
    cancel.assert_called_once_with("gpu", destination=["gpu@node1"])


def test_the_grade_task_stops_consuming_once_unhealthy():
    from runner import worker

    def sick(job, **kwargs):
        WORKER_HEALTH.fail("GPU memory did not return to its baseline")
        return {"status": "error", "submission_id": "s1"}

    with (
        mock.patch.object(worker, "run_job", side_effect=sick),
        mock.patch.object(worker.app, "send_task"),
        mock.patch.object(worker, "stop_consuming") as stop,
    ):
        worker.grade.run({"submission_id": "s1", "attempt": 1})
    stop.assert_called_once()
