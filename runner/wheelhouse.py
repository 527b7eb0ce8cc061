"""Build a wheelhouse: everything a grading worker installs, for nodes without the network.

    python -m runner wheelhouse build --out wheelhouse --python-version 3.12 \\
        --platform manylinux_2_28_x86_64

The folder gets binary wheels of the project's dependencies and its `worker` extra for that
Python and platform (`pip download --only-binary=:all:`), pip itself, the project's own wheel,
Debian's bubblewrap and libcap2 .debs (GPU nodes may lack bwrap), `install.py` (a copy of
runner/wheelhouse_install.py: standard library only, since the node has nothing yet) and
`manifest.json`: the target, every file with its size and sha256, and what was left out and
why. torch, triton and the nvidia-* CUDA wheels are left out by default: several GB that every
GPU node already has in its own CUDA build, which the installer keeps. docs/gpu-worker.md has
the whole procedure.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from runner import wheelhouse_install

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# GPU nodes keep their own CUDA build of torch (with triton and the nvidia-* CUDA libraries,
# several GB): the wheelhouse stays small enough to carry, and the node's torch matches its
# driver.
TORCH_PATTERNS = ("torch", "triton", "nvidia-*")
TORCH_REASON = (
    "the GPU node keeps its own CUDA build of torch (with triton and the nvidia-* CUDA "
    "wheels, several GB); the installer uses the one installed there"
)
# NVIDIA's NVML binding: pure Python and tiny, and the worker reads the GPU through it.
NEVER_EXCLUDED = ("nvidia-ml-py",)
DEBS = ("bubblewrap", "libcap2")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# A warning above this, so that growth is noticed: 77 MiB on 2026-11-27 once the worker
# needed transformers and the project's wheel carried its models (docs/gpu-worker.md). Where a
# transfer to the node is smaller (64 MiB for this project's own GPU visits), leave out what
# the node already has: --exclude numpy, transformers and its family.
SIZE_BUDGET_BYTES = 96 << 20

_LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built; the message says why."""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: `Nvidia_ML.py` -> `nvidia-ml-py`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise WheelhouseError(f"cannot read a package name in {requirement!r}")
    return normalize(match.group(1))


def excluded_by(name: str, patterns: Sequence[str]) -> str | None:
    """The pattern that leaves `name` out of the wheelhouse, or None."""
    name = normalize(name)
    if name in NEVER_EXCLUDED:
        return None
    return next((p for p in patterns if fnmatch.fnmatchcase(name, normalize(p))), None)


def platform_tags(platform: str) -> list[str]:
    """Every tag a wheel for `platform` may carry: pip matches tags exactly, so a node with
    glibc 2.28 takes manylinux_2_28 down to manylinux_2_5, under both their spellings."""
    legacy = re.fullmatch(r"(manylinux2014|manylinux2010|manylinux1)_(\w+)", platform)
    if legacy:
        platform = f"manylinux_2_{_LEGACY_MANYLINUX[legacy.group(1)]}_{legacy.group(2)}"
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    tags += [f"{old}_{arch}" for old, minor in _LEGACY_MANYLINUX.items() if minor <= glibc]
    return tags


def machine_of(platform: str) -> str | None:
    match = re.fullmatch(
        r"(?:many|musl)?linux\w*?_((?:x86_64|aarch64|i686|ppc64le|s390x))", platform
    )
    return match.group(1) if match else None


def local_platform() -> str:
    """This machine's manylinux tag, for a wheelhouse that installs here (the tests)."""
    import platform as host  # noqa: PLC0415 - the parameter names shadow it elsewhere

    libc, version = host.libc_ver()
    if libc != "glibc":
        raise WheelhouseError("not a glibc Linux: pass --platform")
    major, minor = version.split(".")[:2]
    return f"manylinux_{major}_{minor}_{host.machine()}"


def read_project(root: Path) -> dict:
    path = root / "pyproject.toml"
    if not path.is_file():
        raise WheelhouseError(f"{path} not found: build the wheelhouse from a checkout")
    project = tomllib.loads(path.read_text())["project"]
    return {
        "name": project["name"],
        "version": project["version"],
        "dependencies": list(project.get("dependencies", [])),
        "extras": project.get("optional-dependencies", {}),
    }


def build_wheelhouse(
    *,
    out: Path,
    python_version: str,
    platform: str,
    extras: Sequence[str] = ("worker",),
    exclude: Sequence[str] = TORCH_PATTERNS,
    debs: bool = True,
    project_root: Path = PROJECT_ROOT,
    log: Callable[[str], None] = print,
) -> dict:
    """Build the wheelhouse in `out` (replacing an earlier wheelhouse there); its manifest."""
    if not re.fullmatch(r"3\.\d+", python_version):
        raise WheelhouseError(f"--python-version takes major.minor, like 3.12: {python_version!r}")
    out = out.absolute()
    if (
        out.exists()
        and any(out.iterdir())
        and not (out / wheelhouse_install.MANIFEST_NAME).exists()
    ):
        raise WheelhouseError(f"{out} is neither empty nor a wheelhouse: not replacing it")
    project = read_project(project_root)
    unknown = [e for e in extras if e not in project["extras"]]
    if unknown:
        raise WheelhouseError(f"pyproject.toml has no extra {', '.join(unknown)}")
    wanted = list(
        dict.fromkeys(project["dependencies"] + [r for e in extras for r in project["extras"][e]])
    )
    kept, excluded = [], []
    for requirement in wanted:
        name = requirement_name(requirement)
        pattern = excluded_by(name, exclude)
        if pattern is None:
            kept.append(requirement)
        else:
            excluded.append(_left_out(name, pattern, requirement=requirement, exclude=exclude))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        abi = "cp" + python_version.replace(".", "")
        tags = platform_tags(platform)
        log(f"downloading wheels for CPython {python_version} on {platform} ({len(tags)} tags)")
        command = ["download", "--only-binary=:all:", "--dest", str(staging)]
        command += ["--python-version", python_version, "--implementation", "cp"]
        command += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
        for tag in tags:
            command += ["--platform", tag]
        _pip([*command, *kept, "pip"], what="pip download")
        for path in sorted(staging.glob("*.whl")):
            name = normalize(path.name.split("-")[0])
            pattern = excluded_by(name, exclude)
            if pattern is not None:
                log(f"leaving out {path.name}: a dependency that matches {pattern!r}")
                excluded.append(_left_out(name, pattern, requirement=None, exclude=exclude))
                path.unlink()
        project_wheel = _build_project_wheel(project_root, staging)
        log(f"built {project_wheel}")
        machine = machine_of(platform)
        deb_files = _download_debs(staging, machine) if debs else []
        if deb_files:
            log(f"downloaded {', '.join(deb_files)}")
        shutil.copyfile(wheelhouse_install.__file__, staging / wheelhouse_install.INSTALLER_NAME)
        (staging / "README.txt").write_text(_README)
        files = []
        for path in sorted(staging.iterdir()):
            if path.name in wheelhouse_install.OWN_FILES:
                continue
            if path.name == project_wheel:
                kind = "project"
            elif path.suffix == ".deb":
                kind = "deb"
            elif normalize(path.name.split("-")[0]) == "pip":
                kind = "pip"
            else:
                kind = "wheel"
            files.append(
                {
                    "name": path.name,
                    "kind": kind,
                    "size": path.stat().st_size,
                    "sha256": wheelhouse_install.sha256_of(path),
                }
            )
        manifest = {
            "format": 1,
            "project": {
                "name": project["name"],
                "version": project["version"],
                "extras": list(extras),
                "wheel": project_wheel,
            },
            "python_version": python_version,
            "implementation": "cp",
            "abis": [abi, "abi3", "none"],
            "platform": platform,
            "platforms": tags,
            "machine": machine,
            "requirements": kept,
            "excluded": excluded,
            "debs_from": _os_release() if deb_files else None,
            "files": files,
            "total_bytes": sum(f["size"] for f in files),
            "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "built_with": {"python": sys.version.split()[0], "pip": _pip_version()},
        }
        (staging / wheelhouse_install.MANIFEST_NAME).write_text(
            json.dumps(manifest, indent=1) + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = manifest["total_bytes"]
    log(f"wrote {out}: {len(files)} files, {size / (1 << 20):.1f} MiB")
    if size > SIZE_BUDGET_BYTES:
        log(f"warning: over {SIZE_BUDGET_BYTES >> 20} MiB; leave out more with --exclude")
    return manifest


def _left_out(name: str, pattern: str, *, requirement: str | None, exclude: Sequence[str]) -> dict:
    reason = TORCH_REASON if pattern in TORCH_PATTERNS else "left out with --exclude"
    entry = {"requirement": name, "pattern": pattern, "reason": reason}
    entry["via"] = requirement if requirement is not None else "a dependency of another wheel"
    return entry


def _pip(args: list[str], *, what: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise WheelhouseError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def _pip_version() -> str:
    return _pip(["--version"], what="pip --version").split()[1]


def _build_project_wheel(root: Path, dest: Path) -> str:
    """The project's wheel, built from a clean copy: an old build/ folder in the checkout
    would slip modules that no longer exist into it."""
    include = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = include.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    patterns = patterns.get("include", ["*"])
    with tempfile.TemporaryDirectory(prefix="wheelhouse-src-") as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "setup.cfg", "setup.py", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, source / name)
        for folder in sorted(root.iterdir()):
            if (
                folder.is_dir()
                and (folder / "__init__.py").is_file()
                and any(fnmatch.fnmatchcase(folder.name, p) for p in patterns)
            ):
                shutil.copytree(
                    folder,
                    source / folder.name,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
        before = set(dest.iterdir())
        _pip(["wheel", "--no-deps", "--wheel-dir", str(dest), str(source)], what="pip wheel")
        built = [p.name for p in set(dest.iterdir()) - before]
    if len(built) != 1:
        raise WheelhouseError(f"pip wheel made {built}, not one wheel")
    return built[0]


def _download_debs(dest: Path, machine: str | None) -> list[str]:
    """Debian's bubblewrap and libcap2 (bwrap's one library a minimal node may lack)."""
    arch = DEB_ARCH.get(machine or "")
    if arch is None:
        raise WheelhouseError(f"no Debian architecture for {machine!r}: pass --no-debs")
    if shutil.which("apt-get") is None:
        raise WheelhouseError(
            "apt-get is needed to fetch the bubblewrap .deb: build on Debian or Ubuntu, or pass "
            "--no-debs (the node then needs its own bwrap)"
        )
    before = set(dest.iterdir())
    result = subprocess.run(
        ["apt-get", "download", *(f"{deb}:{arch}" for deb in DEBS)],
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise WheelhouseError(f"apt-get download failed: {result.stderr.strip()}")
    return sorted(p.name for p in set(dest.iterdir()) - before)


def _os_release() -> str | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return match.group(1) if match else None


_README = """\
A wheelhouse for installing an Inference Roadmap grading worker without the network.

    python3 install.py --venv /path/to/venv            # a new virtualenv
    python3 install.py --venv /path/to/torch-venv      # into the env that has the node's torch
    python3 install.py --verify-only                   # check every file's sha256

manifest.json lists the files, the target Python and platform, and what was left out
(torch: the node keeps its own CUDA build). See docs/gpu-worker.md in the repository.
"""
