"""The fleet page (/fleet/, staff only): grading workers, their GPUs and the queues, from the
workers' heartbeats (labs/workers.py). The page polls its own fragment every POLL_S seconds.

Sparklines are inline SVG built here from WorkerSample rows (numbers only, no JavaScript).
GPU-hours are the summed sample intervals of GPUs while their worker ran a job; idle is the
rest of the observed GPU time (a GPU whose worker is lost or stopped is not observed).
Costs come from the prices per GPU-hour staff set here (labs/fleet_costs.py, which defines
each figure); alerts are evaluated by a beat task and only shown here (labs/alerts.py).
The price forms sit outside the polled fragment, so that a poll never wipes what is typed.
"""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.db.models import Count, Min, Q, Sum
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from labs.alerts import FleetAlert, alert_settings_summary
from labs.fleet_costs import GpuPriceForm, costs_context, prices_context, save_price
from labs.models import ACTIVE, Lab, Status, Submission, Worker, WorkerSample
from labs.workers import lost_after

POLL_S = 5
SIGNED_OUT = (
    '<div id="fleet"><p class="notice error">You are signed out, or not staff: '
    "reload the page to sign in.</p></div>"
)
SPARK_WINDOW = timedelta(hours=1)
SHOWN_FOR = timedelta(hours=24)  # workers silent for longer are left off the page
DAY = timedelta(hours=24)
GIB = 1 << 30
# Each status is a word with a symbol; the page's colours only add to them.
STATUS_WORDS = {"alive": "● alive", "lost": "✗ lost", "stopped": "■ stopped"}


@require_GET
def fleet_page(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_active and request.user.is_staff):
        if request.htmx:
            # A poll after the session ended: stop polling (286) rather than swap a login
            # page into this one.
            return HttpResponseStopPolling(SIGNED_OUT)
        # As staff_member_required does: the admin login, which refuses non-staff accounts.
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    now = timezone.now()
    if request.htmx:
        return render(request, "labs/fleet.html#fleet", fleet_context(now=now))
    return render(request, "labs/fleet.html", fleet_context(now=now) | prices_context(now=now))


@require_POST
def fleet_price(request: HttpRequest) -> HttpResponse:
    """Set the price of one GPU-hour of a GPU model (staff only)."""
    if not (request.user.is_active and request.user.is_staff):
        return HttpResponseForbidden("Only staff accounts may set GPU prices.")
    now = timezone.now()
    form = GpuPriceForm(request.POST)
    saved = form.is_valid()
    if saved:
        price = save_price(
            gpu_model=form.cleaned_data["gpu_model"],
            usd_per_hour=form.cleaned_data["usd_per_hour"],
            by=request.user,
            now=now,
        )
        note = f"Saved: {price.gpu_model} at ${price.usd_per_hour.normalize():f} per GPU-hour."
    else:
        problems = [f"{name.replace('_', ' ')}: {' '.join(e)}" for name, e in form.errors.items()]
        note = "Not saved: " + "; ".join(problems)
    if request.htmx:
        # 200 either way: htmx swaps no 4xx response, and the note says what happened.
        response = render(
            request,
            "labs/fleet.html#prices",
            prices_context(now=now) | {"price_note": note, "price_saved": saved},
        )
        if saved:
            response["HX-Trigger"] = "fleet-prices-changed"  # the polled figures refresh now
        return response
    if saved:
        messages.success(request, note)
        return redirect("fleet")
    context = fleet_context(now=now) | prices_context(now=now)
    context |= {"price_note": note, "price_saved": False}
    return render(request, "labs/fleet.html", context, status=400)


def fleet_context(*, now: datetime) -> dict[str, Any]:
    workers = list(Worker.objects.filter(last_seen__gte=now - SHOWN_FOR))
    rows = [WorkerRow.of(worker, now=now) for worker in workers]
    _add_gpus(rows, now=now)
    nodes = [
        {"name": node or "unknown node", "workers": list(group)}
        for node, group in itertools.groupby(rows, key=lambda row: row.worker.node)
    ]
    counts = {status: sum(row.status == status for row in rows) for status in STATUS_WORDS}
    day = WorkerSample.objects.filter(at__gte=now - DAY).gpu_time()
    queues = queue_depths(alive=[row.worker for row in rows if row.status == "alive"])
    return {
        "now": now,
        "poll_s": POLL_S,
        "lost_after_s": int(lost_after().total_seconds()),
        "nodes": nodes,
        "counts": counts,
        "queues": queues,
        "queued_total": sum(q["queued"] for q in queues),
        "jobs_last_hour": Submission.objects.filter(finished__gte=now - timedelta(hours=1))
        .exclude(status__in=ACTIVE)
        .count(),
        "gpu_hours": day["busy"] / 3600,
        "idle_pct": None if not day["total"] else round(100 * (1 - day["busy"] / day["total"])),
        "costs": costs_context(now=now),
        "active_alerts": list(FleetAlert.objects.filter(resolved_at=None)),
        "resolved_alerts": list(
            FleetAlert.objects.filter(resolved_at__gte=now - DAY).order_by("-resolved_at")[:10]
        ),
        "alert_settings": alert_settings_summary(),
    }


@dataclass
class WorkerRow:
    worker: Worker
    status: str
    status_text: str
    seen: str
    grading: list[dict[str, str | None]] = field(default_factory=list)
    gpus: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, worker: Worker, *, now: datetime) -> WorkerRow:
        status = worker.status(now=now)
        return cls(
            worker=worker,
            status=status,
            status_text=STATUS_WORDS[status],
            seen=ago((now - worker.last_seen).total_seconds()),
            grading=[
                {"id": job, "url": submission_url(job)}
                for job in worker.jobs.get("submissions") or []
            ],
        )


def submission_url(submission_id: str) -> str | None:
    """The submission's page, for ids that can be one (a worker may grade other jobs)."""
    try:
        return reverse("submission", args=[uuid.UUID(submission_id)])
    except ValueError:
        return None


def _add_gpus(rows: list[WorkerRow], *, now: datetime) -> None:
    """Each worker's GPUs from its last heartbeat, with sparklines of the last hour and its
    busy time over the last day from the samples."""
    # The grader's own list of clock reasons that spoil a timing, through the one bridge.
    from labs.tasks import THROTTLE_REASONS  # noqa: PLC0415 - tasks imports runner/

    ids = [row.worker.pk for row in rows]
    series: dict[tuple[int, int], list[tuple[datetime, float | None, int | None]]] = defaultdict(
        list
    )
    samples = (
        WorkerSample.objects.filter(
            worker_id__in=ids, at__gte=now - SPARK_WINDOW, gpu_index__isnull=False
        )
        .order_by("at")
        .values_list("worker_id", "gpu_index", "at", "gpu_utilization", "memory_used")
    )
    for worker_id, index, at, utilization, memory in samples:
        series[(worker_id, index)].append((at, utilization, memory))
    day = {
        (row["worker_id"], row["gpu_index"]): row
        for row in WorkerSample.objects.filter(
            worker_id__in=ids, at__gte=now - DAY, gpu_index__isnull=False
        )
        .values("worker_id", "gpu_index")
        .annotate(total=Sum("interval_s"), busy=Sum("interval_s", filter=Q(jobs_running__gt=0)))
    }
    for row in rows:
        for gpu in row.worker.gpus:
            points = series.get((row.worker.pk, gpu["index"]), [])
            total = gpu.get("memory_total_bytes") or max((p[2] or 0 for p in points), default=0)
            usage = day.get((row.worker.pk, gpu["index"])) or {}
            busy, observed = usage.get("busy") or 0.0, usage.get("total") or 0.0
            row.gpus.append(
                gpu
                | {
                    "utilization_spark": sparkline(
                        [(at, value) for at, value, _ in points],
                        now=now,
                        high=100,
                        label="GPU utilisation over the last hour",
                        unit="%",
                    ),
                    "memory_spark": sparkline(
                        [(at, None if m is None else m / GIB) for at, _, m in points],
                        now=now,
                        high=(total or 1) / GIB,
                        label="GPU memory used over the last hour",
                        unit="GiB",
                    ),
                    "memory_text": memory_text(
                        gpu.get("memory_used_bytes"), gpu.get("memory_total_bytes")
                    ),
                    "busy_hours": busy / 3600,
                    "idle_pct": round(100 * (1 - busy / observed)) if observed else None,
                    "spoiling": [r for r in gpu["clock_event_reasons"] if r in THROTTLE_REASONS],
                    "other_reasons": [
                        r for r in gpu["clock_event_reasons"] if r not in THROTTLE_REASONS
                    ],
                }
            )


def queue_depths(*, alive: list[Worker]) -> list[dict[str, Any]]:
    """Queued and running submissions per queue, the oldest wait, and how many alive workers
    consume the queue. The queue of each (lab, device class) pair is asked of
    labs.tasks.queue_for once, not once per submission: a GPU lab's queue comes from its
    lab.toml, read from disk."""
    from labs.tasks import queue_for  # noqa: PLC0415 - tasks imports runner/, only when used

    groups = list(
        Submission.objects.filter(status__in=ACTIVE)
        .values("lab", "device_class", "status")
        .annotate(n=Count("pk"), oldest=Min("created"))
    )
    labs = Lab.objects.in_bulk({group["lab"] for group in groups})
    consumers: dict[str, int] = defaultdict(int)
    for worker in alive:
        for queue in worker.queues:
            consumers[queue] += 1
    depths: dict[str, dict[str, Any]] = {
        queue: {"queue": queue, "queued": 0, "running": 0, "oldest": None} for queue in consumers
    }
    names: dict[tuple[int, str], str] = {}
    for group in groups:
        key = (group["lab"], group["device_class"])
        if key not in names:
            names[key] = queue_for(Submission(lab=labs[key[0]], device_class=key[1]))
        entry = depths.setdefault(
            names[key], {"queue": names[key], "queued": 0, "running": 0, "oldest": None}
        )
        if group["status"] == Status.QUEUED:
            entry["queued"] += group["n"]
            if entry["oldest"] is None or group["oldest"] < entry["oldest"]:
                entry["oldest"] = group["oldest"]
        else:
            entry["running"] += group["n"]
    now = timezone.now()
    for entry in depths.values():
        entry["consumers"] = consumers.get(entry["queue"], 0)
        entry["waiting"] = ago((now - entry["oldest"]).total_seconds()) if entry["oldest"] else ""
    return sorted(depths.values(), key=lambda entry: entry["queue"])


def sparkline(
    points: list[tuple[datetime, float | None]],
    *,
    now: datetime,
    high: float,
    label: str,
    unit: str,
    width: int = 112,
    height: int = 24,
) -> SafeString:
    """An inline SVG polyline of `points` over the hour before `now`, 0 at the bottom and
    `high` at the top; a gap longer than WORKER_LOST_AFTER_S (or a missing value) breaks
    the line. Only numbers go into the markup; the label is escaped."""
    start = now - SPARK_WINDOW
    window = SPARK_WINDOW.total_seconds()
    gap = lost_after()
    segments: list[list[tuple[float, float]]] = []
    previous: datetime | None = None
    values = [value for _, value in points if value is not None]
    for at, value in points:
        if value is None:
            previous = None
            continue
        if previous is None or at - previous > gap:
            segments.append([])
        previous = at
        x = max(0.0, (at - start).total_seconds()) / window * width
        y = height - 1 - min(max(value, 0.0), high) / high * (height - 2) if high > 0 else height
        segments[-1].append((x, y))
    lines = []
    for segment in segments:
        if len(segment) == 1:  # one reading: a short dash ending at it, so that it shows
            segment = [(max(0.0, segment[0][0] - 3), segment[0][1]), segment[0]]
        lines.append(" ".join(f"{x:.1f},{y:.1f}" for x, y in segment))
    summary = (
        f"{label}: now {values[-1]:.3g} {unit}, min {min(values):.3g}, max {max(values):.3g}"
        if values
        else f"{label}: no readings"
    )
    polylines = SafeString("".join(f'<polyline points="{line}"/>' for line in lines))
    return format_html(
        '<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        'aria-label="{summary}"><title>{summary}</title>'
        '<line class="spark-base" x1="0" y1="{base}" x2="{w}" y2="{base}"/>{lines}</svg>',
        w=width,
        h=height,
        base=height - 1,
        summary=summary,
        lines=polylines,
    )


def memory_text(used: float | None, total: float | None) -> str:
    if used is None and total is None:
        return "—"
    used_text = "?" if used is None else f"{used / GIB:.1f}"
    total_text = "?" if total is None else f"{total / GIB:.1f}"
    return f"{used_text} / {total_text} GiB"


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
