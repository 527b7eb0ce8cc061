"""Whether this worker process may take another job.

Set once something is wrong that no single job's report can fix: GPU memory that did not
come back after a job (runner/gpu.py), or a GPU that failed its check before a job (a stray
process, a critical Xid error, a hardware slowdown: runner/gpu_health.py). From then on every
job is answered with an error report saying so, nothing of it runs, and the Celery task asks
the worker to stop consuming its queue. Only a restart by an operator clears it.

Beside the problem, a worker keeps *notes*: things an operator should know that do not stop
it (a check this node cannot make, such as NVML refusing Xid events). Heartbeats carry both.

The problem is kept in memory shared by every process forked from the one that created it
(an anonymous shared mapping, which fork() passes on), not in a Python attribute: Celery's
pool processes grade and so find the problem, while the worker's main process sends the
heartbeats that must report it (runner/heartbeat.py), and a pool process that Celery replaces
must not start healthy again. `celery -A runner.worker` imports this module in the main
process before the pool forks.
"""

from __future__ import annotations

import logging
import mmap
import threading

logger = logging.getLogger(__name__)


class WorkerHealth:
    SIZE = 4096  # bytes: a flag, then the problem as UTF-8 (longer text is cut)
    NOTES_SIZE = 4096  # bytes after it: the notes, one a line, as UTF-8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # MAP_SHARED | MAP_ANONYMOUS: the problem, then the notes.
        self._shared = mmap.mmap(-1, self.SIZE + self.NOTES_SIZE)

    @property
    def problem(self) -> str | None:
        if self._shared[0] != 1:
            return None
        text = self._shared[1:].split(b"\0", 1)[0]
        return text.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.problem is None

    def fail(self, problem: str) -> None:
        with self._lock:
            if self.problem is None:
                # The text first, the flag last (a one-byte store): a reader in another
                # process sees either no problem or the whole sentence. Two processes failing
                # at the same instant could mix their sentences; one job at a time per GPU
                # makes that all but impossible, and either sentence is true.
                text = problem.encode("utf-8")[: self.SIZE - 2]
                self._shared[1 : 1 + len(text) + 1] = text + b"\0"
                self._shared[0] = 1
        logger.error("worker is unhealthy and stops taking jobs: %s", problem)

    def refusal(self) -> str:
        return (
            f"This worker stopped taking jobs: {self.problem}. Nothing of your submission ran "
            "and this is not your code's fault; an operator must check and restart this node."
        )

    @property
    def notes(self) -> list[str]:
        text = self._shared[self.SIZE :].split(b"\0", 1)[0].decode("utf-8", "replace")
        return [line for line in text.split("\n") if line]

    def note(self, text: str) -> None:
        """Remember something an operator should see that does not stop this worker; a note
        already kept is not added twice (every pool process finds the same thing). Notes
        that do not fit are logged only. As with fail(), two processes noting at the same
        instant could mix their lines: notes are advice, and each is also logged."""
        line = " ".join(text.split())
        with self._lock:
            notes = self.notes
            if line in notes:
                return
            encoded = "\n".join([*notes, line]).encode("utf-8")
            if len(encoded) < self.NOTES_SIZE:
                self._shared[self.SIZE : self.SIZE + len(encoded) + 1] = encoded + b"\0"
        logger.warning("worker note: %s", line)

    def reset(self) -> None:
        """For tests, and for an operator's console after fixing the node."""
        with self._lock:
            self._shared[0] = 0
            self._shared[self.SIZE] = 0


WORKER_HEALTH = WorkerHealth()
