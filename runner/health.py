"""Whether this worker process may take another job.

Set once something is wrong that no single job's report can fix (today: GPU memory that did
not come back after a job). From then on every job is answered with an error report saying
so, nothing of it runs, and the Celery task asks the worker to stop consuming its queue.
Only a restart by an operator clears it.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class WorkerHealth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def fail(self, problem: str) -> None:
        with self._lock:
            if self.problem is None:
                self.problem = problem
        logger.error("worker is unhealthy and stops taking jobs: %s", problem)

    def refusal(self) -> str:
        return (
            f"This worker stopped taking jobs: {self.problem}. Nothing of your submission ran "
            "and this is not your code's fault; an operator must check and restart this node."
        )

    def reset(self) -> None:
        """For tests, and for an operator's console after fixing the node."""
        with self._lock:
            self.problem = None


WORKER_HEALTH = WorkerHealth()
