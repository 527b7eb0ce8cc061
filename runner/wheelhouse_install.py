"""Install a grading worker from a wheelhouse, with no network: `python3 install.py --venv DIR`.

`python -m runner wheelhouse build` copies this file into every wheelhouse as `install.py`. It
runs on a node where the project is not installed yet, so it uses the standard library only
(and never imports `runner`). Each step stops the install when it fails:

1. every file is checked against `manifest.json` (size and sha256), and nothing else may lie
   in the folder (an extra wheel would be installable);
2. the virtualenv DIR is created, or reused when DIR already is one (the node's torch env);
3. pip installs from this folder only: `--no-index`, binary wheels, and pip's configuration
   files and PIP_* variables ignored, so that a pip.conf naming an index cannot send it to
   the network. By default it installs the project with its extras and keeps what the
   environment already has (the node's CUDA torch, numpy, nvidia-ml-py); the packages the
   wheelhouse left out (torch) must be there already. With --no-deps it installs exactly the
   wheels here, and the left-out packages stay missing;
4. the worker is imported from the new environment;
5. the bubblewrap and libcap .debs are unpacked into DIR/bwrap-root (`dpkg -x`, or a reader
   of our own where dpkg is absent) and the sandbox's self-test runs with the chosen bwrap.

Exit status: 0 installed and the sandbox works; 1 not installed (the reason is printed);
3 installed, but the sandbox self-test failed here (the worker would refuse to grade).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MANIFEST_NAME = "manifest.json"
INSTALLER_NAME = "install.py"
BWRAP_ROOT = "bwrap-root"
WORKER_ENV = "worker.env"
SANDBOX_FAILED = 3
# Everything the wheelhouse itself writes besides the files the manifest lists.
OWN_FILES = (MANIFEST_NAME, INSTALLER_NAME, "README.txt")

_CHECK_IMPORTS = (
    "import runner, runner.worker, nbclient, ipykernel; "
    "print('runner imported from', runner.__file__)"
)
_SANDBOX_SELF_TEST = (
    "import json; from runner.sandbox import sandbox_status; s = sandbox_status(); "
    "print(json.dumps({k: s.get(k) for k in ('ok', 'reason', 'bwrap', 'uid', 'cgroup')}))"
)


class InstallError(Exception):
    """The install cannot go on; the message says why and what to do."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="install.py",
        description="Install a grading worker from this wheelhouse, without the network.",
    )
    parser.add_argument("--venv", type=Path, help="virtualenv to create, or to install into")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for a new virtualenv (default: the one running this script)",
    )
    parser.add_argument(
        "--system-site-packages",
        action="store_true",
        help="let a new virtualenv see the interpreter's packages (the node's torch)",
    )
    parser.add_argument(
        "--no-deps",
        action="store_true",
        help="install exactly the wheels here, without the packages the wheelhouse left out",
    )
    parser.add_argument(
        "--bwrap",
        choices=("auto", "bundled", "system"),
        default="auto",
        help="bubblewrap for the worker: the node's (system), the one unpacked from the "
        "wheelhouse's .deb (bundled), or the node's when it has one (auto)",
    )
    parser.add_argument("--skip-sandbox-test", action="store_true")
    parser.add_argument(
        "--verify-only", action="store_true", help="check the files against the manifest, stop"
    )
    parser.add_argument(
        "--wheelhouse",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="the wheelhouse folder (default: this script's folder)",
    )
    args = parser.parse_args(argv)
    if args.venv is None and not args.verify_only:
        parser.error("--venv is required")
    try:
        return install(args)
    except InstallError as exc:
        print(f"install.py: {exc}", file=sys.stderr)
        return 1


def install(args: argparse.Namespace) -> int:
    wheelhouse = args.wheelhouse.resolve()
    manifest = load_manifest(wheelhouse)
    problems = verify(wheelhouse, manifest)
    if problems:
        raise InstallError(
            "the wheelhouse does not match its manifest:\n  " + "\n  ".join(problems)
        )
    say(f"verified {len(manifest['files'])} files against {MANIFEST_NAME} (sha256)")
    if args.verify_only:
        return 0

    venv = args.venv.absolute()
    # Absolute, but not resolved: a virtualenv's python is a link to its base interpreter.
    found = shutil.which(args.python)
    if found is None:
        raise InstallError(f"--python {args.python}: no such interpreter")
    args.python = os.path.abspath(found)
    pip_wheel = wheelhouse / _files_of(manifest, "pip")[0]
    existing = (venv / "pyvenv.cfg").is_file() and (venv / "bin" / "python").exists()
    check_target(str(venv / "bin" / "python") if existing else args.python, manifest)
    if existing:
        say(f"installing into the existing virtualenv {venv}")
        if args.system_site_packages:
            say("note: --system-site-packages applies only to a new virtualenv; ignored")
        python = str(venv / "bin" / "python")
    else:
        python = create_venv(
            venv, python=args.python, system_site=args.system_site_packages, pip_wheel=pip_wheel
        )
    if args.no_deps:
        wheels = [wheelhouse / name for name in _files_of(manifest, "wheel", "project")]
        say(f"installing exactly the {len(wheels)} wheels of the wheelhouse (--no-deps)")
        run_pip(python, pip_wheel, ["install", "--no-deps", *map(str, wheels)])
    else:
        require_left_out(python, manifest)
        project = manifest["project"]
        extras = ",".join(project["extras"])
        requirement = f"{project['name']}[{extras}]=={project['version']}"
        say(f"installing {requirement} with what {venv} already has")
        run_pip(python, pip_wheel, ["install", "--find-links", str(wheelhouse), requirement])

    out = run([python, "-c", _CHECK_IMPORTS], env=worker_env(), what="importing the worker")
    say(out.strip())
    report_torch(python)

    bwrap = setup_bwrap(venv, wheelhouse, manifest, choice=args.bwrap)
    if bwrap is None:
        return 0
    env_file = venv / WORKER_ENV
    env_file.write_text(
        f"# The worker's bubblewrap: `set -a; . {env_file}; set +a` before starting it.\n"
        f"RUNNER_BWRAP={bwrap}\n"
    )
    say(f"wrote {env_file}: RUNNER_BWRAP={bwrap}")
    if args.skip_sandbox_test:
        return 0
    return sandbox_self_test(python, bwrap)


def say(message: str) -> None:
    print(f"install.py: {message}", flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(wheelhouse: Path) -> dict:
    path = wheelhouse / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InstallError(f"{path}: not a wheelhouse manifest ({exc})") from None


def verify(wheelhouse: Path, manifest: dict) -> list[str]:
    """Every way the folder differs from its manifest, one sentence each; [] when it matches."""
    problems = []
    listed = set()
    for entry in manifest.get("files", []):
        name = entry["name"]
        listed.add(name)
        path = wheelhouse / name
        if "/" in name or not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(
                f"{name}: {path.stat().st_size} bytes, the manifest says {entry['size']}"
            )
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    for path in sorted(wheelhouse.iterdir()):
        if path.name not in listed and path.name not in OWN_FILES:
            problems.append(f"{path.name}: not in the manifest (remove it)")
    return problems


def _files_of(manifest: dict, *kinds: str) -> list[str]:
    return [entry["name"] for entry in manifest["files"] if entry["kind"] in kinds]


def create_venv(venv: Path, *, python: str, system_site: bool, pip_wheel: Path) -> str:
    """A new virtualenv at `venv`, with pip from the wheelhouse; its interpreter."""
    if venv.exists() and any(venv.iterdir()):
        raise InstallError(f"{venv} exists and is not a virtualenv; name a new or empty folder")
    info = python_info(python)
    if system_site and info["prefix"] != info["base_prefix"]:
        say(
            f"note: {python} is itself a virtualenv ({info['prefix']}): a virtualenv made from "
            f"it sees the packages of {info['base_prefix']}, not of {info['prefix']}. To use "
            f"the torch installed there, install into it: --venv {info['prefix']}"
        )
    command = [python, "-m", "venv", "--without-pip"]
    if system_site:
        command.append("--system-site-packages")
    run([*command, str(venv)], what="creating the virtualenv")
    say(f"created {venv} ({'with' if system_site else 'without'} the system site-packages)")
    # pip itself comes from the wheelhouse, so ensurepip (absent from Debian's and Ubuntu's
    # python3 until python3-venv is installed) is never needed.
    target = str(venv / "bin" / "python")
    run_pip(target, pip_wheel, ["install", "--no-deps", str(pip_wheel)])
    return target


def python_info(python: str) -> dict:
    code = (
        "import json, platform, sys; print(json.dumps({'version': '%d.%d' % sys.version_info[:2],"
        " 'implementation': sys.implementation.name, 'machine': platform.machine(),"
        " 'prefix': sys.prefix, 'base_prefix': sys.base_prefix}))"
    )
    return json.loads(run([python, "-I", "-c", code], what=f"running {python}"))


def check_target(python: str, manifest: dict) -> None:
    info = python_info(python)
    if info["version"] != manifest["python_version"]:
        raise InstallError(
            f"{python} is Python {info['version']}; this wheelhouse was built for Python "
            f"{manifest['python_version']} (build one with --python-version {info['version']})"
        )
    if info["implementation"] != "cpython":
        raise InstallError(f"{python} is {info['implementation']}; the wheels are for CPython")
    machine = manifest.get("machine")
    if machine and info["machine"] != machine:
        raise InstallError(f"this node is {info['machine']}; the wheelhouse is for {machine}")


def require_left_out(python: str, manifest: dict) -> None:
    """The requirements the wheelhouse left out must already be installed in the target."""
    missing, reasons = [], []
    for entry in manifest.get("excluded", []):
        name = entry["requirement"]
        probe = f"import importlib.metadata as m; print(m.version({name!r}))"
        result = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, env=worker_env()
        )
        if result.returncode == 0:
            say(f"{name} {result.stdout.strip()} is already installed: keeping it")
        else:
            missing.append(name)
            reasons += [entry["reason"]] if entry["reason"] not in reasons else []
    if missing:
        raise InstallError(
            f"the wheelhouse leaves out {', '.join(missing)} ({'; '.join(reasons)}), and "
            f"{python} does not have it. Install into the environment that has the node's "
            "torch (--venv /path/to/that/venv), or create one with --system-site-packages "
            "from a Python whose own site-packages hold it; or pass --no-deps to install "
            "without it (labs that need torch will then fail)."
        )


def pip_env() -> dict[str, str]:
    """pip without its configuration: no pip.conf, no PIP_* variables (an index URL or
    find-links there would be tried), no version check, never a prompt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.pop("PYTHONPATH", None)
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def run_pip(python: str, pip_wheel: Path, args: list[str]) -> None:
    """pip run from its own wheel (python pip-X.whl/pip), so the target needs no pip."""
    command = [python, str(pip_wheel / "pip"), *args[:1], "--no-index", "--only-binary=:all:"]
    run([*command, *args[1:]], env=pip_env(), what="pip " + args[0], echo=True)


def worker_env() -> dict[str, str]:
    """For checks in the new environment: the installed packages only (no PYTHONPATH), and
    the filesystem broker's folders in a scratch folder rather than in site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("VAR_DIR", os.path.join(tempfile.gettempdir(), "runner-install-check"))
    env.pop("RUNNER_ALLOW_UNSANDBOXED", None)
    return env


def run(command: list[str], *, what: str, env: dict | None = None, echo: bool = False) -> str:
    """Run `command` from a neutral folder (never the checkout: its runner/ would shadow the
    installed one); its stdout, or InstallError with its output."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT if echo else subprocess.PIPE}
    try:
        result = subprocess.run(command, text=True, env=env, cwd=tempfile.gettempdir(), **streams)
    except OSError as exc:
        raise InstallError(f"{what} failed: {exc}") from None
    if result.returncode != 0:
        output = (result.stdout or "") + (result.stderr or "")
        raise InstallError(f"{what} failed (exit {result.returncode}):\n{output.strip()}")
    if echo:
        for line in [line for line in result.stdout.splitlines() if line.strip()][-2:]:
            print(f"    {line}", flush=True)
    return result.stdout or ""


def report_torch(python: str) -> None:
    probe = (
        "import torch\n"
        "try:\n    cuda = torch.cuda.is_available()\nexcept Exception:\n    cuda = False\n"
        "cuda_version = getattr(getattr(torch, 'version', None), 'cuda', None)\n"
        "print('torch', torch.__version__, 'with CUDA', cuda_version,"
        " 'available' if cuda else 'NOT available')"
    )
    result = subprocess.run(
        [python, "-c", probe],
        capture_output=True,
        text=True,
        env=worker_env(),
        cwd=tempfile.gettempdir(),
    )
    if result.returncode == 0:
        say(result.stdout.strip())
    else:
        say("torch is not importable here: labs that need it will fail on this worker")


def setup_bwrap(venv: Path, wheelhouse: Path, manifest: dict, *, choice: str) -> str | None:
    """Unpack the .debs into venv/bwrap-root; the bwrap the worker should use."""
    debs = _files_of(manifest, "deb")
    bundled = None
    if debs:
        root = venv / BWRAP_ROOT
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for name in debs:
            if shutil.which("dpkg"):
                run(["dpkg", "-x", str(wheelhouse / name), str(root)], what=f"dpkg -x {name}")
            else:
                extract_deb(wheelhouse / name, root)
        bundled = bundled_bwrap(root)
        say(f"unpacked {', '.join(debs)} into {root}")
    system = shutil.which("bwrap")
    if choice == "system" or (choice == "auto" and system):
        if not system:
            raise InstallError("--bwrap system: no bwrap on PATH on this node")
        say(f"the worker uses this node's {system}" + (f" (bundled: {bundled})" if bundled else ""))
        return system
    if bundled is None:
        if choice == "bundled":
            raise InstallError("--bwrap bundled: this wheelhouse has no bubblewrap .deb")
        say("no bwrap on this node and none in the wheelhouse: install bubblewrap")
        return None
    return bundled


def bundled_bwrap(root: Path) -> str:
    """The unpacked bwrap, or a wrapper that lends it the unpacked libcap when the node's
    dynamic linker cannot find libcap (bwrap starts with an empty environment, so the
    worker's own LD_LIBRARY_PATH would not reach it)."""
    binary = root / "usr" / "bin" / "bwrap"
    if not binary.is_file():
        raise InstallError(f"{binary}: the bubblewrap .deb held no usr/bin/bwrap")
    missing = _missing_libraries(binary)
    if not missing:
        return str(binary)
    folders = sorted({str(p.parent) for p in root.rglob("*.so*") if p.name in missing})
    found = {p.name for f in folders for p in Path(f).iterdir()}
    if not set(missing) <= found:
        raise InstallError(f"{binary} needs {', '.join(missing)}, absent here and from the .debs")
    wrapper = root / "bwrap"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# bubblewrap from the wheelhouse, with the libraries this node lacks.\n"
        f"LD_LIBRARY_PATH='{':'.join(folders)}' exec '{binary}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    say(f"{binary} needs {', '.join(missing)} from the .debs: wrote {wrapper}")
    return str(wrapper)


def _missing_libraries(binary: Path) -> list[str]:
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    out = subprocess.run([ldd, str(binary)], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def extract_deb(deb: Path, root: Path) -> None:
    """`dpkg -x` for a node without dpkg: a .deb is an ar archive around data.tar.*."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise InstallError(f"{deb.name}: not a .deb (ar) archive")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58])
            data = f.read(size)
            f.read(size % 2)  # members are padded to an even length
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise InstallError(f"{deb.name}: zstd data needs dpkg on this node")
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(root, filter="data")
                    else:  # Python < 3.11.4
                        tar.extractall(root)  # noqa: S202 - our own verified .deb
                return
    raise InstallError(f"{deb.name}: no data.tar member")


def sandbox_self_test(python: str, bwrap: str) -> int:
    """Start a sandboxed Python the way the worker does, with this bwrap."""
    env = worker_env()
    # The self-test is about bubblewrap; whether a cgroup is required depends on the broker.
    env.update(RUNNER_BWRAP=bwrap, RUNNER_REQUIRE_CGROUP="0")
    result = subprocess.run(
        [python, "-c", _SANDBOX_SELF_TEST],
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=300,
    )
    try:
        status = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(result.stdout + result.stderr, file=sys.stderr)
        say("sandbox self-test: could not run")
        return SANDBOX_FAILED
    if status["ok"]:
        version = (status.get("bwrap") or {}).get("version")
        cgroup = status.get("cgroup") or {}
        limits = "cgroup v2 limits" if cgroup.get("available") else "per-process limits only"
        say(f"sandbox self-test: ok ({version}, sandbox uid {status['uid']}, {limits})")
        return 0
    say(f"sandbox self-test: FAILED: {status['reason']}")
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        say(
            "this kernel restricts unprivileged user namespaces (AppArmor): give this bwrap "
            "a profile that allows userns, as Ubuntu's bwrap-userns-restrict does for "
            "/usr/bin/bwrap (see docs/security.md)"
        )
    return SANDBOX_FAILED


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
