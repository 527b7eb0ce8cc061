"""Grading workers as the web side knows them: from their heartbeats.

Workers never touch the database. Every RUNNER_HEARTBEAT_S seconds each one sends a heartbeat
(runner/heartbeat.py) to the task `labs.record_heartbeat` (labs/tasks.py), which cleans it
(`clean_heartbeat`: it came over the broker, so every field is checked and a bad one
dropped) and records it (`Worker.objects.record`): the worker's row, plus one WorkerSample
per GPU for the fleet page's sparklines and GPU-hours. Samples older than SAMPLES_KEPT are
deleted by the sweeper.

A worker is *lost* when it has been silent for WORKER_LOST_AFTER_S without saying it was
stopping; the sweeper then re-queues the jobs it was running (labs/tasks.py). Imported by
labs/models.py, which registers these models with the app.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

SAMPLES_KEPT = timedelta(hours=24)

WORKER_NAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,200}$")  # Celery hostnames: gpu0@node1
_NODE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_QUEUE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_BOOT = re.compile(r"^[0-9a-f]{1,32}$")
_REASON = re.compile(r"^(?:[A-Za-z]{1,40}|unknown 0x[0-9a-f]{1,16})$")
_UUID = re.compile(r"^[A-Za-z0-9-]{1,80}$")

MAX_GPUS = 16
MAX_QUEUES = 64
MAX_JOBS = 64
# Bounds of what a real GPU can report; a reading outside is dropped, not clamped.
GPU_NUMBERS: dict[str, tuple[float, float]] = {
    "sm_clock_mhz": (0, 100_000),
    "memory_clock_mhz": (0, 100_000),
    "temperature_c": (-50, 200),
    "power_w": (0, 10_000),
    "gpu_utilization_pct": (0, 100),
    "memory_utilization_pct": (0, 100),
    "memory_used_bytes": (0, 1 << 50),
    "memory_total_bytes": (0, 1 << 50),
}


def lost_after() -> timedelta:
    return timedelta(seconds=settings.WORKER_LOST_AFTER_S)


# --- Cleaning what came over the broker ---------------------------------------------------


def _text(value: Any, limit: int, pattern: re.Pattern[str] | None = None) -> str | None:
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    if pattern is not None and not pattern.match(value):
        return None
    if any(ord(c) < 32 for c in value):
        return None
    return value


def _number(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or not low <= value <= high:
        return None
    return value


def _whole(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if low <= value <= high else None


def _strings(value: Any, limit: int, each: int, pattern: re.Pattern[str] | None = None):
    if not isinstance(value, list):
        return []
    cleaned = (_text(item, each, pattern) for item in value[:limit])
    return [item for item in cleaned if item is not None]


def _gpu(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    index = _whole(raw.get("index"), 0, 255)
    if index is None:
        return None
    gpu: dict[str, Any] = {
        "index": index,
        "minor": _whole(raw.get("minor"), 0, 255),
        "available": raw.get("available") is True,
        "reason": _text(raw.get("reason"), 300),
        "name": _text(raw.get("name"), 100),
        "uuid": _text(raw.get("uuid"), 80, _UUID),
    }
    for key, (low, high) in GPU_NUMBERS.items():
        gpu[key] = _number(raw.get(key), low, high)
    gpu["clock_event_reasons"] = _strings(raw.get("clock_event_reasons"), 16, 40, _REASON)
    gpu["throttled"] = raw.get("throttled") is True
    unreadable = raw.get("unreadable")
    gpu["unreadable"] = (
        {k: v for k, v in list(unreadable.items())[:16] if _text(k, 40) and _text(v, 300)}
        if isinstance(unreadable, dict)
        else {}
    )
    return gpu


def _moment(value: Any) -> datetime | None:
    """Unix seconds from a worker's clock, as an aware datetime (None when implausible)."""
    seconds = _number(value, 1_000_000_000, 100_000_000_000)
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def clean_heartbeat(payload: Any, *, schema: str) -> dict[str, Any] | None:
    """The heartbeat with every field checked: wrong types, out-of-range numbers and odd text
    are dropped (None, an empty list) rather than trusted. None when it cannot be recorded
    at all: not a heartbeat of this schema, or no usable worker name."""
    if not isinstance(payload, dict) or payload.get("schema") != schema:
        return None
    worker = _text(payload.get("worker"), 200, WORKER_NAME)
    if worker is None:
        return None
    health = payload.get("health") if isinstance(payload.get("health"), dict) else {}
    problem = _text(health.get("problem"), 1000)
    sandbox = payload.get("sandbox") if isinstance(payload.get("sandbox"), dict) else {}
    jobs = payload.get("jobs") if isinstance(payload.get("jobs"), dict) else {}
    submissions = _strings(jobs.get("submissions"), MAX_JOBS, 128, _SUBMISSION_ID)
    gpus = payload.get("gpus") if isinstance(payload.get("gpus"), list) else []
    cleaned_gpus = [gpu for gpu in (_gpu(raw) for raw in gpus[:MAX_GPUS]) if gpu is not None]
    running = _whole(jobs.get("running"), 0, MAX_JOBS)
    return {
        "schema": schema,
        "worker": worker,
        "node": _text(payload.get("node"), 200, _NODE) or worker.partition("@")[2] or "",
        "boot": _text(payload.get("boot"), 32, _BOOT) or "",
        "seq": _whole(payload.get("seq"), 0, 2**62) or 0,
        "sent_at": _moment(payload.get("sent_at")),
        "started_at": _moment(payload.get("started_at")),
        "interval_s": _number(payload.get("interval_s"), 1, 3600),
        "stopping": payload.get("stopping") is True,
        "queues": sorted(set(_strings(payload.get("queues"), MAX_QUEUES, 64, _QUEUE))),
        "device_class": d if (d := payload.get("device_class")) in ("cpu", "gpu") else "",
        # Unhealthy wins over a contradicting "ok": a problem is never hidden.
        "health": {
            "ok": problem is None and health.get("ok") is True,
            "problem": problem,
            # What a check could not do or saw without failing the worker (runner/health.py
            # notes: e.g. Xid events this driver cannot report).
            "notes": _strings(health.get("notes"), 10, 1000),
        },
        "sandbox": {
            "mode": m if (m := sandbox.get("mode")) in ("bwrap", "none") else None,
            "ok": sandbox.get("ok") is True,
            "reason": _text(sandbox.get("reason"), 1000),
            "warnings": _strings(sandbox.get("warnings"), 10, 1000),
        },
        "jobs": {
            "running": len(submissions) if running is None else running,
            "done": _whole(jobs.get("done"), 0, 2**62) or 0,
            "submissions": submissions,
        },
        "gpus": cleaned_gpus,
        "gpu_note": _text(payload.get("gpu_note"), 500),
    }


def _stored(heartbeat: dict[str, Any]) -> dict[str, Any]:
    """The cleaned heartbeat as JSON for Worker.payload (datetimes as ISO text)."""
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in heartbeat.items()
    }


# --- Models -----------------------------------------------------------------------------


class WorkerQuerySet(models.QuerySet["Worker"]):
    def lost(self, *, now: datetime | None = None) -> WorkerQuerySet:
        """Silent for longer than WORKER_LOST_AFTER_S, and never said it was stopping."""
        now = now or timezone.now()
        return self.filter(stopped=False, last_seen__lt=now - lost_after())

    def record(self, heartbeat: dict[str, Any], *, now: datetime) -> str:
        """Record a cleaned heartbeat: "created", "updated", or "stale" when it is not newer
        than what is recorded (an older seq of the same boot, or an earlier boot), which
        changes nothing. The UPDATE is conditional, so a late or duplicated message cannot
        bring back an older state (a worker that said it is stopping stays stopped)."""
        fields = {
            "node": heartbeat["node"],
            "device_class": heartbeat["device_class"],
            "queues": heartbeat["queues"],
            "boot": heartbeat["boot"],
            "seq": heartbeat["seq"],
            "started_at": heartbeat["started_at"],
            "last_seen": now,
            "stopped": heartbeat["stopping"],
            "payload": _stored(heartbeat),
        }
        worker, created = self.get_or_create(
            name=heartbeat["worker"], defaults=fields | {"first_seen": now}
        )
        previous = None if created else worker.last_seen
        if not created:
            newer = Q(boot=heartbeat["boot"], seq__lt=heartbeat["seq"])
            later_boot = ~Q(boot=heartbeat["boot"])
            if heartbeat["started_at"] is not None:
                later_boot &= Q(started_at__isnull=True) | Q(
                    started_at__lte=heartbeat["started_at"]
                )
            newer |= later_boot
            if not heartbeat["boot"]:
                newer = Q()  # a heartbeat without a boot cannot be ordered: the latest wins
            if not self.filter(Q(pk=worker.pk) & newer).update(**fields):
                return "stale"
        WorkerSample.objects.bulk_create(
            WorkerSample.from_heartbeat(
                worker, heartbeat, at=now, interval_s=_interval(previous, now, worker.stopped)
            )
        )
        return "created" if created else "updated"


def _interval(previous: datetime | None, now: datetime, was_stopped: bool) -> float:
    """How long the new sample stands for: the time since the worker's previous heartbeat;
    0 after a silence long enough to count as lost, or after the worker had stopped (the
    gap is unknown, and GPU-hours must not count it)."""
    if previous is None or was_stopped:
        return 0.0
    gap = (now - previous).total_seconds()
    return gap if 0 < gap <= lost_after().total_seconds() else 0.0


class Worker(models.Model):
    name = models.CharField(max_length=200, unique=True)  # Celery hostname: gpu0@node1
    node = models.CharField(max_length=200, blank=True)
    device_class = models.CharField(max_length=16, blank=True)
    queues = models.JSONField(default=list, blank=True)
    # Which run of the worker process, and which of its heartbeats, was recorded last.
    boot = models.CharField(max_length=32, blank=True)
    seq = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    stopped = models.BooleanField(default=False)
    # The last heartbeat, cleaned (labs.workers.clean_heartbeat).
    payload = models.JSONField(default=dict, blank=True)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["node", "name"]

    def __str__(self) -> str:
        return self.name

    def status(self, *, now: datetime | None = None) -> str:
        """ "stopped", "lost" or "alive"."""
        if self.stopped:
            return "stopped"
        now = now or timezone.now()
        return "lost" if self.last_seen < now - lost_after() else "alive"

    @property
    def gpus(self) -> list[dict[str, Any]]:
        return self.payload.get("gpus") or []

    @property
    def jobs(self) -> dict[str, Any]:
        return self.payload.get("jobs") or {"running": 0, "done": 0, "submissions": []}

    @property
    def health(self) -> dict[str, Any]:
        return self.payload.get("health") or {"ok": True, "problem": None, "notes": []}

    @property
    def sandbox(self) -> dict[str, Any]:
        return self.payload.get("sandbox") or {}


class WorkerSampleQuerySet(models.QuerySet["WorkerSample"]):
    def gpu_time(self) -> dict[str, float]:
        """Seconds of GPU time these samples stand for: `total`, and `busy` (a job ran)."""
        totals = self.filter(gpu_index__isnull=False).aggregate(
            total=models.Sum("interval_s"),
            busy=models.Sum("interval_s", filter=Q(jobs_running__gt=0)),
        )
        return {"total": totals["total"] or 0.0, "busy": totals["busy"] or 0.0}


class WorkerSample(models.Model):
    """One GPU of one worker at one heartbeat (gpu_index null: a worker without GPU
    readings, kept for its job count)."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(db_index=True)
    gpu_index = models.PositiveSmallIntegerField(null=True, blank=True)
    gpu_utilization = models.FloatField(null=True, blank=True)  # percent
    memory_used = models.BigIntegerField(null=True, blank=True)  # bytes
    power = models.FloatField(null=True, blank=True)  # watts
    temperature = models.FloatField(null=True, blank=True)  # degrees Celsius
    jobs_running = models.PositiveSmallIntegerField(default=0)
    throttled = models.BooleanField(default=False)
    # Seconds since the worker's previous heartbeat (0 when unknown): summed for GPU-hours.
    interval_s = models.FloatField(default=0.0)

    objects = WorkerSampleQuerySet.as_manager()

    class Meta:
        ordering = ["at"]
        indexes = [models.Index(fields=["worker", "at"])]

    def __str__(self) -> str:
        gpu = "" if self.gpu_index is None else f" GPU {self.gpu_index}"
        return f"{self.worker_id}{gpu} at {self.at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def from_heartbeat(
        cls, worker: Worker, heartbeat: dict[str, Any], *, at: datetime, interval_s: float
    ) -> list[WorkerSample]:
        running = heartbeat["jobs"]["running"]
        gpus = [gpu for gpu in heartbeat["gpus"] if gpu["available"]]
        if not gpus:
            return [cls(worker=worker, at=at, jobs_running=running, interval_s=interval_s)]
        return [
            cls(
                worker=worker,
                at=at,
                gpu_index=gpu["index"],
                gpu_utilization=gpu["gpu_utilization_pct"],
                memory_used=gpu["memory_used_bytes"],
                power=gpu["power_w"],
                temperature=gpu["temperature_c"],
                jobs_running=running,
                throttled=gpu["throttled"],
                interval_s=interval_s,
            )
            for gpu in gpus
        ]
