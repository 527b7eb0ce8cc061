"""Worker heartbeats (runner/heartbeat.py) with a fake NVML and a fake send function: what a
heartbeat says, how it behaves without NVML, the thread that sends them, and how
runner/worker.py wires them to Celery's signals. No broker."""

from __future__ import annotations

import os
import sys
import threading
import time
from types import SimpleNamespace
from unittest import mock

import pytest

from runner import heartbeat
from runner.health import WorkerHealth

MIB = 1 << 20
HW_THERMAL = 0x40
GPU_IDLE = 0x1


class FakeNvml:
    """A node with two GPUs whose device-node minors are swapped relative to NVML's order,
    as can happen: /dev/nvidia0 is NVML index 1."""

    def __init__(self, reasons: int = 0) -> None:
        self.reasons = reasons
        self.inits = self.shutdowns = 0
        self.minors = {0: 1, 1: 0}  # NVML index -> minor number

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index not in self.minors:
            raise RuntimeError("Invalid Argument")
        return index

    def nvmlDeviceGetMinorNumber(self, handle: int) -> int:
        return self.minors[handle]

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-0000000{handle}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=(1000 + handle) * MIB, total=81559 * MIB)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        return {1: 1980, 2: 2619}[clock]

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 350_500

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:
        return self.reasons


def state(**overrides) -> heartbeat.WorkerState:
    clock = iter(range(1_800_000_000, 1_800_001_000))
    values = {
        "worker": "gpu0@node1",
        "node": "node1",
        "queues": lambda: ["gpu.sm90", "gpu"],
        "jobs": lambda: (["sub-1"], 4),
        "health": lambda: None,
        "notes": lambda: [],
        "interval_s": 15.0,
        "device_class": "gpu",
        "gpu_minors": (0,),
        "sandbox": {"mode": "bwrap", "ok": True, "reason": None, "warnings": []},
        "nvml": FakeNvml(),
        "clock": lambda: float(next(clock)),
    }
    return heartbeat.WorkerState(**(values | overrides))


def test_a_heartbeat_says_who_what_and_how_each_gpu_is_doing():
    nvml = FakeNvml(reasons=HW_THERMAL | GPU_IDLE)
    payload = state(nvml=nvml).payload()
    assert payload["schema"] == "inference-roadmap/heartbeat@1"
    assert payload["worker"] == "gpu0@node1" and payload["node"] == "node1"
    assert payload["queues"] == ["gpu", "gpu.sm90"] and payload["device_class"] == "gpu"
    assert payload["seq"] == 1 and payload["stopping"] is False
    assert payload["started_at"] == 1_800_000_000 and payload["sent_at"] > payload["started_at"]
    assert payload["health"] == {"ok": True, "problem": None, "notes": []}
    assert payload["sandbox"]["mode"] == "bwrap"
    assert payload["jobs"] == {"running": 1, "done": 4, "submissions": ["sub-1"]}
    assert payload["gpu_note"] is None
    (gpu,) = payload["gpus"]
    # /dev/nvidia0 is NVML's GPU 1 on this node: the reading is of the right card.
    assert gpu["minor"] == 0 and gpu["index"] == 1
    assert gpu["uuid"] == "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["gpu_utilization_pct"] == 97 and gpu["memory_utilization_pct"] == 40
    assert gpu["memory_used_bytes"] == 1001 * MIB and gpu["memory_total_bytes"] == 81559 * MIB
    assert gpu["power_w"] == pytest.approx(350.5) and gpu["temperature_c"] == 61
    assert gpu["sm_clock_mhz"] == 1980 and gpu["memory_clock_mhz"] == 2619
    assert gpu["clock_event_reasons"] == ["GpuIdle", "HwThermalSlowdown"]
    assert gpu["throttled"] is True and gpu["unreadable"] == {}
    assert nvml.inits == nvml.shutdowns == 1


def test_each_heartbeat_of_a_run_has_the_next_sequence_number_and_the_same_boot():
    worker = state()
    first, second = worker.payload(), worker.payload()
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["boot"] == second["boot"] and len(first["boot"]) == 16
    assert state().boot != worker.boot


def test_an_unhealthy_worker_says_why():
    payload = state(health=lambda: "GPU memory did not return to its baseline").payload()
    assert payload["health"] == {
        "ok": False,
        "problem": "GPU memory did not return to its baseline",
        "notes": [],
    }


def test_a_heartbeat_carries_the_notes_that_do_not_stop_the_worker():
    note = "NVML cannot report GPU 0's Xid errors here (NotSupported): ..."
    payload = state(notes=lambda: [note]).payload()
    assert payload["health"] == {"ok": True, "problem": None, "notes": [note]}


def test_a_cpu_worker_sends_no_gpu_fields_and_no_note():
    payload = state(gpu_minors=(), device_class="cpu", nvml=None).payload()
    assert payload["gpus"] == [] and payload["gpu_note"] is None


def test_without_pynvml_there_are_no_gpu_fields_and_a_note_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    payload = state(nvml=None).payload()
    assert payload["gpus"] == []
    assert payload["gpu_note"].startswith("pynvml (nvidia-ml-py) is not installed")


def test_an_nvml_that_does_not_start_leaves_a_note():
    nvml = FakeNvml()
    nvml.nvmlInit = mock.Mock(side_effect=RuntimeError("Driver Not Loaded"))
    payload = state(nvml=nvml).payload()
    assert payload["gpus"] == [] and "NVML did not start" in payload["gpu_note"]
    assert "Driver Not Loaded" in payload["gpu_note"]


def test_a_reading_nvml_cannot_give_is_empty_and_named():
    nvml = FakeNvml()
    nvml.nvmlDeviceGetPowerUsage = mock.Mock(side_effect=RuntimeError("Not Supported"))
    (gpu,) = state(nvml=nvml).payload()["gpus"]
    assert gpu["power_w"] is None
    assert gpu["unreadable"] == {"power_w": "RuntimeError: Not Supported"}
    assert gpu["temperature_c"] == 61


def test_without_minor_numbers_the_device_number_is_taken_as_nvml_index():
    nvml = FakeNvml()
    del nvml.minors[0], nvml.minors[1]  # every minor lookup fails
    nvml.nvmlDeviceGetMinorNumber = mock.Mock(side_effect=RuntimeError("Not Supported"))
    nvml.minors = {0: 0}  # but index 0 exists
    (gpu,) = state(nvml=nvml).payload()["gpus"]
    assert gpu["index"] == 0 and gpu["available"] is True


def test_a_gpu_nvml_does_not_know_is_reported_unavailable():
    (gpu,) = state(gpu_minors=(7,)).payload()["gpus"]
    assert gpu["index"] == 7 and gpu["minor"] == 7
    assert gpu["available"] is False and "NVML has no GPU 7" in gpu["reason"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", 15.0), ("30", 30.0), ("2.5", 2.5), ("often", 15.0), ("0", 1.0), ("nan", 1.0)],
)
def test_the_interval_comes_from_runner_heartbeat_s(raw, expected):
    assert heartbeat.interval_from_env({"RUNNER_HEARTBEAT_S": raw}) == expected


def test_the_device_class_follows_the_queues_or_the_gpus():
    assert heartbeat.device_class(["cpu"], has_gpus=False) == "cpu"
    assert heartbeat.device_class(["gpu", "gpu.h100"], has_gpus=False) == "gpu"
    assert heartbeat.device_class([], has_gpus=True) == "gpu"


class Request:
    """What Celery's main process keeps of a job it handed to the pool."""

    def __init__(self, name: str, args: list) -> None:
        self.id, self.name, self.args = f"task-{id(self)}", name, args


def test_jobs_come_from_celerys_own_bookkeeping_in_the_main_process():
    from celery.worker import state as celery_state

    requests = [
        Request("runner.grade", [{"submission_id": "b", "attempt": 1}]),
        Request("runner.grade", [{"submission_id": "a", "attempt": 2}]),
        Request("runner.grade", ["not a job"]),
        Request("runner.grade", [{"submission_id": "done-1", "attempt": 1}]),
        Request("other.task", [{"submission_id": "x"}]),
    ]
    try:
        for request in requests:
            celery_state.task_accepted(request)
        celery_state.task_ready(requests[3])  # finished, or its pool process died
        submissions, done = heartbeat.celery_jobs("runner.grade")
    finally:
        celery_state.reset_state()
    assert submissions == ["a", "b"]
    assert done == 1  # accepted 4 jobs, 3 still running


class Sent:
    def __init__(self, fail_first: int = 0) -> None:
        self.payloads: list[dict] = []
        self.fail_first = fail_first
        self.calls = 0
        self.arrived = threading.Event()

    def __call__(self, payload: dict) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise OSError("broker down")
        self.payloads.append(payload)
        if len(self.payloads) >= 3:
            self.arrived.set()


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "heartbeat"]


def test_heartbeats_go_out_at_once_then_every_interval_and_a_last_one_says_stopping():
    sent = Sent()
    beat = heartbeat.Heartbeat(state(), sent, interval_s=0.01).start()
    assert sent.arrived.wait(5)
    assert beat.stop() is True
    assert heartbeat_threads() == []
    seqs = [p["seq"] for p in sent.payloads]
    assert seqs == sorted(seqs) and len(seqs) >= 4
    assert sent.payloads[-1]["stopping"] is True
    assert not any(p["stopping"] for p in sent.payloads[:-1])


def test_a_broker_that_is_down_does_not_end_the_heartbeats():
    sent = Sent(fail_first=2)
    beat = heartbeat.Heartbeat(state(), sent, interval_s=0.01).start()
    assert sent.arrived.wait(5)
    beat.stop()
    assert sent.calls >= 5 and len(sent.payloads) >= 3


def test_a_problem_found_in_a_pool_process_is_seen_by_the_main_process():
    # Celery's pool processes are forked from the main one, which sends the heartbeats.
    health = WorkerHealth()
    pid = os.fork()
    if pid == 0:  # the "pool process"
        health.fail("GPU memory did not return to its baseline")
        os._exit(0)
    os.waitpid(pid, 0)
    assert health.problem == "GPU memory did not return to its baseline"
    assert not health.ok
    health.reset()
    assert health.ok and health.problem is None


def test_a_note_taken_in_a_pool_process_is_seen_by_the_main_process_once():
    health = WorkerHealth()
    pid = os.fork()
    if pid == 0:
        health.note("NVML cannot report GPU 0's Xid errors here")
        health.note("NVML cannot report GPU 0's Xid errors here")  # another job, same news
        os._exit(0)
    os.waitpid(pid, 0)
    health.note("NVML cannot list GPU 0's processes here")
    assert health.notes == [
        "NVML cannot report GPU 0's Xid errors here",
        "NVML cannot list GPU 0's processes here",
    ]
    assert health.ok  # notes do not stop the worker
    health.reset()
    assert health.notes == []


@pytest.fixture
def worker(monkeypatch, tmp_path):
    from runner import worker

    monkeypatch.setenv("VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RUNNER_HEARTBEAT_S", "3600")  # only the first beat, then the last
    monkeypatch.setenv("RUNNER_ALLOW_UNSANDBOXED", "1")  # sandbox_status() without bwrap
    monkeypatch.delenv("RUNNER_GPU_DEVICES", raising=False)
    yield worker
    worker._HEARTBEAT.clear()


def fake_consumer(*queues: str) -> SimpleNamespace:
    return SimpleNamespace(
        hostname="cpu@node7",
        task_consumer=SimpleNamespace(queues=[SimpleNamespace(name=q) for q in queues]),
    )


def test_the_worker_sends_heartbeats_to_the_web_queue_from_ready_to_shutdown(worker):
    with mock.patch.object(worker.app, "send_task") as send:
        worker._start_heartbeat(sender=fake_consumer("cpu"))
        worker._start_heartbeat(sender=fake_consumer("cpu"))  # a reconnection: still one
        deadline = time.monotonic() + 5
        while not send.called and time.monotonic() < deadline:
            time.sleep(0.01)
        worker._stop_heartbeat()
    assert heartbeat_threads() == []
    first, last = send.call_args_list[0], send.call_args_list[-1]
    assert len(send.call_args_list) == 2
    assert first.args[0] == "labs.record_heartbeat" and first.kwargs["queue"] == "web"
    assert first.kwargs["expires"] == 10 * 3600  # a stale heartbeat is not replayed
    payload = first.kwargs["args"][0]
    assert payload["worker"] == "cpu@node7" and payload["queues"] == ["cpu"]
    assert payload["device_class"] == "cpu" and payload["gpus"] == []
    assert payload["sandbox"]["mode"] == "none"
    assert last.kwargs["args"][0]["stopping"] is True and last.kwargs["retry"] is True


def test_progress_names_the_worker_that_runs_the_job(worker):
    with mock.patch.object(worker.app, "send_task") as send:
        worker.ProgressSender(submission_id="s1", attempt=1, interval_s=0, worker="gpu0@node1")(
            "running", cell=1, cells=3
        )
    assert send.call_args.kwargs["args"] == [
        "s1",
        1,
        "running",
        {"cell": 1, "cells": 3, "worker": "gpu0@node1"},
    ]


def test_the_grade_task_passes_its_hostname_to_progress(worker):
    task = SimpleNamespace(request=SimpleNamespace(hostname="gpu0@node1"))

    def run_job(job, *, on_progress):
        on_progress("starting", cells=2)
        return {"status": "passed", "submission_id": "s1"}

    with (
        mock.patch.object(worker, "run_job", side_effect=run_job),
        mock.patch.object(worker.app, "send_task") as send,
    ):
        worker.run_and_report(task, {"submission_id": "s1"}, submission_id="s1", attempt=1)
    progress = send.call_args_list[0].kwargs["args"]
    assert progress[3] == {"cells": 2, "worker": "gpu0@node1"}
