"""Per-sandbox cgroups, against a fake cgroup folder (this CI host has no cgroup v2 memory
controller): detection, limits, joining, killing, removal, and the policy around them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import cgroup
from runner.cgroup import SandboxCgroup, prepare, sweep_stale
from runner.sandbox import ResourceLimits, SandboxPolicy, SandboxUnavailable, sandbox_status


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A folder laid out like a cgroup2 mount whose root offers memory and pids."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (root / "cgroup.procs").write_text("")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / /proc rw - proc proc rw\n"
        f"30 22 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    # cgroupfs removes a cgroup's interface files with its folder; a plain folder needs help.
    monkeypatch.setattr(cgroup, "_rmdir", shutil.rmtree)
    return root, mountinfo


def test_a_root_worker_makes_its_parent_and_enables_memory_and_pids(fake_root):
    root, mountinfo = fake_root
    support = prepare(None, mountinfo=mountinfo, euid=0)
    assert support.available, support.reason
    assert support.parent == root / "inference-roadmap"
    assert (support.parent / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_a_hybrid_host_without_the_controllers_in_v2_says_so(fake_root):
    root, mountinfo = fake_root
    (root / "cgroup.controllers").write_text("hugetlb\n")
    (root / "cgroup.subtree_control").write_text("")
    support = prepare(None, mountinfo=mountinfo, euid=0)
    assert not support.available
    assert "memory and pids controllers" in support.reason
    assert "attached to cgroup v1" in support.reason


def test_no_cgroup2_mount_means_unavailable(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    support = prepare(None, mountinfo=mountinfo, euid=0)
    assert not support.available and "cgroup v1 only" in support.reason


def test_a_worker_that_is_not_root_needs_a_delegated_parent(fake_root):
    _, mountinfo = fake_root
    support = prepare(None, mountinfo=mountinfo, euid=1000)
    assert not support.available and "RUNNER_CGROUP_PARENT" in support.reason


def test_a_delegated_parent_is_used_as_given(fake_root):
    root, mountinfo = fake_root
    delegated = root / "system.slice" / "worker.service" / "sandboxes"
    delegated.mkdir(parents=True)
    (delegated / "cgroup.controllers").write_text("memory pids\n")
    support = prepare(str(delegated), mountinfo=mountinfo, euid=1000)
    assert support.available and support.parent == delegated


def test_a_parent_outside_the_hierarchy_is_refused(fake_root, tmp_path):
    _, mountinfo = fake_root
    support = prepare(str(tmp_path / "elsewhere"), mountinfo=mountinfo, euid=0)
    assert not support.available and "is not under" in support.reason


def test_off_turns_it_off(fake_root):
    _, mountinfo = fake_root
    assert not prepare("off", mountinfo=mountinfo, euid=0).available


def test_a_sandbox_cgroup_gets_memory_without_swap_and_a_process_limit(fake_root):
    root, _ = fake_root
    (root / "p").mkdir()
    created = SandboxCgroup.create(root / "p", memory_bytes=1 << 30, max_processes=64)
    assert created.path.name.startswith(f"sandbox-{os.getpid()}-")
    assert (created.path / "memory.max").read_text() == str(1 << 30)
    assert (created.path / "pids.max").read_text() == "64"
    # memory.swap.max exists only with swap accounting: absent here, so not written.
    assert not (created.path / "memory.swap.max").exists()


def test_swap_is_turned_off_where_the_kernel_accounts_for_it(fake_root, monkeypatch):
    root, _ = fake_root
    real_mkdir = Path.mkdir

    def mkdir_like_cgroupfs(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        (self / "memory.swap.max").write_text("max")

    monkeypatch.setattr(Path, "mkdir", mkdir_like_cgroupfs)
    created = SandboxCgroup.create(root, memory_bytes=1 << 20, max_processes=8)
    assert (created.path / "memory.swap.max").read_text() == "0"


def test_the_launcher_puts_the_sandboxs_first_process_in_the_cgroup(fake_root, tmp_path):
    root, _ = fake_root
    (root / "p").mkdir()
    (root / "p" / "cgroup.controllers").write_text("memory pids")
    created = SandboxCgroup.create(root / "p", memory_bytes=None, max_processes=None)
    (created.path / "cgroup.procs").write_text("")
    policy = SandboxPolicy(mode="none")
    launch = policy._launch(ResourceLimits(cpu_seconds=10, file_size_bytes=1 << 20), created)
    process = subprocess.Popen(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        stdout=subprocess.PIPE,
        preexec_fn=launch,
    )
    out, _ = process.communicate(timeout=30)
    assert created.pids() == [int(out)] == [process.pid]


def test_kill_writes_cgroup_kill_and_remove_takes_the_folder(fake_root):
    root, _ = fake_root
    created = SandboxCgroup.create(root, memory_bytes=1 << 20, max_processes=8)
    (created.path / "cgroup.kill").write_text("0")
    (created.path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    (created.path / "pids.events").write_text("max 0\n")
    created.kill()
    assert (created.path / "cgroup.kill").read_text() == "1"
    assert created.remove()
    assert not created.path.exists()
    assert created.events == {"oom_kill": 1, "pids_max": 0}


def test_without_cgroup_kill_every_listed_process_is_killed(fake_root):
    root, _ = fake_root
    created = SandboxCgroup.create(root, memory_bytes=None, max_processes=None)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (created.path / "cgroup.procs").write_text(f"{sleeper.pid}\n")
    created.kill()
    assert sleeper.wait(timeout=10) == -signal.SIGKILL


def test_stale_cgroups_of_dead_workers_are_swept(fake_root):
    root, _ = fake_root
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f"sandbox-{dead.pid}-abcd1234"
    mine = root / f"sandbox-{os.getpid()}-abcd1234"
    other = root / "worker"
    for folder in (stale, mine, other):
        folder.mkdir()
    assert sweep_stale(root) == [stale]
    assert mine.exists() and other.exists() and not stale.exists()


def test_remove_gives_up_after_its_timeout_and_says_so(fake_root, monkeypatch, caplog):
    root, _ = fake_root
    created = SandboxCgroup.create(root, memory_bytes=None, max_processes=None)

    def busy(path):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(cgroup, "_rmdir", busy)
    started = time.monotonic()
    assert created.remove(timeout_s=0.1) is False
    assert time.monotonic() - started < 2
    assert "could not remove cgroup" in caplog.text


def test_mountinfo_escapes_are_decoded(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("30 22 0:26 / /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n")
    assert cgroup.cgroup2_mount(mountinfo) == Path("/sys/fs/my cgroup")


def test_production_refuses_to_grade_without_cgroup_limits():
    # Any executable stands in for bwrap: the cgroup requirement is checked before bwrap runs.
    policy = SandboxPolicy(bwrap=sys.executable, cgroup_parent="off", require_cgroup=True)
    with pytest.raises(SandboxUnavailable, match="cgroup limits are required"):
        policy.check()
    status = sandbox_status(policy)
    assert status["ok"] is False and "cgroup limits are required" in status["reason"]


def test_require_cgroup_defaults_on_with_a_production_broker_only():
    assert SandboxPolicy.from_env({}).require_cgroup is False
    assert SandboxPolicy.from_env({"CELERY_BROKER_URL": "filesystem://"}).require_cgroup is False
    redis = {"CELERY_BROKER_URL": "redis://broker:6379/0"}
    assert SandboxPolicy.from_env(redis).require_cgroup is True
    assert SandboxPolicy.from_env(redis | {"RUNNER_REQUIRE_CGROUP": "0"}).require_cgroup is False
    assert SandboxPolicy.from_env({"RUNNER_REQUIRE_CGROUP": "1"}).require_cgroup is True
    with pytest.raises(SandboxUnavailable, match="must be 0 or 1"):
        SandboxPolicy.from_env({"RUNNER_REQUIRE_CGROUP": "yes"})
