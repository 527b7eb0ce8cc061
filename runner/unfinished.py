"""Marks of the jobs a worker node has started and not finished, to catch jobs that kill it.

Jobs are acknowledged only once they ran (acks_late), and put back on the queue when the
process running one dies (reject_on_worker_lost). That is what makes a worker killed mid-job
lose nothing, and also what would make a job that kills its worker every time (the OOM
killer choosing the pool process, a crash in native code) come back to that worker for ever:
the broker does not count deliveries. So before it runs a job the worker leaves a mark on
its own disk, one file per submission and attempt, locked for as long as the run lasts, and
removes it when the run is over. A job that arrives to find its mark unlocked was started
here before by a process that died mid-run: the worker reports that run lost and does not
run it again; the web side counts it as an attempt and sends a new one, up to its cap.

The lock (`flock`) is what tells a dead run from a live one: the kernel drops it with the
process, however the process ends, so no pid, start time or clock is trusted. A job that
arrives while its mark is locked is a second copy of a job another process of this node is
running now, and is dropped. A run that ends by an exception, `SystemExit` included (billiard
turns a SIGTERM of a pool process into one: a deploy), removes its mark on the way out, so
its job comes back as the same attempt; only deaths that skip unwinding (SIGKILL, the OOM
killer, a crash) count. Marks live in `$VAR_DIR/unfinished/`, outside every sandbox.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import re
import time
from pathlib import Path

from runner.broker import var_dir

logger = logging.getLogger(__name__)

_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")  # as runner.schema checks it
KEEP_S = 7 * 24 * 3600


class Start(enum.Enum):
    NEW = "new"  # first run of this job on this node: run it
    DIED = "died"  # an earlier run of this job on this node died mid-run: don't run it again
    RUNNING = "running"  # another process of this node runs this job now: a duplicate copy


class Mark:
    """The mark of one job, held (locked) by this process while it runs the job."""

    def __init__(self, path: Path, fd: int | None, start: Start) -> None:
        self.path = path
        self.start = start
        self._fd = fd

    def release(self) -> None:
        """The run is over (whatever its verdict): remove the mark, then drop the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


class UnfinishedJobs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def from_env(cls) -> UnfinishedJobs:
        return cls(var_dir() / "unfinished")

    def begin(self, submission_id: object, attempt: object) -> Mark | None:
        """Take the job's mark; None for a job too malformed to name one (run_job refuses
        it anyway) or when the folder cannot be written (the job then runs unmarked)."""
        if not (isinstance(submission_id, str) and _SUBMISSION_ID.match(submission_id)):
            return None
        if not isinstance(attempt, int) or isinstance(attempt, bool):
            return None
        path = self.folder / f"{submission_id}-a{attempt}"
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            for _ in range(5):  # a run that ends between our steps: look again
                mark = self._new(path) or self._existing(path)
                if mark is not None:
                    return mark
        except OSError:
            logger.warning("cannot keep a mark for job %s", path.name, exc_info=True)
        return None

    def _new(self, path: Path) -> Mark | None:
        """A new mark, locked before it appears under its name (link() is atomic, so no
        other process can see it unlocked), or None if the job has a mark already."""
        draft = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: never waits
            os.link(draft, path)
        except FileExistsError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        finally:
            draft.unlink(missing_ok=True)
        return Mark(path, fd, Start.NEW)

    def _existing(self, path: Path) -> Mark | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return Mark(path, None, Start.RUNNING)
        try:
            # A run that just ended removes its mark before it unlocks it: a lock we got on
            # a file no longer at this name is the end of a run, not a dead one.
            current = os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:
            os.close(fd)
            return None
        return Mark(path, fd, Start.DIED)

    def prune(self, *, older_than_s: float = KEEP_S) -> None:
        """Forget marks of jobs that never came back (delivered elsewhere, or superseded by
        a later attempt): a week is far past any broker's redelivery."""
        cutoff = time.time() - older_than_s
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return
        for entry in entries:
            try:
                if entry.lstat().st_mtime < cutoff:
                    entry.unlink()
            except OSError:
                continue
