"""The air-gapped install (issue 11): a wheelhouse built for this machine's Python installs a
worker into a fresh virtualenv while the network is blocked (a new, empty network namespace).

Building needs the package index; where it is unreachable the install tests are skipped and
say so. torch is left out as on a GPU node; this machine's Python has none, so the install
into "the environment that has torch" uses a stub torch distribution."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runner import wheelhouse, wheelhouse_install

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
INSTALL_TIMEOUT_S = 300


def offline() -> list[str]:
    """A command prefix that runs with no network at all: only a loopback, and that down."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--net", "--"]
    if shutil.which("bwrap"):
        return ["bwrap", "--unshare-net", "--dev-bind", "/", "/", "--"]
    pytest.skip("neither unshare (as root) nor bwrap is here to block the network")


def run_offline(command: list[str], *, cwd: Path, env: dict | None = None):
    return subprocess.run(
        [*offline(), *map(str, command)],
        cwd=cwd,
        env=env or clean_env(cwd),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )


def clean_env(scratch: Path) -> dict[str, str]:
    """No PYTHONPATH (the checkout's runner/ must not stand in for the installed one), and
    the filesystem broker's folders in a scratch folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["VAR_DIR"] = str(scratch / "var")
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """One wheelhouse for this machine's Python and platform, shared by the module's tests."""
    probe_dir = tmp_path_factory.mktemp("index-probe")
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--timeout", "15"]
        + ["--retries", "1", "--dest", str(probe_dir), "nvidia-ml-py"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the package index is unreachable, so no wheelhouse can be built: {last}")
    out = tmp_path_factory.mktemp("wheelhouse") / "wheelhouse"
    manifest = wheelhouse.build_wheelhouse(
        out=out,
        python_version=PYTHON_VERSION,
        platform=wheelhouse.local_platform(),
        debs=shutil.which("apt-get") is not None,
        log=lambda _: None,
    )
    return out, manifest


def assert_worker_runs(python: Path, scratch: Path) -> None:
    """The checks docs/gpu-worker.md tells the operator to run, with the network blocked."""
    imports = run_offline(
        [python, "-c", "import runner.worker, nbclient, ipykernel, runner; print(runner.__file__)"],
        cwd=scratch,
    )
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.startswith(str(python.parent.parent)), imports.stdout
    cli = run_offline([python, "-m", "runner", "--help"], cwd=scratch)
    assert cli.returncode == 0, cli.stderr
    assert "grade" in cli.stdout and "wheelhouse" in cli.stdout


def stub_torch_wheel(folder: Path) -> Path:
    """A torch distribution with no code: the node's CUDA torch, as far as pip can tell."""
    return stub_wheel(folder, "torch", "2.11.0")


def stub_triton_wheel(folder: Path) -> Path:
    """The triton that a CUDA build of torch brings with it on Linux (torch requires it)."""
    return stub_wheel(folder, "triton", "3.5.0")


def stub_wheel(folder: Path, name: str, version: str) -> Path:
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = '{version}+stub'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"])
    wheel_path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return wheel_path


def test_the_network_is_really_blocked(tmp_path):
    connect = run_offline(
        [sys.executable, "-c", "import socket; socket.create_connection(('1.1.1.1', 443), 5)"],
        cwd=tmp_path,
    )
    assert connect.returncode != 0
    assert "unreachable" in connect.stderr.lower()


def test_platform_tags_go_down_to_manylinux1_under_both_spellings():
    tags = wheelhouse.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux_2_5_x86_64", "manylinux2014_x86_64"} <= set(tags)
    assert "manylinux1_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    assert wheelhouse.platform_tags("manylinux2014_aarch64")[0] == "manylinux_2_17_aarch64"
    assert wheelhouse.platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_it_leaves_out_torch_and_the_cuda_wheels_but_keeps_nvidia_ml_py():
    patterns = wheelhouse.TORCH_PATTERNS
    for name in ("torch", "triton", "nvidia-cublas-cu12", "nvidia_nccl_cu12", "nvidia-cudnn-cu13"):
        assert wheelhouse.excluded_by(name, patterns) is not None, name
    for name in ("nvidia-ml-py", "nvidia_ml_py", "numpy", "torchvision-extra"):
        assert wheelhouse.excluded_by(name, patterns) is None, name


def test_it_refuses_a_wheelhouse_that_does_not_match_its_manifest(tmp_path):
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"tampered")
    (tmp_path / "b-1.0-py3-none-any.whl").write_bytes(b"slipped in")
    listed = {"name": "a-1.0-py3-none-any.whl", "kind": "wheel", "size": 8}
    listed["sha256"] = hashlib.sha256(b"original").hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [listed]}))
    shutil.copyfile(wheelhouse_install.__file__, tmp_path / "install.py")

    result = subprocess.run(
        [sys.executable, tmp_path / "install.py", "--verify-only"], capture_output=True, text=True
    )

    assert result.returncode == 1
    assert "a-1.0-py3-none-any.whl: sha256 differs from the manifest" in result.stderr
    assert "b-1.0-py3-none-any.whl: not in the manifest" in result.stderr


def test_the_manifest_lists_every_file_with_its_sha256_and_what_was_left_out(built):
    out, manifest = built
    on_disk = {p.name for p in out.iterdir()} - set(wheelhouse_install.OWN_FILES)
    assert on_disk == {f["name"] for f in manifest["files"]}
    assert {"install.py", "manifest.json"} <= {p.name for p in out.iterdir()}
    for entry in manifest["files"]:
        assert wheelhouse_install.sha256_of(out / entry["name"]) == entry["sha256"]
    # triton: the worker extra names it (the kernels lab); GPU nodes have it with their torch.
    assert [e["requirement"] for e in manifest["excluded"]] == ["torch", "triton"]
    assert "own CUDA build" in manifest["excluded"][0]["reason"]
    names = {wheelhouse.normalize(f["name"].split("-")[0]): f["kind"] for f in manifest["files"]}
    assert not [n for n in names if wheelhouse.excluded_by(n, wheelhouse.TORCH_PATTERNS)]
    assert names["nvidia-ml-py"] == "wheel"
    assert names["pip"] == "pip"
    assert names["inference-roadmap"] == "project"
    assert {"celery", "nbclient", "ipykernel", "numpy"} <= set(names)
    assert manifest["python_version"] == PYTHON_VERSION
    if shutil.which("apt-get"):
        debs = sorted(f["name"].split("_")[0] for f in manifest["files"] if f["kind"] == "deb")
        assert debs == ["bubblewrap", "libcap2"]
    assert manifest["total_bytes"] < wheelhouse.SIZE_BUDGET_BYTES


def test_it_installs_offline_into_the_environment_that_has_torch(built, tmp_path):
    out, _ = built
    node = tmp_path / "node-env"
    subprocess.run([sys.executable, "-m", "venv", node], check=True)
    subprocess.run(
        [node / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
        + [stub_torch_wheel(tmp_path), stub_triton_wheel(tmp_path)],
        check=True,
        env={**clean_env(tmp_path), "PIP_CONFIG_FILE": os.devnull},
    )

    result = run_offline([sys.executable, out / "install.py", "--venv", node], cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch 2.11.0 is already installed: keeping it" in result.stdout
    assert "sandbox self-test: ok" in result.stdout
    assert_worker_runs(node / "bin" / "python", tmp_path)
    torch = run_offline(
        [node / "bin" / "python", "-c", "import torch; print(torch.__version__)"], cwd=tmp_path
    )
    assert torch.stdout.strip() == "2.11.0+stub"


def test_it_creates_a_fresh_virtualenv_from_exactly_the_wheelhouse(built, tmp_path):
    out, manifest = built
    venv = tmp_path / "worker-env"
    bundled = any(f["kind"] == "deb" for f in manifest["files"])

    result = run_offline(
        [sys.executable, out / "install.py", "--venv", venv, "--no-deps"]
        + (["--bwrap", "bundled"] if bundled else []),
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "sandbox self-test: ok" in result.stdout
    assert_worker_runs(venv / "bin" / "python", tmp_path)
    if bundled:
        bwrap = venv / "bwrap-root" / "usr" / "bin" / "bwrap"
        assert f"RUNNER_BWRAP={bwrap}\n" in (venv / "worker.env").read_text()


def test_it_refuses_to_leave_out_torch_where_the_environment_lacks_it(built, tmp_path):
    out, _ = built

    result = run_offline(
        [sys.executable, out / "install.py", "--venv", tmp_path / "no-torch"], cwd=tmp_path
    )

    assert result.returncode == 1
    assert "the wheelhouse leaves out torch" in result.stderr
    assert "--no-deps" in result.stderr


def test_it_unpacks_the_bubblewrap_deb_without_dpkg(built, tmp_path):
    out, manifest = built
    debs = [f["name"] for f in manifest["files"] if f["name"].startswith("bubblewrap_")]
    if not debs:
        pytest.skip("apt-get is not here, so the wheelhouse has no .debs")

    wheelhouse_install.extract_deb(out / debs[0], tmp_path)

    version = subprocess.run(
        [tmp_path / "usr" / "bin" / "bwrap", "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("bubblewrap ")


def test_it_lends_the_unpacked_libcap_to_bwrap_where_the_node_lacks_it(
    built, tmp_path, monkeypatch
):
    out, manifest = built
    debs = [f["name"] for f in manifest["files"] if f["kind"] == "deb"]
    if not debs:
        pytest.skip("apt-get is not here, so the wheelhouse has no .debs")
    for name in debs:
        wheelhouse_install.extract_deb(out / name, tmp_path)
    monkeypatch.setattr(wheelhouse_install, "_missing_libraries", lambda _: ["libcap.so.2"])

    bwrap = wheelhouse_install.bundled_bwrap(tmp_path)

    assert bwrap == str(tmp_path / "bwrap")
    assert f"LD_LIBRARY_PATH='{tmp_path}/lib/" in Path(bwrap).read_text()
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, env={})
    assert version.stdout.startswith("bubblewrap ")
