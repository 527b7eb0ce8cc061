"""Launch untrusted Python in a bubblewrap sandbox, with resource limits and a wall clock.

The sandbox (mode "bwrap") gets new namespaces (its network has only loopback), a read-only
view of the system and of this Python environment, an empty environment, and no writable
host folder at all: /job (its home and working folder), /tmp and /dev/shm are private tmpfs
mounts of a fixed size that vanish with it. Inputs are copied in (`inputs=`); results come
back through pipes. It runs as an unprivileged uid on the host (see runner.launch), inside
its own cgroup v2 where the host offers one (see runner.cgroup).

Mode "none" runs the same command directly; only an operator may choose it, for local
development, by setting RUNNER_ALLOW_UNSANDBOXED=1. See docs/security.md.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runner import cgroup as cgroups
from runner import launch, proctree, safeio
from runner.sandbox_process import (  # noqa: F401 - part of this module's interface
    SandboxProcess,
    describe_end,
    describe_exit,
    format_bytes,
    init_pidfd_from,
    kill,
)

ALLOW_UNSANDBOXED_ENV = "RUNNER_ALLOW_UNSANDBOXED"
BWRAP_ENV = "RUNNER_BWRAP"
GPU_DEVICES_ENV = "RUNNER_GPU_DEVICES"
SANDBOX_UID_ENV = "RUNNER_SANDBOX_UID"
SANDBOX_GID_ENV = "RUNNER_SANDBOX_GID"
CGROUP_PARENT_ENV = "RUNNER_CGROUP_PARENT"
REQUIRE_CGROUP_ENV = "RUNNER_REQUIRE_CGROUP"

# "nobody" on Debian and most distributions; a host running several workers should give
# each its own uid (RUNNER_SANDBOX_UID) so that process counts never mix.
DEFAULT_SANDBOX_UID = 65534

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

logger = logging.getLogger(__name__)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up here; the worker refuses to grade and says why."""


@dataclass(frozen=True)
class ResourceLimits:
    cpu_seconds: int
    file_size_bytes: int
    # pids.max of the sandbox's cgroup (threads count too). Without a cgroup it becomes
    # RLIMIT_NPROC, which counts every process of the sandbox uid on the host and which
    # root ignores: it is set only when the sandbox does not run as root.
    max_processes: int = 512
    # CPUs the process may run on (sched_setaffinity); None leaves the worker's own set.
    cpus: frozenset[int] | None = None
    # memory.max of the sandbox's cgroup (swap 0). Without a cgroup: RLIMIT_DATA, per
    # process (never RLIMIT_AS, which breaks CUDA's address-space reservations).
    memory_bytes: int = 4 << 30
    # Size of each private tmpfs: /job, /tmp and /dev/shm.
    disk_bytes: int = 256 << 20


@dataclass(frozen=True)
class SandboxPolicy:
    mode: str = "bwrap"
    bwrap: str = "/usr/bin/bwrap"
    gpu_devices: tuple[str, ...] = field(default=())
    # None: 65534 when the worker is root, else the worker's own uid (it cannot switch).
    sandbox_uid: int | None = None
    sandbox_gid: int | None = None
    # None or "": automatic (see runner.cgroup.prepare); "off"; or a delegated cgroup path.
    cgroup_parent: str | None = None
    # Refuse to grade when no cgroup can hold the limits (the default in production).
    require_cgroup: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxPolicy:
        """The policy the operator chose; unsandboxed only with RUNNER_ALLOW_UNSANDBOXED=1."""
        environ = os.environ if environ is None else environ
        if environ.get(ALLOW_UNSANDBOXED_ENV) == "1":
            return cls(mode="none", cgroup_parent="off")
        bwrap = environ.get(BWRAP_ENV) or shutil.which("bwrap") or "/usr/bin/bwrap"
        devices = tuple(d for d in environ.get(GPU_DEVICES_ENV, "").split(",") if d)
        require = environ.get(REQUIRE_CGROUP_ENV, "")
        if require not in ("", "0", "1"):
            raise SandboxUnavailable(f"{REQUIRE_CGROUP_ENV} must be 0 or 1, not {require!r}")
        return cls(
            mode="bwrap",
            bwrap=bwrap,
            gpu_devices=devices,
            sandbox_uid=_id_from_env(environ, SANDBOX_UID_ENV),
            sandbox_gid=_id_from_env(environ, SANDBOX_GID_ENV),
            cgroup_parent=environ.get(CGROUP_PARENT_ENV) or None,
            require_cgroup=require == "1" if require else _production(environ),
        )

    @property
    def uid(self) -> int:
        """The host uid that sandboxed code runs as."""
        if self.sandbox_uid is not None:
            return self.sandbox_uid
        return DEFAULT_SANDBOX_UID if os.geteuid() == 0 and self.mode == "bwrap" else os.geteuid()

    @property
    def gid(self) -> int:
        if self.sandbox_gid is not None:
            return self.sandbox_gid
        return self.uid if self.uid != os.geteuid() else os.getegid()

    def job_path(self, jobdir: Path) -> str:
        """Where the job folder appears to the sandboxed process."""
        return JOB_MOUNT if self.mode == "bwrap" else str(jobdir)

    def code_root(self) -> str:
        """The folder to put on sys.path so that `import runner` works inside."""
        return CODE_MOUNT if self.mode == "bwrap" else str(RUNNER_PACKAGE.parent)

    def cgroups(self) -> cgroups.CgroupSupport:
        if self.mode != "bwrap":
            return cgroups.CgroupSupport(False, "unsandboxed mode uses no cgroups")
        return _cgroup_support(self.cgroup_parent)

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
        if self.uid != os.geteuid() and os.geteuid() != 0:
            raise SandboxUnavailable(
                f"{SANDBOX_UID_ENV}={self.uid} needs a worker running as root (it runs as uid "
                f"{os.geteuid()}); leave it unset to sandbox as the worker's own user"
            )
        for device in self.gpu_devices:
            if not (device.startswith("/dev/") and os.path.exists(device)):
                raise SandboxUnavailable(f"{GPU_DEVICES_ENV} names {device!r}, which is absent")
        support = self.cgroups()
        if self.require_cgroup and not support.available:
            raise SandboxUnavailable(
                f"cgroup limits are required ({REQUIRE_CGROUP_ENV}=1, the default with a "
                f"production broker) but unavailable: {support.reason}; set "
                f"{REQUIRE_CGROUP_ENV}=0 to accept per-process limits only"
            )
        self._self_test()
        _CHECKED.add(self)

    def _self_test(self) -> None:
        with tempfile.TemporaryDirectory(prefix="runner-selftest-") as tmp:
            err_r, err_w = os.pipe()
            try:
                process = self.spawn(
                    [sys.executable, "-I", "-c", "print('sandbox-ok')"],
                    jobdir=Path(tmp),
                    limits=ResourceLimits(cpu_seconds=30, file_size_bytes=1 << 20),
                    stdout=subprocess.PIPE,
                    stderr=err_w,
                    checked=False,
                )
            except OSError as exc:
                raise SandboxUnavailable(f"bubblewrap self-test could not run: {exc}") from None
            finally:
                os.close(err_w)
            try:
                out, _ = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out = b""
            finally:
                kill(process)
                with os.fdopen(err_r, "rb") as err:
                    stderr = err.read(1 << 16).decode("utf-8", "replace")
        if process.returncode != 0 or b"sandbox-ok" not in out:
            lines = (stderr or out.decode("utf-8", "replace")).strip().splitlines()
            detail = lines[-1] if lines else "no output"
            raise SandboxUnavailable(
                f"bubblewrap self-test failed (exit {process.returncode}: {detail}); user "
                "namespaces may be disabled on this host, or bwrap is older than 0.8"
            )

    def command(
        self,
        argv: Sequence[str],
        *,
        jobdir: Path,
        env: Mapping[str, str] | None = None,
        limits: ResourceLimits | None = None,
        inputs: Mapping[str, int] | None = None,
    ) -> list[str]:
        """The full command line that runs `argv` in this sandbox; `inputs` maps a file name
        in /job to a descriptor to copy it from."""
        environment = self.environment(jobdir=jobdir, extra=env)
        if self.mode == "none":
            return list(argv)
        size = str((limits or ResourceLimits(cpu_seconds=1, file_size_bytes=1)).disk_bytes)
        args = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--die-with-parent", "--new-session"]
        args += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm"]
        # The private /tmp comes before the binds: a checkout or virtualenv that lives under
        # /tmp (CI clones, for one) is then bound on top of it instead of being hidden by it.
        args += ["--size", size, "--tmpfs", "/tmp"]
        for kind, source, dest in self.binds():
            args += [kind, source, dest]
        args += ["--size", size, "--tmpfs", JOB_MOUNT]
        for name, fd in (inputs or {}).items():
            args += ["--ro-bind-data", str(fd), f"{JOB_MOUNT}/{name}"]
        # The sandbox's root and /dev are tmpfs mounts that bwrap built; freeze them so that
        # only /job, /tmp and /dev/shm take writes.
        args += ["--remount-ro", "/", "--remount-ro", "/dev", "--clearenv"]
        for key, value in environment.items():
            args += ["--setenv", key, value]
        args += ["--chdir", JOB_MOUNT, "--"]
        return args + list(argv)

    def binds(self) -> list[tuple[str, str, str]]:
        """(option, host source, sandbox path) for everything the sandbox sees of the host.
        Sources are real paths: the launcher stages them, bwrap resolves nothing through
        folders the sandbox user cannot search."""
        binds = []
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                binds.append(("--symlink", os.readlink(path), path))
            elif os.path.isdir(path):
                binds.append(("--ro-bind", path, path))
        for name in _ETC_FILES:
            path = f"/etc/{name}"
            if os.path.lexists(path) and os.path.exists(path):
                binds.append(("--ro-bind", os.path.realpath(path), path))
        for prefix in _python_prefixes():
            binds.append(("--ro-bind", os.path.realpath(prefix), prefix))
        binds.append(("--ro-bind", str(RUNNER_PACKAGE), f"{CODE_MOUNT}/runner"))
        for device in self.gpu_devices:
            binds.append(("--dev-bind", os.path.realpath(device), device))
        return binds

    def environment(self, *, jobdir: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
        """The whole environment of the sandboxed process: nothing of the worker's leaks in."""
        environment = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.job_path(jobdir),
            # The sandbox's uid has no /etc/passwd entry; getpass.getuser() reads these first
            # (torch.compile names its cache folder after the user, and fails without one).
            "USER": "learner",
            "LOGNAME": "learner",
            "TORCHINDUCTOR_CACHE_DIR": f"{self.job_path(jobdir)}/.cache/torchinductor",
            # torch.utils.cpp_extension.load_inline builds CUDA C++ here (kernels lab on GPUs).
            "TORCH_EXTENSIONS_DIR": f"{self.job_path(jobdir)}/.cache/torch_extensions",
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
        inputs: Sequence[str] = (),
        checked: bool = True,
    ) -> SandboxProcess:
        """Start `argv` in the sandbox, in its own session and cgroup so that it can be
        killed whole. `inputs` are names of files in `jobdir` that appear read-only in /job."""
        if checked:
            self.check()
        support = self.cgroups()
        held: dict[str, int] = {}
        cgroup = None
        info_r = info_w = None
        try:
            if self.mode == "bwrap":
                for name in inputs:
                    held[name] = safeio.open_regular(jobdir / name)
            command = self.command(argv, jobdir=jobdir, env=env, limits=limits, inputs=held)
            if self.mode == "bwrap":
                # bwrap reports the pid of the sandbox's init on this descriptor.
                info_r, info_w = os.pipe()
                command[1:1] = ["--info-fd", str(info_w)]
            if support.available:
                cgroup = cgroups.SandboxCgroup.create(
                    support.parent,
                    memory_bytes=limits.memory_bytes,
                    max_processes=limits.max_processes,
                )
            process = SandboxProcess(
                command,
                cwd="/" if self.mode == "bwrap" else jobdir,
                env=self.environment(jobdir=jobdir, extra=env) if self.mode == "none" else {},
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=tuple(pass_fds)
                + tuple(held.values())
                + ((info_w,) if info_w is not None else ()),
                start_new_session=True,
                preexec_fn=self._launch(limits, cgroup),
                close_fds=True,
            )
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            if info_r is not None:
                os.close(info_r)
            raise
        finally:
            for fd in held.values():
                os.close(fd)
            if info_w is not None:
                os.close(info_w)
        process.cgroup = cgroup
        process.limits = limits
        process.sandboxed = self.mode == "bwrap"
        if info_r is not None:
            process.init_pidfd = init_pidfd_from(info_r)
        return process

    def _launch(
        self, limits: ResourceLimits, cgroup: cgroups.SandboxCgroup | None
    ) -> launch.Launch:
        switch = self.mode == "bwrap" and self.uid != os.geteuid()
        # The cgroup holds the real limits; the rlimits are the fallback without one.
        nproc = None
        if cgroup is None and self.uid != 0:
            nproc = limits.max_processes
            if not switch:
                # RLIMIT_NPROC counts every task of the uid on the host: sandboxing as the
                # worker's own user (a laptop), leave room for what that user already runs.
                nproc += proctree.count_tasks(self.uid)
        return launch.Launch(
            rlimits=launch.rlimits(
                cpu_seconds=limits.cpu_seconds,
                file_size_bytes=limits.file_size_bytes,
                data_bytes=None if cgroup else limits.memory_bytes,
                max_processes=nproc,
            ),
            cgroup_procs=str(cgroup.procs_file) if cgroup else None,
            cpus=limits.cpus,
            uid=self.uid if switch else None,
            gid=self.gid if switch else None,
            staging=_staging(self) if switch else (),
        )

    def describe_limits(self, limits: ResourceLimits) -> dict[str, Any]:
        """For the report's environment: what held the learner's code, and how."""
        support = self.cgroups()
        if self.mode != "bwrap":
            enforcement = "unsandboxed: per-process resource limits only"
        elif support.available:
            enforcement = "cgroup v2: memory.max (no swap) and pids.max for the whole sandbox"
        else:
            enforcement = (
                "per-process only (RLIMIT_DATA, RLIMIT_NPROC): no cgroup, because " + support.reason
            )
        return {
            "uid": self.uid,
            "unprivileged": self.uid != 0,
            "cgroup": support.available,
            "enforcement": enforcement,
            "memory_bytes": limits.memory_bytes,
            "max_processes": limits.max_processes,
            "disk_bytes": limits.disk_bytes,
            "cpu_seconds": limits.cpu_seconds,
        }


_CHECKED: set[SandboxPolicy] = set()


@functools.cache
def _cgroup_support(setting: str | None) -> cgroups.CgroupSupport:
    return cgroups.prepare(setting)


@functools.cache
def _staging(policy: SandboxPolicy) -> tuple[launch.Staging, ...]:
    sources = [src for kind, src, _ in policy.binds() if kind != "--symlink"]
    # bwrap itself too: RUNNER_BWRAP may point into a folder only root can search.
    sources.append(os.path.realpath(policy.bwrap))
    return launch.plan_staging(sources, uid=policy.uid, gid=policy.gid)


def sandbox_status(policy: SandboxPolicy | None = None) -> dict[str, Any]:
    """How this machine would sandbox learner code, for a status page or a warning banner;
    never raises. See runner.sandbox_status."""
    from runner.sandbox_status import describe  # noqa: PLC0415 - it imports this module

    return describe(policy)


def _id_from_env(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "")
    if not raw:
        return None
    if not raw.isdigit():
        raise SandboxUnavailable(f"{name} must be a numeric id, not {raw!r}")
    return int(raw)


def _production(environ: Mapping[str, str]) -> bool:
    """Production, as docs/runner.md defines it: a real broker, not the embedded folder."""
    broker = environ.get("CELERY_BROKER_URL", "")
    return bool(broker) and not broker.startswith("filesystem:")


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
