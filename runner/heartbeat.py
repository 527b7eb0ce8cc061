"""Heartbeats: every RUNNER_HEARTBEAT_S seconds (15 by default) a grading worker tells the web
side that it is alive, what it consumes, whether it is healthy, what it is grading and what
its GPUs are doing.

GPU nodes hold no database credentials, so a heartbeat travels the way reports do: a message
to the task `labs.record_heartbeat` on the `web` queue (runner/worker.py sends it from a
daemon thread of the worker's main process, and once more with `stopping: true` when the
worker shuts down). The web side records it (labs/tasks.py), shows the fleet page, and counts
a worker that stays silent for WORKER_LOST_AFTER_S as lost: the sweeper then re-queues the
jobs it was running.

The payload, `inference-roadmap/heartbeat@1` (every key always present):

    schema, worker ("gpu0@node1", Celery's hostname), node (the host name),
    boot (random, new at each start), seq (1, 2, ... within a boot: the web side ignores a
    heartbeat that is not newer than the last one it recorded of that boot),
    sent_at, started_at (Unix seconds, worker clock), interval_s, stopping,
    queues, device_class ("cpu" | "gpu"),
    health {ok, problem, notes} (notes: what an operator should know that does not stop the
    worker, e.g. a GPU check this node cannot make), sandbox {mode, ok, reason, warnings} (as
    checked at start-up),
    jobs {running, done, submissions} (done: finished since start; submissions: the ids
    being graded now),
    gpus [{index, minor, available, reason, name, uuid, sm_clock_mhz, memory_clock_mhz,
           temperature_c, power_w, gpu_utilization_pct, memory_utilization_pct,
           memory_used_bytes, memory_total_bytes, clock_event_reasons, throttled, unreadable}]
    gpu_note (null, or why there are no GPU readings: no pynvml, NVML did not start)

A reading NVML cannot give is null and named in that GPU's `unreadable`
(runner/measure/telemetry.py: snapshot). Nothing here trusts a learner: heartbeats come from
the worker's own process, outside every sandbox.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.gpu import nvml_index
from runner.health import WORKER_HEALTH
from runner.measure import telemetry

logger = logging.getLogger(__name__)

HEARTBEAT_SCHEMA = "inference-roadmap/heartbeat@1"
INTERVAL_ENV = "RUNNER_HEARTBEAT_S"
DEFAULT_INTERVAL_S = 15.0
MIN_INTERVAL_S = 1.0
# A heartbeat is sent with a Celery `expires` of this many intervals, so a web side that was
# down does not replay an hour of them. It must stay well above the sweeper's own expiry (60 s)
# plus one interval: every sweep the web side still runs then comes after (in the queue) a
# heartbeat of each worker that was alive when the sweep was sent, and no worker is taken
# for lost because the web side, not the worker, fell behind.
EXPIRES_INTERVALS = 10


def interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """RUNNER_HEARTBEAT_S as seconds (at least 1); the default when unset or not a number."""
    environ = os.environ if environ is None else environ
    raw = environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number; using %g s", INTERVAL_ENV, raw, DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S
    if not value >= MIN_INTERVAL_S:  # also catches NaN
        logger.warning("%s=%r is below %g s; using %g s", INTERVAL_ENV, raw, MIN_INTERVAL_S,
                       MIN_INTERVAL_S)  # fmt: skip
        return MIN_INTERVAL_S
    return value


def device_class(queues: Iterable[str], *, has_gpus: bool) -> str:
    """ "gpu" for a worker that consumes a GPU queue or owns a GPU, else "cpu"."""
    if has_gpus or any(q == "gpu" or q.startswith("gpu.") for q in queues):
        return "gpu"
    return "cpu"


def sandbox_summary(status: Mapping[str, Any]) -> dict[str, Any]:
    """The part of runner.sandbox_status() a fleet page shows."""
    warnings = status.get("warnings")
    return {
        "mode": status.get("mode"),
        "ok": bool(status.get("ok")),
        "reason": status.get("reason"),
        "warnings": list(warnings) if isinstance(warnings, list) else [],
    }


def gpu_snapshots(minors: Iterable[int], nvml: Any = None) -> tuple[list[dict], str | None]:
    """A snapshot of each GPU of this worker (by device-node minor number), and None; or no
    snapshots and the reason NVML could not be read. Never raises."""
    minors = list(minors)
    if not minors:
        return [], None
    if nvml is None:
        try:
            import pynvml as nvml  # noqa: PLC0415 - GPU nodes only
        except ImportError as exc:
            return [], f"pynvml (nvidia-ml-py) is not installed ({exc})"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError subclasses vary by driver
        return [], f"NVML did not start ({type(exc).__name__}: {exc})"
    try:
        return [
            {**telemetry.snapshot(nvml, nvml_index(nvml, minor)), "minor": minor}
            for minor in minors
        ], None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def celery_jobs(task_name: str) -> tuple[list[str], int]:
    """(the submission ids this worker is grading now, how many jobs it finished since it
    started), from Celery's own bookkeeping in the worker's main process.

    Jobs run in pool processes, heartbeats are sent by the main process. The main process
    hands every job to the pool and hears when it ends, including when the pool process
    running it died (WorkerLostError): `celery.worker.state.active_requests` holds the jobs
    handed out and not yet over, `total_count` counts the jobs accepted. A counter kept by
    the pool processes themselves (a shared file, a multiprocessing.Value) would need
    locking across processes and would stay wrong after a pool process is SIGKILLed mid-job;
    Celery's is right by construction. Works with the solo pool too (one process)."""
    from celery.worker import state  # noqa: PLC0415 - only inside a worker

    active: list[Any] = []
    for _ in range(5):
        try:
            # Another thread (the consumer) may add a request while we copy: try again.
            active = [r for r in list(state.active_requests) if r.name == task_name]
            break
        except RuntimeError:
            continue
    submissions = []
    for request in active:
        args = getattr(request, "args", None) or [None]
        job = args[0] if isinstance(args, list | tuple) and args else None
        if isinstance(job, dict) and isinstance(job.get("submission_id"), str):
            submissions.append(job["submission_id"])
    done = max(0, int(state.total_count.get(task_name, 0)) - len(active))
    return sorted(submissions), done


@dataclass
class WorkerState:
    """What a heartbeat says, gathered anew for each one."""

    worker: str
    queues: Callable[[], Iterable[str]]
    jobs: Callable[[], tuple[list[str], int]]  # (submission ids running, jobs done)
    health: Callable[[], str | None]  # None when healthy, else the problem
    # Notes that do not stop the worker; the worker's own (runner/health.py) by default.
    notes: Callable[[], list[str]] = field(default=lambda: WORKER_HEALTH.notes)
    interval_s: float = DEFAULT_INTERVAL_S
    device_class: str = "cpu"
    gpu_minors: tuple[int, ...] = ()
    sandbox: dict[str, Any] = field(default_factory=dict)
    node: str = field(default_factory=socket.gethostname)
    nvml: Any = None
    clock: Callable[[], float] = time.time
    boot: str = field(default_factory=lambda: secrets.token_hex(8))
    started_at: float | None = None
    seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.started_at is None:
            self.started_at = self.clock()

    def payload(self, *, stopping: bool = False) -> dict[str, Any]:
        with self._lock:
            self.seq += 1
            seq = self.seq
        problem = self.health()
        submissions, done = self.jobs()
        gpus, note = gpu_snapshots(self.gpu_minors, self.nvml)
        return {
            "schema": HEARTBEAT_SCHEMA,
            "worker": self.worker,
            "node": self.node,
            "boot": self.boot,
            "seq": seq,
            "sent_at": self.clock(),
            "started_at": self.started_at,
            "interval_s": self.interval_s,
            "stopping": stopping,
            "queues": sorted(self.queues()),
            "device_class": self.device_class,
            "health": {"ok": problem is None, "problem": problem, "notes": list(self.notes())},
            "sandbox": self.sandbox,
            "jobs": {"running": len(submissions), "done": done, "submissions": submissions},
            "gpus": gpus,
            "gpu_note": note,
        }


class Heartbeat:
    """Send `state.payload()` through `send` now and every `interval_s` seconds from a
    daemon thread until stop(), which sends one last payload with `stopping: true`. A send
    that fails is logged and skipped: the next heartbeat is as good."""

    def __init__(
        self, state: WorkerState, send: Callable[[dict[str, Any]], None], *, interval_s: float
    ) -> None:
        self.state = state
        self.send = send
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        self.beat()
        while not self._stop.wait(self.interval_s):
            self.beat()

    def beat(self, *, stopping: bool = False) -> bool:
        try:
            self.send(self.state.payload(stopping=stopping))
        except Exception:  # noqa: BLE001 - a broker hiccup must not end the heartbeats
            logger.warning("could not send a heartbeat", exc_info=True)
            return False
        return True

    def stop(self, *, timeout_s: float = 5.0) -> bool:
        """End the thread (waiting at most timeout_s for a send in flight) and say goodbye.
        The goodbye has the highest seq, so a heartbeat still in flight cannot undo it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        return self.beat(stopping=True)
