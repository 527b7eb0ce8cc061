"""Memory-aware co-scheduling (runner/gpu_share.py): the admission decision on its own, then
the admission with a fake NVML in one process, then the file locks between real processes,
as separate Celery pool processes and workers of one host use them. No GPU."""

from __future__ import annotations

import json
import multiprocessing
import queue
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.gpu_share import DEFAULT_HEADROOM_BYTES, GpuAdmission, Request, Reservations, decide

MIB = 1 << 20
GIB = 1 << 30
SHARED_2000 = Request(exclusive=False, memory_bytes=2000 * MIB)

# --- the decision ---------------------------------------------------------------------------


def test_a_job_whose_memory_fits_beside_the_others_is_admitted():
    decision = decide(10 * GIB, Reservations(declared_bytes=(GIB,), held_bytes=GIB), 2000 * MIB)
    assert decision.admit
    assert decision.reason.startswith("fits: 2000 MiB asked, 10240 MiB free")


def test_a_job_whose_memory_does_not_fit_waits_and_says_how_much_is_missing():
    decision = decide(2 * GIB, Reservations(), 2000 * MIB)
    assert not decision.admit
    assert decision.reason == (
        "not enough GPU memory: 2000 MiB asked, 2048 MiB free, 0 MiB of it promised to 0 "
        "running jobs, 512 MiB kept spare"
    )


def test_memory_declared_but_not_allocated_yet_is_set_aside():
    # A job admitted a moment ago holds nothing yet: its 8 GiB are still in NVML's free.
    just_started = Reservations(declared_bytes=(8 * GIB,), held_bytes=0)
    assert not decide(10 * GIB, just_started, 2000 * MIB).admit
    # Once it holds them, they are out of `free` and count once, not twice.
    allocated = Reservations(declared_bytes=(8 * GIB,), held_bytes=8 * GIB)
    assert decide(10 * GIB, allocated, 2000 * MIB).admit


def test_without_an_idle_reading_every_declaration_counts_in_full():
    unknown = Reservations(declared_bytes=(8 * GIB,), held_bytes=None)
    assert not decide(10 * GIB, unknown, 2000 * MIB).admit


def test_a_job_over_its_declaration_does_not_free_room_for_others():
    greedy = Reservations(declared_bytes=(GIB,), held_bytes=5 * GIB)
    room = 3 * GIB - DEFAULT_HEADROOM_BYTES
    assert decide(3 * GIB, greedy, room).admit
    assert not decide(3 * GIB, greedy, room + 1).admit


@pytest.mark.parametrize(
    "reservations, reason",
    [
        (Reservations(timing_running=True), "a timing job has the GPU"),
        (Reservations(timing_waiting=1), "a timing job is waiting for the GPU, and goes first"),
        (Reservations(checking=True), "the last job's GPU memory is being checked"),
    ],
)
def test_no_shared_job_starts_beside_a_timing_job_or_ahead_of_one(reservations, reason):
    decision = decide(80 * GIB, reservations, MIB)
    assert not decision.admit and decision.reason == reason


# --- one process, fake NVML -----------------------------------------------------------------


class FileNvml:
    """pynvml's memory reading, from a JSON file every process of a test can see and change:
    {"free": bytes, "used": bytes}."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def nvmlInit(self) -> None:
        if json.loads(self.path.read_text()).get("broken"):
            raise RuntimeError("NVML_ERROR_DRIVER_NOT_LOADED")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        memory = json.loads(self.path.read_text())
        return SimpleNamespace(free=memory["free"], used=memory["used"], total=80 * GIB)


def set_memory(path: Path, *, free: int, used: int, broken: bool = False) -> None:
    path.write_text(json.dumps({"free": free, "used": used, "broken": broken}))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def memory(tmp_path) -> Path:
    path = tmp_path / "nvml.json"
    set_memory(path, free=70 * GIB, used=GIB)
    return path


def admission(tmp_path: Path, memory: Path, minors=(0,), **options) -> GpuAdmission:
    clock = FakeClock()
    options = {"clock": clock, "sleep": clock.sleep, "poll_s": 0.5} | options
    return GpuAdmission(minors, folder=tmp_path / "locks", nvml=FileNvml(memory), **options)


def test_shared_jobs_that_fit_run_side_by_side_and_only_the_last_out_checks(tmp_path, memory):
    gpu = admission(tmp_path, memory)
    seen = []

    def before(ticket):
        seen.append((ticket.mode, ticket.alone, dict(ticket.idle_used_bytes)))

    with gpu.slot(SHARED_2000, before=before, after=lambda: "checked") as first:
        set_memory(memory, free=68 * GIB, used=3 * GIB)  # the first job allocates
        with gpu.slot(SHARED_2000, before=before, after=lambda: "checked") as second:
            assert second.shared_with == 1
        assert second.after_result is None  # the first job is still on the GPU
    assert first.after_result == "checked"
    # The second job entered beside the first: it gets the reading of the idle GPU.
    assert seen == [("shared", True, {0: GIB}), ("shared", False, {0: GIB})]
    assert first.describe()["mode"] == "shared"


def test_a_shared_job_that_never_fits_runs_alone_after_the_bounded_wait(tmp_path, memory):
    set_memory(memory, free=GIB, used=79 * GIB)  # someone else's memory: nothing of ours
    waits = []
    gpu = admission(tmp_path, memory, max_wait_s=10)
    with gpu.slot(SHARED_2000, on_wait=waits.append) as ticket:
        assert ticket.mode == "exclusive" and ticket.alone
    assert ticket.waited_s == 10
    assert ticket.reason.startswith("waited 10 s for a shared slot (not enough GPU memory")
    assert len(waits) == 1  # the same reason is said once


def test_a_worker_with_two_gpus_runs_every_job_alone_on_both(tmp_path, memory):
    with admission(tmp_path, memory, minors=(1, 0)).slot(SHARED_2000) as ticket:
        assert ticket.mode == "exclusive"
        assert ticket.reason == "this worker owns 2 GPUs: each job takes them all"
        assert sorted(ticket.idle_used_bytes) == [0, 1]


def test_when_nvml_cannot_read_free_memory_the_job_runs_alone(tmp_path, memory):
    set_memory(memory, free=70 * GIB, used=GIB, broken=True)
    with admission(tmp_path, memory).slot(SHARED_2000) as ticket:
        assert ticket.mode == "exclusive"
        assert ticket.reason == "NVML could not read the GPU's free memory: ran alone"


def test_the_reservation_of_a_process_that_died_is_dropped(tmp_path, memory):
    script = "import os; print(os.getpid())"
    gone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    (tmp_path / "locks").mkdir()
    state = {"shared": {"dead": {"pid": int(gone.stdout), "start": "1", "memory_bytes": 69 * GIB}}}
    (tmp_path / "locks" / "gpu-0.share.json").write_text(json.dumps(state))
    with admission(tmp_path, memory).slot(SHARED_2000) as ticket:
        assert ticket.mode == "shared" and ticket.alone and ticket.shared_with == 0
    saved = json.loads((tmp_path / "locks" / "gpu-0.share.json").read_text())
    assert saved["shared"] == {} and saved["idle_used_bytes"] == GIB


def test_a_job_that_fails_its_first_check_leaves_no_reservation(tmp_path, memory):
    def broken(ticket):
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    with pytest.raises(RuntimeError), admission(tmp_path, memory).slot(SHARED_2000, before=broken):
        pass
    saved = json.loads((tmp_path / "locks" / "gpu-0.share.json").read_text())
    assert saved["shared"] == {} and saved["timing_waiting"] == {}


# --- real processes --------------------------------------------------------------------------

FORK = multiprocessing.get_context("fork")


def job(name, folder, memory, request, log, go=None):
    """One grading job in its own process: enter the GPU, say so, wait for `go`, leave."""
    gpu = GpuAdmission((0,), folder=Path(folder), nvml=FileNvml(Path(memory)), poll_s=0.02)
    with gpu.slot(
        request,
        on_wait=lambda reason: log.put((name, "waits", reason)),
        after=lambda: log.put((name, "checks memory", "")),
    ) as ticket:
        log.put((name, "in", ticket.mode))
        if go is not None:
            go.wait(60)
        log.put((name, "leaving", ""))


class Jobs:
    def __init__(self, tmp_path: Path, memory: Path) -> None:
        self.folder = tmp_path / "locks"
        self.memory = memory
        self.log = FORK.Queue()
        self.seen: list[tuple[str, str, str]] = []
        self.processes = []

    def start(self, name: str, request: Request, go=None):
        process = FORK.Process(
            target=job, args=(name, str(self.folder), str(self.memory), request, self.log, go)
        )
        process.start()
        self.processes.append(process)
        return process

    def wait_for(self, name: str, what: str) -> str:
        """Read the log until `name` says `what`; its detail."""
        for entry in self.seen:
            if entry[:2] == (name, what):
                return entry[2]
        while True:
            try:
                entry = self.log.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"{name} never said {what!r}; heard {self.seen}")
            self.seen.append(entry)
            if entry[:2] == (name, what):
                return entry[2]

    def state(self) -> dict:
        path = self.folder / "gpu-0.share.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def finish(self) -> list[tuple[str, str]]:
        for process in self.processes:
            process.join(30)
            assert process.exitcode == 0
        while True:
            try:
                self.seen.append(self.log.get(timeout=0.1))
            except queue.Empty:
                break
        return [(name, what) for name, what, _ in self.seen if what in ("in", "leaving")]


@pytest.mark.timeout(60)
def test_a_timing_job_waits_for_shared_jobs_and_no_new_shared_job_overtakes_it(tmp_path, memory):
    jobs = Jobs(tmp_path, memory)
    first_may_leave = FORK.Event()
    jobs.start("shared-1", SHARED_2000, first_may_leave)
    assert jobs.wait_for("shared-1", "in") == "shared"
    jobs.start("timing", Request(exclusive=True))
    while not jobs.state().get("timing_waiting"):  # the timing job queued up
        time.sleep(0.01)
    jobs.start("shared-2", SHARED_2000)
    assert "a timing job is waiting" in jobs.wait_for("shared-2", "waits")
    first_may_leave.set()
    assert jobs.finish() == [
        ("shared-1", "in"),
        ("shared-1", "leaving"),
        ("timing", "in"),
        ("timing", "leaving"),
        ("shared-2", "in"),
        ("shared-2", "leaving"),
    ]


@pytest.mark.timeout(60)
def test_shared_jobs_overlap_across_processes_and_the_last_out_checks_memory(tmp_path, memory):
    jobs = Jobs(tmp_path, memory)
    first_may_leave, second_may_leave = FORK.Event(), FORK.Event()
    jobs.start("shared-1", SHARED_2000, first_may_leave)
    jobs.wait_for("shared-1", "in")
    second = jobs.start("shared-2", SHARED_2000, second_may_leave)
    assert jobs.wait_for("shared-2", "in") == "shared"  # while shared-1 is still in
    second_may_leave.set()
    second.join(30)
    first_may_leave.set()
    jobs.finish()
    checks = [name for name, what, _ in jobs.seen if what == "checks memory"]
    assert checks == ["shared-1"]  # shared-2 left while shared-1 was still on the GPU


@pytest.mark.timeout(60)
def test_a_job_whose_memory_is_promised_to_another_waits_until_it_leaves(tmp_path, memory):
    jobs = Jobs(tmp_path, memory)
    big_may_leave = FORK.Event()
    jobs.start("big", Request(exclusive=False, memory_bytes=60 * GIB), big_may_leave)
    jobs.wait_for("big", "in")
    # 70 GiB free, but 60 of them are promised to `big`, which has not allocated them yet.
    jobs.start("small", Request(exclusive=False, memory_bytes=20 * GIB))
    assert jobs.wait_for("small", "waits").startswith("not enough GPU memory: 20480 MiB asked")
    big_may_leave.set()
    assert jobs.finish() == [
        ("big", "in"),
        ("big", "leaving"),
        ("small", "in"),
        ("small", "leaving"),
    ]
