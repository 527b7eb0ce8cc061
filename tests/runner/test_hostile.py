"""Hostile submissions, end to end through run_job in the real sandbox.

Every case in notebooks/softmax/fixtures/hostile/ (built by build_hostile.py, which also
writes cases.json with each one's expected verdict) must end with its verdict and a clear
message, leave the worker healthy (no process of it left, no cgroup, no file in the host's
/tmp or /dev/shm, an empty job folder root), and the reference submission graded after all of
them must pass. The job asks for small limits so each case is quick: a 1 s cell limit where
the case is meant to time out, 512 MiB of memory, 64 processes, 64 MiB per tmpfs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path

import pytest

from runner import proctree
from runner.cgroup import CHILD_PREFIX
from runner.pipeline import run_job
from runner.sandbox import format_bytes
from runner.schema import check_report
from tests.runner.support import FIXTURES, LAB, SEED, criterion, make_job, read_notebook

HOSTILE = FIXTURES / "hostile"
CASES = json.loads((HOSTILE / "cases.json").read_text())
TIMES_OUT = {name for name, case in CASES.items() if case["status"] == "timeout"}
MEMORY = 512 << 20
PROCESSES = 64
DISK = 64 << 20
DECOY = "hostile" + "-decoy"

# A case takes 2-10 s here; the limit is for a sandbox that never ends.
pytestmark = pytest.mark.timeout(120)


def limits(name: str) -> dict[str, float]:
    return {
        # The cases meant to time out do it in their first cell, before anything slow.
        "cell_timeout_s": 1 if name in TIMES_OUT else 20,
        "total_timeout_s": 40,
        "max_output_bytes": 100_000,
        # Under a cgroup the private tmpfs folders count as memory too: filling all three
        # (3 x 64 MiB) next to a kernel with torch loaded needs more than 512 MiB.
        "memory_bytes": 1 << 30 if name == "fills_disk" else MEMORY,
        "max_processes": PROCESSES,
        "disk_bytes": DISK,
    }


@pytest.fixture(scope="module")
def workroot(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-jobs")
    # Another learner's job, with a file the hostile notebooks must not find.
    other = root / "other-learner-a1-0000"
    other.mkdir()
    (other / "solution.py").write_text(f"# {DECOY}: another learner's work\n")
    return root


@pytest.fixture(scope="module")
def worker_secret():
    """A secret in the worker's own environment, as a broker password would be."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RUNNER_TEST_SECRET", f"{DECOY}-broker-password")
        yield


@pytest.fixture(scope="module")
def run_case(policy, workroot, worker_secret):
    """run_case(name) -> report, with the worker's health checked right after the job; each
    (name, submission_id) runs once per session and several tests read its report."""
    sensitive = {path: _digest(path) for path in ("/etc/passwd", "/etc/hosts")}
    cache: dict[tuple[str, str | None], dict] = {}

    def cached(name: str, *, submission_id: str | None = None) -> dict:
        if (name, submission_id) not in cache:
            cache[name, submission_id] = run(name, submission_id=submission_id)
        return cache[name, submission_id]

    def run(name: str, *, submission_id: str | None = None) -> dict:
        path = HOSTILE / f"{name}.ipynb" if name in CASES else LAB / name
        before = _snapshot()
        progress: list[tuple[str, dict]] = []
        started = time.monotonic()
        report = run_job(
            make_job(
                read_notebook(path),
                submission_id=submission_id or f"hostile-{name}",
                limits=limits(name),
            ),
            workroot=workroot,
            policy=policy,
            on_progress=lambda stage, **info: progress.append((stage, info)),
        )
        report["_seconds"] = time.monotonic() - started
        report["_progress"] = progress
        _assert_worker_is_clean(policy, workroot, before)
        assert {path: _digest(path) for path in sensitive} == sensitive
        check_report({k: v for k, v in report.items() if not k.startswith("_")})
        json.dumps({k: v for k, v in report.items() if not k.startswith("_")}, allow_nan=False)
        assert SEED not in json.dumps(report)
        return report

    return cached


def _snapshot() -> dict[str, set]:
    """What exists before a case: host scratch entries, and this process's children (a
    session-wide browser of other tests, say), which are not the job's."""
    folders = {folder: _entries(folder) for folder in ("/tmp", "/dev/shm")}
    return folders | {"pids": set(proctree.descendants(os.getpid()))}


def _assert_worker_is_clean(policy, workroot: Path, before: dict[str, set]) -> None:
    # No process of the job is left: none below this (worker) process that was not there
    # before, none anywhere on the host carrying the daemon cases' marker.
    alive = [
        p for p in proctree.descendants(os.getpid())
        if p not in before["pids"] and _state(p) not in (None, "Z")
    ]  # fmt: skip
    assert alive == [], [_cmdline(p) for p in alive]
    assert _marked_processes("hostile-daemon-marker") == []
    # Nothing left in the host's shared scratch folders by the sandbox user.
    for folder, entries in ((k, v) for k, v in before.items() if k != "pids"):
        new = _entries(folder) - entries
        assert [n for n in new if "hostile" in n or _owner(Path(folder) / n) == policy.uid] == []
    # The job's folder is gone; only the decoy job remains.
    assert sorted(p.name for p in workroot.iterdir()) == ["other-learner-a1-0000"]
    support = policy.cgroups()
    if support.available:
        mine = f"{CHILD_PREFIX}{os.getpid()}-"
        assert [c for c in support.parent.iterdir() if c.name.startswith(mine)] == []


@pytest.mark.parametrize("name", [n for n in CASES if n != "leftovers"])
def test_each_hostile_case_ends_with_its_verdict(run_case, name):
    case = CASES[name]
    report = run_case(name)
    assert report["status"] == case["status"], report["message"]
    assert case["message"] in report["message"]
    assert report["message"].strip()
    # Nothing the submission did made it pass: no criterion at all, or not all of them.
    assert not report["criteria"] or not all(c["passed"] for c in report["criteria"])


def test_a_fork_bomb_in_the_graded_function_is_held_by_the_process_limit(run_case):
    message = run_case("fork_bomb_graded")["message"]
    forked = int(message.split("forked ")[1].split()[0])
    assert 0 < forked < PROCESSES


def test_a_memory_bomb_is_stopped_at_the_memory_limit(policy, run_case):
    cell = run_case("memory_bomb")["message"]
    graded = run_case("memory_bomb_graded")["message"]
    if policy.cgroups().available:  # the kernel OOM killer, told by the cgroup's events
        assert cell.startswith("The Python kernel was stopped while running cell 6")
        assert f"memory limit of {format_bytes(MEMORY)}" in cell
        assert f"memory limit of {format_bytes(MEMORY)}" in graded
    else:  # per-process RLIMIT_DATA: the allocation fails inside the learner's code
        assert cell.startswith("Cell 6 raised MemoryError")
        assert "raised MemoryError" in graded


def test_printing_gigabytes_keeps_the_report_and_the_log_small(run_case):
    report = run_case("prints_gigabytes")
    assert len(json.dumps(report)) < 400_000
    assert len(report["log_tail"]) <= 9000
    cell = report["executed_notebook"]["cells"][1]
    text = "".join("".join(o.get("text", "")) for o in cell["outputs"])
    assert "[output truncated" in text


def test_filling_the_disk_stops_at_each_private_folders_size(run_case):
    message = run_case("fills_disk")["message"]
    assert "/job: 64 MiB, then ENOSPC" in message
    assert "/dev/shm: 64 MiB, then ENOSPC" in message
    assert "small files:" in message and "no limit" not in message


def test_secrets_of_the_worker_and_of_other_jobs_stay_out_of_reach(run_case):
    report = run_case("reads_secrets")
    assert "found no secret" in report["message"]
    assert "no sensitive path visible" in report["message"]
    assert DECOY not in json.dumps(report).replace('"hostile" + "-decoy"', "")


def test_no_network_connection_gets_out_although_the_services_are_up(run_case):
    up = [port for port in (6379, 5432, 5672) if _listening(port)]
    if not up:
        pytest.skip("none of Redis, PostgreSQL, RabbitMQ listens here: no control")
    for name in ("network", "network_graded"):
        message = run_case(name)["message"]
        assert "ECONNREFUSED" in message and "ENETUNREACH" in message
        assert "CONNECTED" not in message


def test_a_daemon_dies_with_its_sandbox(run_case):
    for name in ("daemon", "daemon_graded"):
        assert "started a daemon" in run_case(name)["message"]
        assert _marked_processes("hostile-daemon-marker") == []


def test_nothing_a_job_leaves_behind_reaches_the_next_one(run_case):
    first = run_case("leftovers", submission_id="hostile-leftovers-1")["message"]
    second = run_case("leftovers", submission_id="hostile-leftovers-2")["message"]
    assert "leftovers of an earlier job: none" in first
    assert "leftovers of an earlier job: none" in second


def test_planted_links_change_nothing_and_grading_goes_on(run_case):
    report = run_case("symlinks")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    assert "planted" in report["log_tail"]


def test_forged_results_files_and_progress_do_not_count(run_case):
    report = run_case("fake_results")
    assert report["status"] == "failed"
    assert not criterion(report, "correct")["passed"]
    stages = [stage for stage, _ in report["_progress"]]
    assert stages.count("done") == 1 and stages[-1] == "done"
    assert report["_progress"][-1][1] == {"status": "failed"}


def test_the_executor_cannot_be_reached_from_the_kernel(run_case):
    message = run_case("forges_channel")["message"]
    assert "could not reach the executor's results channel" in message
    assert "REACHED" not in message


def test_protected_cells_come_back_as_the_starter_has_them(run_case):
    report = run_case("protected_cells")
    assert report["status"] == "failed"  # graded (the restored cells ran), not a dead kernel
    sources = ["".join(c["source"]) for c in report["executed_notebook"]["cells"]]
    assert not any("os._exit" in s for s in sources)
    assert any("torch.allclose" in s for s in sources)  # the deleted self-check is back


def test_after_all_of_them_the_reference_is_graded_normally(policy, graded, workroot):
    # Through the session's cache, so test_pipeline reads this same (slow) run: the modules
    # run in file order, and this is the first time the reference is graded.
    before = _snapshot()
    report = graded("reference.ipynb")
    assert report["status"] == "passed", report["message"]
    assert [c["passed"] for c in report["criteria"]] == [True, True, True]
    _assert_worker_is_clean(policy, workroot, before)


def _entries(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _owner(path: Path) -> int | None:
    try:
        return path.lstat().st_uid
    except OSError:
        return None


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


def _marked_processes(marker: str) -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and marker in _cmdline(int(entry.name))
    ]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
