"""Open files in job folders without following links the learner may have planted.

In the bwrap sandbox no job folder on the host is writable by learner code: every writable
place inside is a size-capped tmpfs, and results come back through pipes. These helpers are
the second line: every file the trusted side reads or writes in a job folder goes through
them, so that a symbolic link, FIFO, device or huge file planted there (possible in the
unsandboxed development mode, or through a bug in the first line) cannot make the worker
read or write elsewhere, block, or run out of memory.

O_NOFOLLOW guards the last component of a path. The folders above it (the job folder and its
sub-folders) are created by the worker and never bound writable into a sandbox.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class UnsafeFile(OSError):
    """The path is a link, not a regular file, or larger than the caller allows."""


def read_bytes(path: Path | str, *, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most `max_bytes`; raise UnsafeFile otherwise.

    O_NOFOLLOW refuses a link in the last component; O_NONBLOCK keeps a FIFO from blocking the
    open, and fstat on the opened descriptor (not the path, which could be swapped meanwhile)
    refuses anything that is not a regular file.
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise UnsafeFile(f"{path} is {size} bytes, more than the {max_bytes} allowed")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while we read
            raise UnsafeFile(f"{path} grew past the {max_bytes} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: Path | str, *, max_bytes: int) -> str:
    return read_bytes(path, max_bytes=max_bytes).decode("utf-8")


def read_tail(path: Path | str, *, limit: int) -> str:
    """The last `limit` bytes of a regular file as text; "" when it is missing or unsafe."""
    try:
        fd = open_regular(path)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        data = os.read(fd, limit)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def write_new(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Create `path` and write `data`; refuse if anything (a link included) is already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def open_append(path: Path | str) -> int:
    """A descriptor for appending to a log file; refuses a link or a non-regular file."""
    fd = os.open(
        path,
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
        0o644,
    )
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: Path | str) -> int:
    """A read-only descriptor of a regular file that is not a symbolic link."""
    try:
        fd = os.open(path, _READ)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise UnsafeFile(f"{path} is a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd
