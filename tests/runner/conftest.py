"""Fixtures for the runner tests: lab paths, job builders, and one cached pipeline run per
notebook so that several tests can read the same (slow) report."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from runner.labspec import load_lab_spec
from runner.sandbox import SandboxPolicy, SandboxUnavailable
from tests.runner.support import BWRAP, FIXTURES, LAB, make_job, read_notebook

# Far above any uid a distribution hands out; unique per pytest process.
TEST_SANDBOX_UID = 1_900_000_000 + os.getpid() % 100_000


@pytest.fixture(scope="session")
def spec():
    return load_lab_spec(LAB)


@pytest.fixture(scope="session")
def policy() -> SandboxPolicy:
    if BWRAP is None:
        pytest.skip("bubblewrap (bwrap) is not installed; sandboxed runner tests need it")
    # As root, sandboxes run as an unprivileged uid. This session gets one of its own, as
    # docs/security.md tells operators to give each worker: process limits count per uid on
    # the host, and other test stacks on this machine sandbox as "nobody".
    uid = TEST_SANDBOX_UID if os.geteuid() == 0 else None
    policy = SandboxPolicy(mode="bwrap", bwrap=BWRAP, sandbox_uid=uid)
    try:
        policy.check()
    except SandboxUnavailable as exc:
        pytest.fail(f"bwrap is installed but the sandbox does not work: {exc}")
    return policy


@pytest.fixture(scope="session")
def graded(policy, tmp_path_factory) -> Callable[[str], dict[str, Any]]:
    """graded("reference.ipynb" or a fixture name) -> report, computed once per session."""
    from runner.pipeline import run_job

    cache: dict[str, dict[str, Any]] = {}
    workroot = tmp_path_factory.mktemp("jobs")

    def grade(name: str) -> dict[str, Any]:
        if name not in cache:
            path = LAB / name if (LAB / name).exists() else FIXTURES / name
            progress: list[tuple[str, dict]] = []
            report = run_job(
                make_job(read_notebook(path)),
                workroot=workroot,
                policy=policy,
                on_progress=lambda stage, **info: progress.append((stage, info)),
            )
            report["_progress"] = progress
            cache[name] = report
        return cache[name]

    return grade


# The device nodes a GPU test's sandboxes get: GPU 0's, as a worker pinned to it passes them.
GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm")


@pytest.fixture(scope="module")
def gpu_policy(policy) -> SandboxPolicy:
    """The sandbox policy of a GPU worker on this node (the GPU tests, tests/runner/test_gpu_*)."""
    devices = tuple(d for d in GPU_NODES if os.path.exists(d))
    return SandboxPolicy(
        mode="bwrap", bwrap=policy.bwrap, gpu_devices=devices, sandbox_uid=policy.sandbox_uid
    )
