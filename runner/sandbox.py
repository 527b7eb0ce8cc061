"""Launch untrusted Python in a bubblewrap sandbox, with resource limits and a wall clock.

The sandbox (mode "bwrap") gets new namespaces (its network has only loopback), a read-only
view of the system and of this Python environment, a private /tmp, an empty environment, and
one writable job folder mounted at /job. Mode "none" runs the same command directly; only an
operator may choose it, for local development, by setting RUNNER_ALLOW_UNSANDBOXED=1.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runner import proctree

ALLOW_UNSANDBOXED_ENV = "RUNNER_ALLOW_UNSANDBOXED"
BWRAP_ENV = "RUNNER_BWRAP"
GPU_DEVICES_ENV = "RUNNER_GPU_DEVICES"

JOB_MOUNT = "/job"
CODE_MOUNT = "/opt/inference-roadmap"

RUNNER_PACKAGE = Path(__file__).resolve().parent

# /etc holds more than a sandbox needs (and, on a worker node, possibly the broker password);
# these are the files the dynamic linker and Python actually read.
_ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "passwd",
    "group",
    "hosts",
    "localtime",
    "alternatives",
    "os-release",
)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up here; the worker refuses to grade and says why."""


@dataclass(frozen=True)
class ResourceLimits:
    cpu_seconds: int
    file_size_bytes: int
    # RLIMIT_NPROC counts every process of the user, worker included, and root ignores it; it
    # is set only when the worker runs as an ordinary user.
    max_processes: int = 1024
    # CPUs the process may run on (sched_setaffinity); None leaves the worker's own set.
    cpus: frozenset[int] | None = None


@dataclass(frozen=True)
class SandboxPolicy:
    mode: str = "bwrap"
    bwrap: str = "/usr/bin/bwrap"
    gpu_devices: tuple[str, ...] = field(default=())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxPolicy:
        """The policy the operator chose; unsandboxed only with RUNNER_ALLOW_UNSANDBOXED=1."""
        environ = os.environ if environ is None else environ
        if environ.get(ALLOW_UNSANDBOXED_ENV) == "1":
            return cls(mode="none")
        bwrap = environ.get(BWRAP_ENV) or shutil.which("bwrap") or "/usr/bin/bwrap"
        devices = tuple(d for d in environ.get(GPU_DEVICES_ENV, "").split(",") if d)
        return cls(mode="bwrap", bwrap=bwrap, gpu_devices=devices)

    def job_path(self, jobdir: Path) -> str:
        """Where the job folder appears to the sandboxed process."""
        return JOB_MOUNT if self.mode == "bwrap" else str(jobdir)

    def code_root(self) -> str:
        """The folder to put on sys.path so that `import runner` works inside."""
        return CODE_MOUNT if self.mode == "bwrap" else str(RUNNER_PACKAGE.parent)

    def check(self) -> None:
        """Raise SandboxUnavailable unless a sandboxed Python starts and prints; cached."""
        if self.mode == "none":
            return
        if self.mode != "bwrap":
            raise SandboxUnavailable(f"unknown sandbox mode {self.mode!r}")
        if self in _CHECKED:
            return
        if not (os.path.isfile(self.bwrap) and os.access(self.bwrap, os.X_OK)):
            raise SandboxUnavailable(
                f"bubblewrap is not installed ({self.bwrap} not found); install the Debian "
                f"package 'bubblewrap', or set {ALLOW_UNSANDBOXED_ENV}=1 on a development machine"
            )
        with tempfile.TemporaryDirectory(prefix="runner-selftest-") as tmp:
            try:
                result = subprocess.run(
                    self.command(
                        [sys.executable, "-I", "-c", "print('sandbox-ok')"], jobdir=Path(tmp)
                    ),
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxUnavailable(f"bubblewrap self-test could not run: {exc}") from None
        if result.returncode != 0 or "sandbox-ok" not in result.stdout:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SandboxUnavailable(
                f"bubblewrap self-test failed (exit {result.returncode}: {detail[0]}); user "
                "namespaces may be disabled on this host"
            )
        _CHECKED.add(self)

    def command(
        self,
        argv: Sequence[str],
        *,
        jobdir: Path,
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The full command line that runs `argv` in this sandbox with `jobdir` writable."""
        environment = self.environment(jobdir=jobdir, extra=env)
        if self.mode == "none":
            return list(argv)
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
        # The private /tmp comes before the binds: a checkout or virtualenv that lives under
        # /tmp (CI clones, for one) is then bound on top of it instead of being hidden by it.
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        args += _system_binds()
        for prefix in _python_prefixes():
            args += ["--ro-bind", prefix, prefix]
        args += ["--ro-bind", str(RUNNER_PACKAGE), f"{CODE_MOUNT}/runner"]
        for device in self.gpu_devices:
            args += ["--dev-bind", device, device]
        args += ["--bind", str(jobdir), JOB_MOUNT]
        # The sandbox's root is a tmpfs that bwrap built; freeze it so that only /job and /tmp
        # take writes.
        args += ["--remount-ro", "/", "--clearenv"]
        for key, value in environment.items():
            args += ["--setenv", key, value]
        args += ["--chdir", JOB_MOUNT, "--"]
        return args + list(argv)

    def environment(self, *, jobdir: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The whole environment of the sandboxed process: nothing of the worker's leaks in."""
        environment = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.job_path(jobdir),
            "LANG": "C.UTF-8",
            "PYTHONPATH": self.code_root(),
            "PYTHONDONTWRITEBYTECODE": "1",
            "TMPDIR": "/tmp",
        }
        if self.gpu_devices and "CUDA_VISIBLE_DEVICES" in os.environ:
            environment["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        environment.update(extra or {})
        return environment

    def spawn(
        self,
        argv: Sequence[str],
        *,
        jobdir: Path,
        limits: ResourceLimits,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen:
        """Start `argv` in the sandbox, in its own session so that it can be killed whole."""
        self.check()
        command = self.command(argv, jobdir=jobdir, env=env)
        return subprocess.Popen(
            command,
            cwd=jobdir,
            env=self.environment(jobdir=jobdir, extra=env) if self.mode == "none" else {},
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            preexec_fn=_limiter(limits),
            close_fds=True,
        )


_CHECKED: set[SandboxPolicy] = set()


def kill(process: subprocess.Popen) -> None:
    """Kill the process, its group and every descendant, then reap it."""
    if process.poll() is None:
        # Collect the tree first: once the root dies its children are reparented away.
        proctree.signal_tree(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def describe_exit(returncode: int | None) -> str:
    """A learner-facing phrase for how a sandboxed process ended."""
    if returncode is None:
        return "is still running"
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    reasons = {
        signal.SIGXCPU: "it used up its CPU-time limit",
        signal.SIGXFSZ: "it wrote more than its file-size limit",
        signal.SIGKILL: "it was killed (out of memory, or past a limit)",
        signal.SIGSEGV: "it crashed (segmentation fault)",
        signal.SIGABRT: "it aborted",
    }
    name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else number
    reason = reasons.get(number)
    return f"was killed by signal {name}" + (f" ({reason})" if reason else "")


def _limiter(limits: ResourceLimits) -> Any:
    not_root = os.geteuid() != 0

    def apply() -> None:
        # Runs in the child between fork and exec: only setrlimit calls, no allocation-heavy work.
        _set(resource.RLIMIT_CORE, 0)
        _set(resource.RLIMIT_CPU, limits.cpu_seconds, hard_extra=5)
        _set(resource.RLIMIT_FSIZE, limits.file_size_bytes)
        if not_root:
            _set(resource.RLIMIT_NPROC, limits.max_processes)
        if limits.cpus:
            os.sched_setaffinity(0, limits.cpus)

    return apply


def _set(which: int, soft: int, *, hard_extra: int = 0) -> None:
    _, current_hard = resource.getrlimit(which)
    hard = soft + hard_extra
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _system_binds() -> list[str]:
    args = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in _ETC_FILES:
        if os.path.lexists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


def _python_prefixes() -> list[str]:
    """This interpreter's install and virtualenv folders, unless /usr already covers them."""
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        str(Path(os.path.realpath(sys.executable)).parent.parent),
    }
    prefixes = []
    for prefix in sorted(candidates):
        real = os.path.realpath(prefix)
        if any(real == d or real.startswith(d + "/") for d in ("/usr", "/bin", "/lib")):
            continue
        for path in sorted({prefix, real}):
            if path not in prefixes and os.path.isdir(path):
                prefixes.append(path)
    return prefixes
