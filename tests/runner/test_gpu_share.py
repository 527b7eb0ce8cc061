"""Memory-aware co-scheduling (runner/gpu_share.py): the admission decision on its own, then
the admission with a fake NVML in one process, then the file locks between real processes,
as separate Celery pool processes and workers of one host use them. No GPU."""

from __future__ import annotations

import json
import multiprocessing
import os
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


# --- on a real GPU: NVML's readings, CUDA processes holding memory --------------------------
#
# The same admission with the real pynvml, and jobs whose memory is held by child processes
# with a CUDA context, as a grading job's sandboxes hold it: each job starts its holder once
# admitted and stops it before leaving, and the last one out checks with runner.gpu's
# GpuMemoryCheck that NVML's used memory is back at the baseline. Run on a GPU node:
#     python -m pytest -m gpu tests/runner/test_gpu_share.py

HOLDER = """
import sys, torch
x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("holding", flush=True)
sys.stdin.read()  # until the job closes our stdin
"""


def gpu_minor() -> int:
    from runner.gpu import gpu_indices

    devices = [d for d in os.environ.get("RUNNER_GPU_DEVICES", "/dev/nvidia0").split(",") if d]
    return gpu_indices(devices)[0]


def gpu_uuid(minor: int) -> str:
    import pynvml

    from runner.gpu import nvml_index

    pynvml.nvmlInit()
    try:
        uuid = pynvml.nvmlDeviceGetUUID(
            pynvml.nvmlDeviceGetHandleByIndex(nvml_index(pynvml, minor))
        )
        return uuid.decode() if isinstance(uuid, bytes) else uuid
    finally:
        pynvml.nvmlShutdown()


def gpu_job(name, folder, minor, request, hold_bytes, log, go=None, max_wait_s=120.0):
    """A grading job on the real GPU: admitted by NVML's readings, its memory held by a CUDA
    child process while it is in; the last one out checks the memory came back."""
    from runner.gpu import GpuMemoryCheck

    check = GpuMemoryCheck(indices=(minor,), settle_s=20.0)
    gpu = GpuAdmission((minor,), folder=Path(folder), poll_s=0.1, max_wait_s=max_wait_s)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu_uuid(minor))

    def before(ticket):
        check.before_job(alone=ticket.alone, idle_used=ticket.idle_used_bytes)

    def after():
        problem = check.after_job()
        log.put((name, "checks memory", problem or "back at baseline"))
        return problem

    with gpu.slot(
        request, before=before, after=after, on_wait=lambda why: log.put((name, "waits", why))
    ) as ticket:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(hold_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert holder.stdout.readline().strip() == b"holding"
        log.put((name, "in", json.dumps(ticket.describe())))
        if go is not None:
            go.wait(120)
        holder.stdin.close()  # the sandboxes of a job are gone before it leaves its slot
        holder.wait(60)
        log.put((name, "leaving", ""))


class GpuJobs(Jobs):
    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, memory=None)
        self.minor = gpu_minor()

    def start(self, name, request, go=None, *, hold_bytes=2 * GIB, max_wait_s=120.0):
        process = FORK.Process(
            target=gpu_job,
            args=(name, str(self.folder), self.minor, request, hold_bytes, self.log, go),
            kwargs={"max_wait_s": max_wait_s},
        )
        process.start()
        self.processes.append(process)
        return process

    def state(self) -> dict:
        path = self.folder / f"gpu-{self.minor}.share.json"
        return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.gpu
@pytest.mark.skipif(not Path("/dev/nvidia0").exists(), reason="no NVIDIA GPU on this node")
@pytest.mark.timeout(300)
def test_correctness_jobs_share_a_real_gpu_a_timing_job_waits_and_memory_comes_back(tmp_path):
    jobs = GpuJobs(tmp_path)
    first_may_leave, second_may_leave = FORK.Event(), FORK.Event()
    declared = Request(exclusive=False, memory_bytes=6 * GIB)
    jobs.start("shared-1", declared, first_may_leave, hold_bytes=4 * GIB)
    one = json.loads(jobs.wait_for("shared-1", "in"))
    assert one["mode"] == "shared" and one["shared_with"] == 0
    jobs.start("shared-2", declared, second_may_leave, hold_bytes=4 * GIB)
    two = json.loads(jobs.wait_for("shared-2", "in"))
    # Admitted beside shared-1 on what NVML reported free, with shared-1's memory counted.
    assert two["mode"] == "shared" and two["shared_with"] == 1, two
    assert two["reason"].startswith("fits: 6144 MiB asked"), two
    jobs.start("timing", Request(exclusive=True), hold_bytes=GIB)
    while not jobs.state().get("timing_waiting"):
        time.sleep(0.05)
    jobs.start("shared-3", declared, hold_bytes=GIB)
    assert "a timing job is waiting" in jobs.wait_for("shared-3", "waits")
    second_may_leave.set()
    first_may_leave.set()
    order = jobs.finish()
    assert order.index(("timing", "in")) > max(
        order.index(("shared-1", "leaving")), order.index(("shared-2", "leaving"))
    )
    assert order.index(("shared-3", "in")) > order.index(("timing", "leaving"))
    checks = [(name, detail) for name, what, detail in jobs.seen if what == "checks memory"]
    # One check for the pair (by the last of the two out), one each for the jobs that ran alone.
    assert len(checks) == 3, checks
    assert all(detail == "back at baseline" for _, detail in checks), checks
    print(f"\nshared-2 admitted: {two['reason']}")


@pytest.mark.gpu
@pytest.mark.skipif(not Path("/dev/nvidia0").exists(), reason="no NVIDIA GPU on this node")
@pytest.mark.timeout(300)
def test_a_job_whose_memory_does_not_fit_runs_alone_after_the_bounded_wait(tmp_path):
    import pynvml

    from runner.gpu import nvml_index

    jobs = GpuJobs(tmp_path)
    pynvml.nvmlInit()
    try:
        total = pynvml.nvmlDeviceGetMemoryInfo(
            pynvml.nvmlDeviceGetHandleByIndex(nvml_index(pynvml, jobs.minor))
        ).total
    finally:
        pynvml.nvmlShutdown()
    big_may_leave = FORK.Event()
    # The first takes more than half the card, so the second's declaration cannot fit beside it.
    half = total // 2 + GIB
    jobs.start(
        "big", Request(exclusive=False, memory_bytes=half), big_may_leave, hold_bytes=half - GIB
    )
    jobs.wait_for("big", "in")
    jobs.start("second", Request(exclusive=False, memory_bytes=half), hold_bytes=GIB, max_wait_s=3)
    assert jobs.wait_for("second", "waits").startswith("not enough GPU memory")
    time.sleep(5)  # past its bounded wait: it now queues to run alone, behind `big`
    big_may_leave.set()
    detail = json.loads(jobs.wait_for("second", "in"))
    assert detail["mode"] == "exclusive" and "ran alone" in detail["reason"], detail
    jobs.finish()
