"""Alerts about the grading fleet: rules evaluated every FLEET_ALERT_INTERVAL_S by the beat
task `labs.evaluate_fleet_alerts` (labs/tasks.py), recorded as FleetAlert rows, shown on the
fleet page and sent to a webhook and/or by email when they start and when they end.

The rules (settings, all read from the environment; FLEET_ALERT_RULES picks which run):

- gpu-idle: a GPU of an alive worker below FLEET_ALERT_IDLE_BELOW_PCT % utilisation in every
  heartbeat for FLEET_ALERT_IDLE_MINUTES, while jobs are queued on a queue its worker consumes
  (a worker that should be busy is not), or while a job holds it the whole time (a job that
  keeps the GPU and does not use it). FLEET_ALERT_IDLE_ALWAYS also counts an idle GPU with
  nothing to do (money spent on an idle GPU).
- queue-wait: the oldest queued submission of a queue has waited more than
  FLEET_ALERT_QUEUE_WAIT_S.
- worker-lost: a worker silent for WORKER_LOST_AFTER_S without saying it stops (heard from in
  the last 24 hours, as the fleet page shows it).
- gpu-unhealthy: an alive worker whose health check failed, or one of its GPUs unreadable.
- gpu-throttled: a GPU throttled (a clock-event reason that spoils timings) in every heartbeat
  for FLEET_ALERT_THROTTLE_MINUTES (a power cap touched for a moment is not worth a message).

Each finding has a key (rule and subject, e.g. "gpu-idle:gpu0@node1:0"); at most one open
alert per key (a conditional unique constraint), so a second evaluation running at the same
time, or the next one, neither duplicates nor re-sends it. Notifications go out on state
change only: once when an alert starts firing and once when it resolves. A failed webhook or
mail is logged and recorded on the alert (notify_error), never raised into the task, and not
retried: the page still shows the alert.

Imported by labs/models.py, which registers FleetAlert with the app.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from labs.workers import Worker, WorkerSample, lost_after

log = logging.getLogger(__name__)

SHOWN_FOR = timedelta(hours=24)  # as the fleet page: a worker silent longer is forgotten
WEBHOOK_SCHEMA = "inference-roadmap/fleet-alert@1"


class Rule(models.TextChoices):
    GPU_IDLE = "gpu-idle", "GPU idle"
    QUEUE_WAIT = "queue-wait", "Queue wait"
    WORKER_LOST = "worker-lost", "Worker lost"
    GPU_UNHEALTHY = "gpu-unhealthy", "Unhealthy worker or GPU"
    GPU_THROTTLED = "gpu-throttled", "GPU throttled"


class FleetAlert(models.Model):
    """One period during which a rule held for one subject (a GPU, a queue, a worker)."""

    rule = models.CharField(max_length=16, choices=Rule.choices)
    key = models.CharField(max_length=300)
    text = models.TextField()  # what the rule found, as of the last evaluation that held
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)
    # Why the last notification did not go out (webhook or mail), empty when it did.
    notify_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["key"],
                condition=Q(resolved_at__isnull=True),
                name="one_open_fleet_alert_per_key",
            )
        ]

    def __str__(self) -> str:
        state = "resolved" if self.resolved_at else "firing"
        return f"{state}: {self.text}"

    @property
    def firing(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True)
class Finding:
    rule: str
    key: str
    text: str


# --- Evaluation ---------------------------------------------------------------------------


def evaluate_alerts(*, now: datetime) -> dict[str, int]:
    """Open an alert for each new finding, resolve those whose finding is gone, and notify
    each change once. Returns counts: firing (findings now), fired and resolved (changes)."""
    findings = {finding.key: finding for finding in current_findings(now=now)}
    open_alerts = {alert.key: alert for alert in FleetAlert.objects.filter(resolved_at=None)}
    fired: list[FleetAlert] = []
    for key, finding in findings.items():
        alert = open_alerts.get(key)
        if alert is not None:
            if alert.text != finding.text:
                FleetAlert.objects.filter(pk=alert.pk).update(text=finding.text)
            continue
        try:
            with transaction.atomic():
                fired.append(
                    FleetAlert.objects.create(
                        rule=finding.rule, key=key, text=finding.text, started_at=now
                    )
                )
        except IntegrityError:
            pass  # another evaluation opened it first, and notifies it
    resolved: list[FleetAlert] = []
    for key, alert in open_alerts.items():
        if key in findings:
            continue
        # Conditional: of two evaluations at once, one resolves it and notifies.
        if FleetAlert.objects.filter(pk=alert.pk, resolved_at=None).update(resolved_at=now):
            alert.resolved_at = now
            resolved.append(alert)
    for alert in fired:
        notify(alert, event="firing", now=now)
    for alert in resolved:
        notify(alert, event="resolved", now=now)
    return {"firing": len(findings), "fired": len(fired), "resolved": len(resolved)}


def current_findings(*, now: datetime) -> list[Finding]:
    rules: dict[str, Callable[..., Iterable[Finding]]] = {
        Rule.GPU_IDLE: idle_gpus,
        Rule.QUEUE_WAIT: queue_waits,
        Rule.WORKER_LOST: lost_workers,
        Rule.GPU_UNHEALTHY: unhealthy_workers,
        Rule.GPU_THROTTLED: throttled_gpus,
    }
    enabled = set(settings.FLEET_ALERT_RULES)
    if unknown := enabled - set(rules):
        log.warning("FLEET_ALERT_RULES names unknown rules, ignored: %s", sorted(unknown))
    alive = list(Worker.objects.filter(stopped=False, last_seen__gte=now - lost_after()))
    findings: list[Finding] = []
    for rule, check in rules.items():
        if rule in enabled:
            findings.extend(check(now=now, alive=alive))
    return findings


def idle_gpus(*, now: datetime, alive: list[Worker]) -> Iterable[Finding]:
    below = settings.FLEET_ALERT_IDLE_BELOW_PCT
    minutes = settings.FLEET_ALERT_IDLE_MINUTES
    queued = _queued_per_queue(alive) if alive else {}
    samples = _recent_samples(alive, since=now - timedelta(minutes=minutes) - lost_after())
    for worker in alive:
        waiting = sum(queued.get(queue, 0) for queue in worker.queues)
        for index, series in samples.get(worker.pk, {}).items():
            start, held = streak(
                series, holds=lambda s: s.gpu_utilization is not None and s.gpu_utilization < below
            )
            if start is None or now - start < timedelta(minutes=minutes):
                continue
            if held:
                why = "while a job holds it"
            elif waiting:
                why = f"while {waiting} submission(s) wait in its queues"
            elif settings.FLEET_ALERT_IDLE_ALWAYS:
                why = "with nothing to do (an idle GPU still costs)"
            else:
                continue
            yield Finding(
                Rule.GPU_IDLE,
                f"{Rule.GPU_IDLE}:{worker.name}:{index}",
                f"{_gpu_name(worker, index)} below {below} % utilisation for {minutes} min "
                f"or more {why}.",
            )


def queue_waits(*, now: datetime, alive: list[Worker]) -> Iterable[Finding]:
    limit = timedelta(seconds=settings.FLEET_ALERT_QUEUE_WAIT_S)
    from labs.fleet import queue_depths  # noqa: PLC0415 - labs.fleet imports this module

    for depth in queue_depths(alive=alive):
        oldest = depth["oldest"]
        if oldest is None or now - oldest <= limit:
            continue
        yield Finding(
            Rule.QUEUE_WAIT,
            f"{Rule.QUEUE_WAIT}:{depth['queue']}",
            f"Queue {depth['queue']}: the oldest of {depth['queued']} queued submission(s) has "
            f"waited {_minutes(now - oldest)} (alert above {_minutes(limit)}); "
            f"{depth['consumers']} alive worker(s) consume this queue.",
        )


def lost_workers(*, now: datetime, alive: list[Worker]) -> Iterable[Finding]:
    for worker in Worker.objects.lost(now=now).filter(last_seen__gte=now - SHOWN_FOR):
        yield Finding(
            Rule.WORKER_LOST,
            f"{Rule.WORKER_LOST}:{worker.name}",
            f"Worker {worker.name} is lost: no heartbeat for {_minutes(now - worker.last_seen)}. "
            "The sweeper re-queues the jobs it was running.",
        )


def unhealthy_workers(*, now: datetime, alive: list[Worker]) -> Iterable[Finding]:
    for worker in alive:
        if not worker.health.get("ok", True):
            yield Finding(
                Rule.GPU_UNHEALTHY,
                f"{Rule.GPU_UNHEALTHY}:{worker.name}",
                f"Worker {worker.name} is unhealthy and takes no jobs: "
                f"{worker.health.get('problem') or 'no reason given'}",
            )
        for gpu in worker.gpus:
            if not gpu.get("available", True):
                yield Finding(
                    Rule.GPU_UNHEALTHY,
                    f"{Rule.GPU_UNHEALTHY}:{worker.name}:{gpu['index']}",
                    f"{_gpu_name(worker, gpu['index'])} cannot be read: "
                    f"{gpu.get('reason') or 'no reason given'}",
                )


def throttled_gpus(*, now: datetime, alive: list[Worker]) -> Iterable[Finding]:
    from labs.tasks import THROTTLE_REASONS  # noqa: PLC0415 - tasks imports this module

    minutes = settings.FLEET_ALERT_THROTTLE_MINUTES
    samples = _recent_samples(alive, since=now - timedelta(minutes=minutes) - lost_after())
    for worker in alive:
        for index, series in samples.get(worker.pk, {}).items():
            start, _ = streak(series, holds=lambda s: s.throttled)
            if start is None or now - start < timedelta(minutes=minutes):
                continue
            gpu = next((g for g in worker.gpus if g.get("index") == index), {})
            reasons = [r for r in gpu.get("clock_event_reasons") or [] if r in THROTTLE_REASONS]
            yield Finding(
                Rule.GPU_THROTTLED,
                f"{Rule.GPU_THROTTLED}:{worker.name}:{index}",
                f"{_gpu_name(worker, index)} throttled for {minutes} min or more"
                f"{': ' + ', '.join(reasons) if reasons else ''}. Timings on it are not "
                "trustworthy.",
            )


def streak(
    newest_first: list[WorkerSample], *, holds: Callable[[WorkerSample], bool]
) -> tuple[datetime | None, bool]:
    """Since when `holds` has been true of every sample, walking back from the newest, and
    whether a job was running in all of them. The walk stops at a sample where it does not
    hold, and after one whose interval is 0 (what came before it is not known: the worker was
    lost or restarted). (None, False) when the newest sample does not hold."""
    start, held = None, True
    for sample in newest_first:
        if not holds(sample):
            break
        start, held = sample.at, held and sample.jobs_running > 0
        if sample.interval_s <= 0:
            break
    return start, held and start is not None


def _recent_samples(
    workers: list[Worker], *, since: datetime
) -> dict[int, dict[int, list[WorkerSample]]]:
    """Each worker's GPU samples since `since`, per GPU index, newest first."""
    series: dict[int, dict[int, list[WorkerSample]]] = {}
    samples = WorkerSample.objects.filter(
        worker__in=workers, at__gte=since, gpu_index__isnull=False
    ).order_by("-at")
    for sample in samples:
        series.setdefault(sample.worker_id, {}).setdefault(sample.gpu_index, []).append(sample)
    return series


def _queued_per_queue(alive: list[Worker]) -> dict[str, int]:
    from labs.fleet import queue_depths  # noqa: PLC0415 - labs.fleet imports this module

    return {depth["queue"]: depth["queued"] for depth in queue_depths(alive=alive)}


def _gpu_name(worker: Worker, index: int) -> str:
    gpu = next((g for g in worker.gpus if g.get("index") == index), {})
    return f"GPU {index} of {worker.name} ({gpu.get('name') or 'unknown model'})"


def _minutes(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


# --- Notifications ------------------------------------------------------------------------


def notify(alert: FleetAlert, *, event: str, now: datetime) -> None:
    """Send one state change to the webhook and/or the mail recipients. Failures are logged
    and kept on the alert; they never reach the caller."""
    url, recipients = settings.FLEET_ALERT_WEBHOOK_URL, settings.FLEET_ALERT_EMAILS
    if not url and not recipients:
        return
    errors, sent = [], False
    if url:
        try:
            post_json(url, webhook_payload(alert, event=event))
            sent = True
        except Exception as exc:  # urllib raises many types: none may stop the evaluation
            log.warning("fleet alert %s: webhook failed: %s", alert.pk, exc)
            errors.append(f"webhook: {exc}")
    if recipients:
        try:
            send_mail(
                subject=f"[fleet] {event.upper()}: {alert.text}"[:150],
                message=_mail_body(alert, event=event),
                from_email=None,  # DEFAULT_FROM_EMAIL
                recipient_list=recipients,
            )
            sent = True
        except Exception as exc:  # SMTP errors, refused connections, bad addresses
            log.warning("fleet alert %s: mail failed: %s", alert.pk, exc)
            errors.append(f"email: {exc}")
    changes: dict[str, Any] = {"notify_error": "; ".join(errors)[:2000]}
    if sent:
        changes["last_notified_at"] = now
    FleetAlert.objects.filter(pk=alert.pk).update(**changes)


def webhook_payload(alert: FleetAlert, *, event: str) -> dict[str, Any]:
    """What the webhook receives. `text` at the top level makes it readable as is by chat
    webhooks (Slack, Mattermost); the rest is for programs."""
    return {
        "schema": WEBHOOK_SCHEMA,
        "event": event,
        "text": f"[fleet] {event}: {alert.text}",
        "alert": {
            "id": alert.pk,
            "rule": alert.rule,
            "key": alert.key,
            "text": alert.text,
            "started_at": alert.started_at.isoformat(),
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        },
        "page": reverse("fleet"),
    }


def post_json(url: str, payload: dict[str, Any]) -> None:
    """POST the payload as JSON; raises on a refused connection, a timeout or a status of
    400 and above (urllib's HTTPError)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url.split(':', 1)[0]}:...")
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "inference-roadmap-fleet"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=settings.FLEET_ALERT_WEBHOOK_TIMEOUT_S):
        pass


def _mail_body(alert: FleetAlert, *, event: str) -> str:
    lines = [
        f"{'Resolved' if event == 'resolved' else 'Firing'}: {alert.text}",
        "",
        f"Rule: {alert.get_rule_display()} ({alert.key})",
        f"Started: {alert.started_at:%Y-%m-%d %H:%M:%S %Z}",
    ]
    if alert.resolved_at:
        lines.append(f"Resolved: {alert.resolved_at:%Y-%m-%d %H:%M:%S %Z}")
    lines.append(f"Fleet page: {reverse('fleet')}")
    return "\n".join(lines) + "\n"


def alert_settings_summary() -> dict[str, Any]:
    """The rules and where notifications go, for the page (the webhook by host only: its
    path often holds a secret token)."""
    url = settings.FLEET_ALERT_WEBHOOK_URL
    return {
        "rules": [rule for rule in Rule if rule in settings.FLEET_ALERT_RULES],
        "idle_below_pct": settings.FLEET_ALERT_IDLE_BELOW_PCT,
        "idle_minutes": settings.FLEET_ALERT_IDLE_MINUTES,
        "idle_always": settings.FLEET_ALERT_IDLE_ALWAYS,
        "queue_wait_s": settings.FLEET_ALERT_QUEUE_WAIT_S,
        "throttle_minutes": settings.FLEET_ALERT_THROTTLE_MINUTES,
        "interval_s": settings.FLEET_ALERT_INTERVAL_S,
        "webhook_host": urlsplit(url).hostname if url else None,
        "emails": len(settings.FLEET_ALERT_EMAILS),
    }
