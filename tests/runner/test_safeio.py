"""The trusted side's file access in job folders: no links followed, no FIFOs, no floods."""

from __future__ import annotations

import os

import pytest

from runner import safeio
from runner.safeio import UnsafeFile


def test_a_regular_file_is_read_whole(tmp_path):
    (tmp_path / "execution.json").write_bytes(b'{"status": "ok"}')
    assert safeio.read_bytes(tmp_path / "execution.json", max_bytes=100) == b'{"status": "ok"}'


def test_a_symlink_planted_where_the_worker_reads_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("broker password")
    (tmp_path / "executed.ipynb").symlink_to(secret)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        safeio.read_bytes(tmp_path / "executed.ipynb", max_bytes=1 << 20)
    assert safeio.read_tail(tmp_path / "executed.ipynb", limit=100) == ""


def test_a_fifo_neither_blocks_nor_is_read(tmp_path):
    os.mkfifo(tmp_path / "execution.json")
    with pytest.raises(UnsafeFile, match="not a regular file"):
        safeio.read_bytes(tmp_path / "execution.json", max_bytes=100)


def test_a_device_or_folder_is_refused(tmp_path):
    with pytest.raises(UnsafeFile):
        safeio.read_bytes("/dev/zero", max_bytes=100)
    with pytest.raises(UnsafeFile):
        safeio.read_bytes(tmp_path, max_bytes=100)


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path):
    (tmp_path / "huge").write_bytes(b"x" * 1001)
    with pytest.raises(UnsafeFile, match="more than the 1000"):
        safeio.read_bytes(tmp_path / "huge", max_bytes=1000)


def test_the_tail_reads_only_the_end(tmp_path):
    (tmp_path / "log").write_bytes(b"a" * 10_000 + b"the end")
    assert safeio.read_tail(tmp_path / "log", limit=7) == "the end"


def test_writing_a_new_file_never_follows_a_planted_link(tmp_path):
    target = tmp_path / "target"
    target.write_text("untouched")
    (tmp_path / "solution.py").symlink_to(target)
    with pytest.raises(FileExistsError):
        safeio.write_new(tmp_path / "solution.py", b"print('pwned')")
    assert target.read_text() == "untouched"
    safeio.write_new(tmp_path / "fresh.py", b"x = 1")
    assert (tmp_path / "fresh.py").read_bytes() == b"x = 1"


def test_appending_to_a_log_refuses_a_planted_link(tmp_path):
    target = tmp_path / "target"
    target.write_text("untouched")
    (tmp_path / "executor.log").symlink_to(target)
    with pytest.raises(OSError):
        safeio.open_append(tmp_path / "executor.log")
    assert target.read_text() == "untouched"
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(OSError):
        safeio.open_append(tmp_path / "fifo.log")
