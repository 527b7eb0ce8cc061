from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner import proctree
from runner.sandbox import (
    ResourceLimits,
    SandboxPolicy,
    SandboxUnavailable,
    describe_exit,
    kill,
    sandbox_status,
)
from tests.runner.support import LAB, requires_bwrap

LIMITS = ResourceLimits(cpu_seconds=60, file_size_bytes=1 << 20)


def run_python(policy: SandboxPolicy, jobdir: Path, code: str, timeout: float = 30) -> str:
    process = policy.spawn(
        [sys.executable, "-c", code],
        jobdir=jobdir,
        limits=LIMITS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        kill(process)
    return out.decode()


CONNECT = """
import socket, sys
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        print(port, "connected")
    except OSError as exc:
        print(port, "blocked", type(exc).__name__)
"""


@requires_bwrap
def test_sandboxed_code_cannot_reach_redis_or_any_host_port(policy, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        # Control: the same connection works from outside the sandbox, so a "blocked" below
        # is the sandbox's doing.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        code = CONNECT.replace("sys.argv[1:]", f"[6379, {port}]")
        out = run_python(policy, tmp_path, code)
    finally:
        listener.close()
    assert "6379 blocked" in out
    assert f"{port} blocked" in out
    assert "connected" not in out


@requires_bwrap
def test_sandboxed_code_cannot_read_the_workers_environment(policy, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_TEST_SECRET", "broker-password-1234")
    out = run_python(
        policy,
        tmp_path,
        "import os, glob\n"
        "print(sorted(os.environ))\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try: print(open(path, 'rb').read())\n"
        "    except OSError: pass\n",
    )
    assert "RUNNER_TEST_SECRET" not in out
    assert "broker-password-1234" not in out
    assert "'HOME'" in out  # the program did run and print its environment


@requires_bwrap
def test_only_private_tmpfs_folders_are_writable_and_nothing_reaches_the_host(policy, tmp_path):
    code = """
import os
for path in ["/job/ok.txt", "/tmp/scratch", "/dev/shm/segment", "/usr/evil", "/etc/evil",
             "/opt/inference-roadmap/runner/evil.py", "/dev/evil", "/evil",
             os.path.dirname(os.__file__) + "/evil.py"]:
    try:
        with open(path, "w") as handle:
            handle.write("x")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, type(exc).__name__)
"""
    out = run_python(policy, tmp_path, code)
    for private in ("/job/ok.txt", "/tmp/scratch", "/dev/shm/segment"):
        assert f"wrote {private}" in out
    assert out.count("refused") == 6
    # /job is the sandbox's own tmpfs: the host folder it was started from got nothing.
    assert list(tmp_path.iterdir()) == []


@requires_bwrap
def test_each_private_folder_is_a_tmpfs_of_the_given_size(policy, tmp_path):
    limits = ResourceLimits(cpu_seconds=60, file_size_bytes=64 << 20, disk_bytes=2 << 20)
    process = policy.spawn(
        [
            sys.executable,
            "-c",
            "import os\n"
            "for folder in ('/job', '/tmp', '/dev/shm'):\n"
            "    s = os.statvfs(folder)\n"
            "    print(folder, s.f_blocks * s.f_frsize)\n",
        ],
        jobdir=tmp_path,
        limits=limits,
        stdout=subprocess.PIPE,
    )
    out, _ = process.communicate(timeout=30)
    kill(process)
    sizes = dict(line.split() for line in out.decode().splitlines())
    assert sizes == {"/job": str(2 << 20), "/tmp": str(2 << 20), "/dev/shm": str(2 << 20)}


@requires_bwrap
def test_inputs_are_copied_in_read_only(policy, tmp_path):
    (tmp_path / "input.txt").write_text("from the worker")
    process = policy.spawn(
        [
            sys.executable,
            "-c",
            "print(open('/job/input.txt').read())\n"
            "try:\n"
            "    open('/job/input.txt', 'w')\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n",
        ],
        jobdir=tmp_path,
        limits=LIMITS,
        stdout=subprocess.PIPE,
        inputs=["input.txt"],
    )
    out, _ = process.communicate(timeout=30)
    kill(process)
    assert out.decode().split("\n")[:2] == ["from the worker", "refused OSError"]


@requires_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker switches users")
def test_a_root_worker_runs_sandboxes_as_an_unprivileged_host_user(policy, tmp_path):
    process = policy.spawn(
        [sys.executable, "-c", "import os, time; print(os.getuid(), flush=True); time.sleep(60)"],
        jobdir=tmp_path,
        limits=LIMITS,
        stdout=subprocess.PIPE,
    )
    try:
        inside = process.stdout.readline().strip()
        host_uids = {_uid(pid) for pid in [process.pid, *proctree.descendants(process.pid)]}
    finally:
        kill(process)
    assert policy.uid not in (0, os.geteuid())
    assert inside == str(policy.uid).encode()
    # Not just renamed inside a user namespace: every process of it has that uid on the host.
    assert host_uids == {policy.uid}


def test_code_that_asks_for_its_user_name_gets_one(policy, tmp_path):
    # The sandbox's uid has no passwd entry; torch.compile (and much else) calls
    # getpass.getuser() and raised KeyError inside the sandbox before USER was set.
    code = "import getpass, os; print(getpass.getuser(), os.environ['TORCHINDUCTOR_CACHE_DIR'])"
    process = policy.spawn(
        [sys.executable, "-c", code], jobdir=tmp_path, limits=LIMITS, stdout=subprocess.PIPE
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    user, cache = out.decode().split()
    assert user == "learner"
    assert cache.startswith(policy.job_path(tmp_path))


def test_a_root_worker_defaults_to_nobody_and_a_normal_one_to_itself():
    from runner.sandbox import DEFAULT_SANDBOX_UID

    expected = DEFAULT_SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    assert SandboxPolicy.from_env({}).uid == expected
    assert SandboxPolicy.from_env({"RUNNER_SANDBOX_UID": "4242"}).uid == 4242
    assert SandboxPolicy.from_env({"RUNNER_ALLOW_UNSANDBOXED": "1"}).uid == os.geteuid()
    with pytest.raises(SandboxUnavailable, match="numeric id"):
        SandboxPolicy.from_env({"RUNNER_SANDBOX_UID": "nobody"})


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("Uid:"))
    return int(line.split()[1])


@requires_bwrap
def test_no_new_user_namespace_can_be_made_inside(policy, tmp_path):
    out = run_python(
        policy,
        tmp_path,
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.unshare(0x10000000), os.strerror(ctypes.get_errno()))\n",
    )
    assert out.startswith("-1 ")


@requires_bwrap
def test_the_lab_folders_and_reference_solutions_are_invisible(policy, tmp_path):
    out = run_python(
        policy,
        tmp_path,
        f"import os; print(os.path.exists({str(LAB)!r}), os.path.exists('/opt/inference-roadmap'"
        f"), sorted(os.listdir('/opt/inference-roadmap')))",
    )
    assert out.split("\n")[0] == "False True ['runner']"


@requires_bwrap
def test_a_kill_takes_the_whole_process_tree(policy, tmp_path):
    code = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); "
        "time.sleep(600)'])\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = policy.spawn(
        [sys.executable, "-c", code], jobdir=tmp_path, limits=LIMITS, stdout=subprocess.PIPE
    )
    assert process.stdout.readline().strip() == b"started"
    time.sleep(0.3)
    tree = proctree.descendants(process.pid)
    assert len(tree) >= 2
    kill(process)
    time.sleep(0.2)
    alive = [pid for pid in tree if _alive(pid)]
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@requires_bwrap
def test_the_file_size_limit_stops_a_runaway_writer(policy, tmp_path):
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process.
    out = run_python(
        policy,
        tmp_path,
        "import errno\n"
        "try:\n"
        "    open('/job/big', 'wb').write(b'x' * (4 << 20))\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno == errno.EFBIG)\n",
    )
    assert out.strip() == "refused True"


def test_it_refuses_when_bwrap_is_missing(tmp_path):
    policy = SandboxPolicy(mode="bwrap", bwrap=str(tmp_path / "no-bwrap"))
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        policy.check()


def test_it_refuses_when_bwrap_fails_its_self_test(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="self-test failed.*new namespace"):
        SandboxPolicy(mode="bwrap", bwrap=str(fake)).check()


def test_unsandboxed_mode_needs_the_operators_explicit_consent():
    assert SandboxPolicy.from_env({}).mode == "bwrap"
    assert SandboxPolicy.from_env({"RUNNER_ALLOW_UNSANDBOXED": "yes"}).mode == "bwrap"
    assert SandboxPolicy.from_env({"RUNNER_ALLOW_UNSANDBOXED": "1"}).mode == "none"


def test_unsandboxed_mode_still_clears_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_TEST_SECRET", "s3cret")
    out = run_python(SandboxPolicy(mode="none"), tmp_path, "import os; print(sorted(os.environ))")
    assert "RUNNER_TEST_SECRET" not in out and "'HOME'" in out


def test_describe_exit_explains_limits():
    assert describe_exit(0) == "exited with code 0"
    assert "CPU-time limit" in describe_exit(-24)
    assert "file-size limit" in describe_exit(-25)


def test_the_private_tmp_is_mounted_before_the_code_so_checkouts_under_tmp_work(tmp_path):
    """A CI clone or virtualenv under /tmp must be bound on top of the sandbox's /tmp, not
    hidden by it (bwrap applies mounts in order)."""
    command = SandboxPolicy(mode="bwrap", bwrap="/usr/bin/bwrap").command(
        ["python3", "-c", "pass"], jobdir=tmp_path
    )
    tmpfs = [i for i, arg in enumerate(command) if arg == "--tmpfs"]
    tmp = next(i for i in tmpfs if command[i + 1] == "/tmp")
    binds = [i for i, arg in enumerate(command) if arg == "--ro-bind"]
    assert tmp < min(binds)


def test_the_status_warns_loudly_when_unsandboxed():
    status = sandbox_status(SandboxPolicy.from_env({"RUNNER_ALLOW_UNSANDBOXED": "1"}))
    assert status["mode"] == "none" and status["ok"] is True and status["bwrap"] is None
    assert any("WITHOUT a sandbox" in w for w in status["warnings"])


def test_the_status_says_why_the_worker_would_refuse(tmp_path):
    status = sandbox_status(SandboxPolicy(bwrap=str(tmp_path / "no-bwrap")))
    assert status["ok"] is False
    assert "bubblewrap is not installed" in status["reason"]
    assert any("refuses to grade" in w for w in status["warnings"])


@requires_bwrap
def test_the_status_of_a_working_sandbox_names_its_user_version_and_limits(policy):
    status = sandbox_status(policy)
    assert status["ok"] is True and status["mode"] == "bwrap"
    assert status["bwrap"]["version"].startswith("bubblewrap ")
    assert status["uid"] == policy.uid and status["unprivileged"] is (policy.uid != 0)
    assert set(status["cgroup"]) == {"available", "reason", "parent", "required"}
    no_cgroup = [w for w in status["warnings"] if w.startswith("No cgroup limits")]
    assert bool(no_cgroup) is not status["cgroup"]["available"]


def test_sandboxing_as_the_workers_own_user_leaves_room_for_what_it_already_runs(monkeypatch):
    import resource

    from runner import proctree

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(proctree, "count_tasks", lambda uid: 700 if uid == 1000 else 0)
    limits = ResourceLimits(cpu_seconds=10, file_size_bytes=1 << 20, max_processes=64)
    own = SandboxPolicy(mode="none")._launch(limits, None)
    nproc = {which: soft for which, soft, _ in own.rlimits}[resource.RLIMIT_NPROC]
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    assert nproc == (764 if hard == resource.RLIM_INFINITY else min(764, hard))
    assert own.uid is None  # no switch: a normal user cannot
