"""The launcher's plan for making the Python environment reachable by the sandbox user."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from runner.launch import Staging, can_search, plan_staging, rlimits


@pytest.fixture
def tree():
    """open/ (0755) and private/ (0700, owned by root) with a Python-like folder inside each,
    in a folder every user can search (pytest's own tmp_path is below a 0700 folder)."""
    root = Path(tempfile.mkdtemp(prefix="runner-launch-test-"))
    root.chmod(0o755)
    for name, mode in (("open", 0o755), ("private", 0o700)):
        (root / name / "py" / "lib").mkdir(parents=True)
        (root / name).chmod(mode)
    yield root
    shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="the folders must belong to someone else")
def test_sources_below_a_folder_the_user_cannot_search_are_staged(tree):
    plan = plan_staging(
        [str(tree / "open" / "py"), str(tree / "private" / "py")], uid=65534, gid=65534
    )
    assert plan == (
        Staging(ancestor=str(tree / "private"), sources=(str(tree / "private" / "py"),)),
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the folders must belong to someone else")
def test_a_source_inside_another_one_comes_along_with_it(tree):
    outer, inner = str(tree / "private" / "py"), str(tree / "private" / "py" / "lib")
    plan = plan_staging([inner, outer], uid=65534, gid=65534)
    assert plan == (Staging(ancestor=str(tree / "private"), sources=(outer,)),)


def test_nothing_is_staged_for_root_or_for_reachable_paths(tree):
    assert plan_staging([str(tree / "private" / "py")], uid=0, gid=0) == ()
    assert plan_staging(["/usr/lib"], uid=65534, gid=65534) == ()


def test_search_permission_follows_owner_group_and_other_bits(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir(mode=0o710)
    os.chown(folder, 1234, 4321) if os.geteuid() == 0 else None
    if os.geteuid() == 0:
        assert can_search(str(folder), uid=1234, gid=1) is True
        assert can_search(str(folder), uid=99, gid=4321) is True
        assert can_search(str(folder), uid=99, gid=99) is False


def test_resource_limits_never_exceed_the_workers_own():
    limits = dict(
        (which, (soft, hard))
        for which, soft, hard in rlimits(
            cpu_seconds=10, file_size_bytes=1 << 20, data_bytes=None, max_processes=None
        )
    )
    import resource

    assert limits[resource.RLIMIT_CORE] == (0, 0)
    assert limits[resource.RLIMIT_CPU] == (10, 15)
    assert resource.RLIMIT_DATA not in limits and resource.RLIMIT_NPROC not in limits
