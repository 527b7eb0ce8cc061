from __future__ import annotations

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
def test_only_the_job_folder_is_writable(policy, tmp_path):
    code = """
import os
for path in ["/job/ok.txt", "/usr/evil", "/etc/evil", "/opt/inference-roadmap/runner/evil.py",
             os.path.dirname(os.__file__) + "/evil.py", "/tmp/scratch"]:
    try:
        with open(path, "w") as handle:
            handle.write("x")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, type(exc).__name__)
"""
    out = run_python(policy, tmp_path, code)
    assert "wrote /job/ok.txt" in out
    assert "wrote /tmp/scratch" in out  # a private tmpfs
    assert out.count("refused") == 4
    assert (tmp_path / "ok.txt").read_text() == "x"


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
    assert (tmp_path / "big").stat().st_size <= LIMITS.file_size_bytes


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
    tmpfs = command.index("--tmpfs")
    binds = [i for i, arg in enumerate(command) if arg == "--ro-bind"]
    assert command[tmpfs + 1] == "/tmp" and tmpfs < min(binds)
