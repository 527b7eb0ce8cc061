"""Fleet alerts: each rule on crafted samples and submissions (fires after its time, not
before; resolves), one notification per change to a real local webhook and by mail, a
failing webhook recorded on the alert and never raised, and the alerts on the page."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core import mail
from django.db import IntegrityError
from django.utils import timezone

from config.celery import app
from labs.alerts import FleetAlert, Rule, evaluate_alerts, streak
from labs.models import Status, Submission, Worker, WorkerSample
from labs.tasks import evaluate_fleet_alerts, record_heartbeat
from tests.labs.conftest import LEARNER
from tests.labs.test_workers import heartbeat

pytestmark = pytest.mark.django_db


class Webhook(ThreadingHTTPServer):
    """A local HTTP server that keeps what it is sent and answers with `status`."""

    def __init__(self):
        self.received: list[dict] = []
        self.status = 204
        super().__init__(("127.0.0.1", 0), WebhookHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/fleet"


class WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(
            {"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)}
        )
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook(settings):
    server = Webhook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.FLEET_ALERT_WEBHOOK_URL = server.url
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def rules(settings):
    settings.FLEET_ALERT_IDLE_BELOW_PCT = 10
    settings.FLEET_ALERT_IDLE_MINUTES = 15
    settings.FLEET_ALERT_IDLE_ALWAYS = False
    settings.FLEET_ALERT_QUEUE_WAIT_S = 600
    settings.FLEET_ALERT_THROTTLE_MINUTES = 2
    settings.FLEET_ALERT_WEBHOOK_URL = ""
    settings.FLEET_ALERT_EMAILS = []
    settings.WORKER_LOST_AFTER_S = 60
    return settings


def gpu_worker(name: str = "gpu0@node1", *, at=None) -> Worker:
    """An alive worker with one H100, consuming "gpu", without samples yet."""
    record_heartbeat(heartbeat(name))
    WorkerSample.objects.filter(worker__name=name).delete()
    Worker.objects.filter(name=name).update(last_seen=at or timezone.now())
    return Worker.objects.get(name=name)


def minutes_of(worker: Worker, *, end, minutes: int, utilization=3.0, jobs=0, throttled=False):
    """One sample a minute for `minutes` minutes, the last at `end` (inclusive of both ends)."""
    WorkerSample.objects.bulk_create(
        WorkerSample(
            worker=worker,
            at=end - timedelta(minutes=m),
            gpu_index=0,
            gpu_utilization=utilization,
            jobs_running=jobs,
            throttled=throttled,
            interval_s=60,
        )
        for m in range(minutes + 1)
    )


def queued(lab, *, waited_s: float = 0, device_class: str = "gpu") -> Submission:
    return Submission.objects.create(
        lab=lab,
        learner_key=LEARNER,
        notebook="{}",
        device_class=device_class,
        created=timezone.now() - timedelta(seconds=waited_s),
        dispatched_at=timezone.now(),
    )


def keys() -> list[str]:
    return sorted(FleetAlert.objects.filter(resolved_at=None).values_list("key", flat=True))


# --- The idle-GPU rule --------------------------------------------------------------------


def test_an_idle_gpu_with_jobs_waiting_fires_after_the_minutes_not_before(rules, lab):
    now = timezone.now()
    worker = gpu_worker(at=now)
    queued(lab)
    minutes_of(worker, end=now, minutes=14)  # idle from now-14 min
    assert evaluate_alerts(now=now) == {"firing": 0, "fired": 0, "resolved": 0}
    later = now + timedelta(minutes=1)
    minutes_of(worker, end=later, minutes=0)
    Worker.objects.filter(pk=worker.pk).update(last_seen=later)
    assert evaluate_alerts(now=later)["fired"] == 1
    alert = FleetAlert.objects.get()
    assert (alert.rule, alert.key) == (Rule.GPU_IDLE, "gpu-idle:gpu0@node1:0")
    assert alert.text == (
        "GPU 0 of gpu0@node1 (NVIDIA H100 80GB HBM3) below 10 % utilisation for 15 min or "
        "more while 1 submission(s) wait in its queues."
    )


def test_a_busy_reading_in_the_minutes_restarts_the_count(rules, lab):
    now = timezone.now()
    worker = gpu_worker(at=now)
    queued(lab)
    minutes_of(worker, end=now - timedelta(minutes=6), minutes=20)
    WorkerSample.objects.filter(at=now - timedelta(minutes=6)).update(gpu_utilization=55)
    minutes_of(worker, end=now, minutes=5)
    assert evaluate_alerts(now=now)["firing"] == 0


def test_an_idle_gpu_with_nothing_to_do_is_quiet_unless_asked(rules):
    now = timezone.now()
    minutes_of(gpu_worker(at=now), end=now, minutes=30)
    assert evaluate_alerts(now=now)["firing"] == 0
    rules.FLEET_ALERT_IDLE_ALWAYS = True
    assert evaluate_alerts(now=now)["fired"] == 1
    assert "with nothing to do (an idle GPU still costs)" in FleetAlert.objects.get().text


def test_a_gpu_held_idle_by_a_job_fires_without_a_queue(rules):
    now = timezone.now()
    minutes_of(gpu_worker(at=now), end=now, minutes=20, utilization=0, jobs=1)
    evaluate_alerts(now=now)
    assert FleetAlert.objects.get().text.endswith("for 15 min or more while a job holds it.")


def test_jobs_waiting_on_a_queue_the_worker_does_not_consume_do_not_count(rules, lab):
    now = timezone.now()
    minutes_of(gpu_worker(at=now), end=now, minutes=20)
    queued(lab, device_class="cpu")
    evaluate_alerts(now=now)
    assert keys() == []


def test_the_idle_alert_resolves_when_the_gpu_works_again(rules, lab):
    now = timezone.now()
    worker = gpu_worker(at=now)
    queued(lab)
    minutes_of(worker, end=now, minutes=20)
    evaluate_alerts(now=now)
    later = now + timedelta(seconds=15)
    minutes_of(worker, end=later, minutes=0, utilization=95, jobs=1)
    Worker.objects.filter(pk=worker.pk).update(last_seen=later)
    assert evaluate_alerts(now=later) == {"firing": 0, "fired": 0, "resolved": 1}
    assert FleetAlert.objects.get().resolved_at == later


def test_a_streak_stops_at_a_gap_of_unknown_length():
    now = timezone.now()
    worker = Worker(name="w")
    newest_first = [
        WorkerSample(worker=worker, at=now, gpu_utilization=1, jobs_running=1, interval_s=15),
        WorkerSample(worker=worker, at=now - timedelta(minutes=1), gpu_utilization=1, interval_s=0),
        WorkerSample(
            worker=worker, at=now - timedelta(minutes=30), gpu_utilization=1, interval_s=15
        ),
    ]
    start, held = streak(newest_first, holds=lambda s: s.gpu_utilization < 10)
    assert start == now - timedelta(minutes=1) and held is False
    assert streak([], holds=lambda s: True) == (None, False)


# --- Queue wait, lost workers, health, throttling --------------------------------------------


def test_a_queue_whose_oldest_submission_waits_too_long_fires(rules, lab):
    now = timezone.now()
    queued(lab, waited_s=500)
    assert evaluate_alerts(now=now)["firing"] == 0
    queued(lab, waited_s=700)
    evaluate_alerts(now=now)
    alert = FleetAlert.objects.get()
    assert alert.key == "queue-wait:gpu"
    assert alert.text.startswith(
        "Queue gpu: the oldest of 2 queued submission(s) has waited 11 min (alert above 10 min)"
    )
    Submission.objects.filter(created__lt=now - timedelta(seconds=600)).update(
        status=Status.RUNNING
    )
    assert evaluate_alerts(now=now)["resolved"] == 1


def test_a_lost_worker_fires_and_resolves_when_it_is_heard_again(rules):
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(seconds=90))
    evaluate_alerts(now=timezone.now())
    assert keys() == ["worker-lost:gpu1@node1"]
    assert "no heartbeat for 90 s" in FleetAlert.objects.get().text
    gpu_worker("gpu1@node1")
    assert evaluate_alerts(now=timezone.now())["resolved"] == 1 and keys() == []


def test_a_worker_silent_for_over_a_day_is_forgotten(rules):
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(hours=25))
    assert evaluate_alerts(now=timezone.now())["firing"] == 0


def test_a_stopped_worker_is_not_lost(rules):
    record_heartbeat(heartbeat("gpu1@node1", stopping=True))
    Worker.objects.update(last_seen=timezone.now() - timedelta(hours=1))
    assert evaluate_alerts(now=timezone.now())["firing"] == 0


def test_an_unhealthy_worker_and_an_unreadable_gpu_fire(rules):
    sick = heartbeat("gpu0@node1")
    sick["health"] = {"ok": False, "problem": "GPU memory did not return to its baseline"}
    sick["gpus"][0] |= {"available": False, "reason": "NVML: GPU is lost"}
    record_heartbeat(sick)
    evaluate_alerts(now=timezone.now())
    assert keys() == ["gpu-unhealthy:gpu0@node1", "gpu-unhealthy:gpu0@node1:0"]
    texts = sorted(FleetAlert.objects.values_list("text", flat=True))
    assert texts == [
        "GPU 0 of gpu0@node1 (NVIDIA H100 80GB HBM3) cannot be read: NVML: GPU is lost",
        "Worker gpu0@node1 is unhealthy and takes no jobs: GPU memory did not return to its "
        "baseline",
    ]


def test_a_gpu_throttled_for_the_minutes_fires_and_a_moment_does_not(rules):
    now = timezone.now()
    beat = heartbeat("gpu0@node1")
    beat["gpus"][0] |= {"clock_event_reasons": ["GpuIdle", "SwPowerCap"], "throttled": True}
    record_heartbeat(beat)
    worker = Worker.objects.get()
    WorkerSample.objects.all().delete()
    Worker.objects.update(last_seen=now)
    minutes_of(worker, end=now - timedelta(minutes=2), minutes=3, utilization=97, jobs=1)
    minutes_of(worker, end=now, minutes=1, utilization=97, jobs=1, throttled=True)
    assert evaluate_alerts(now=now)["firing"] == 0  # throttled for 1 min of the 2
    WorkerSample.objects.filter(at=now - timedelta(minutes=2)).update(throttled=True)
    evaluate_alerts(now=now)
    alert = FleetAlert.objects.get()
    assert alert.key == "gpu-throttled:gpu0@node1:0"
    assert "throttled for 2 min or more: SwPowerCap." in alert.text


def test_rules_left_out_of_the_setting_do_not_run(rules):
    rules.FLEET_ALERT_RULES = ["queue-wait"]
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(seconds=90))
    assert evaluate_alerts(now=timezone.now())["firing"] == 0


# --- Notifications ----------------------------------------------------------------------


def test_a_change_is_posted_to_the_webhook_once(rules, webhook):
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(seconds=90))
    evaluate_alerts(now=timezone.now())
    evaluate_alerts(now=timezone.now())  # still firing: nothing new to say
    assert len(webhook.received) == 1
    sent = webhook.received[0]
    assert sent["path"] == "/hooks/fleet" and sent["type"] == "application/json"
    alert = FleetAlert.objects.get()
    assert sent["body"] == {
        "schema": "inference-roadmap/fleet-alert@1",
        "event": "firing",
        "text": f"[fleet] firing: {alert.text}",
        "alert": {
            "id": alert.pk,
            "rule": "worker-lost",
            "key": "worker-lost:gpu1@node1",
            "text": alert.text,
            "started_at": alert.started_at.isoformat(),
            "resolved_at": None,
        },
        "page": "/fleet/",
    }
    assert alert.last_notified_at is not None and alert.notify_error == ""
    gpu_worker("gpu1@node1")
    evaluate_alerts(now=timezone.now())
    evaluate_alerts(now=timezone.now())
    assert [r["body"]["event"] for r in webhook.received] == ["firing", "resolved"]
    assert webhook.received[1]["body"]["alert"]["resolved_at"] is not None


def test_a_failing_webhook_is_recorded_on_the_alert_and_not_raised(rules, webhook):
    webhook.status = 500
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(seconds=90))
    assert evaluate_fleet_alerts() == {"firing": 1, "fired": 1, "resolved": 0}
    alert = FleetAlert.objects.get()
    assert alert.notify_error == "webhook: HTTP Error 500: Internal Server Error"
    assert alert.last_notified_at is None


def test_an_unreachable_webhook_is_recorded_too(rules, webhook):
    rules.FLEET_ALERT_WEBHOOK_URL = webhook.url
    webhook.shutdown()
    webhook.server_close()  # nothing listens on the port any more
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(seconds=90))
    evaluate_alerts(now=timezone.now())
    assert FleetAlert.objects.get().notify_error.startswith("webhook: <urlopen error")


def test_a_webhook_that_is_not_http_is_refused(rules):
    rules.FLEET_ALERT_WEBHOOK_URL = "file:///etc/passwd"
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(seconds=90))
    evaluate_alerts(now=timezone.now())
    assert FleetAlert.objects.get().notify_error == "webhook: not an http(s) URL: file:..."


def test_changes_are_mailed_once_each(rules):
    rules.FLEET_ALERT_EMAILS = ["ops@example.org", "oncall@example.org"]
    gpu_worker("gpu1@node1", at=timezone.now() - timedelta(seconds=90))
    evaluate_alerts(now=timezone.now())
    evaluate_alerts(now=timezone.now())
    (firing,) = mail.outbox
    assert firing.to == ["ops@example.org", "oncall@example.org"]
    assert firing.subject.startswith("[fleet] FIRING: Worker gpu1@node1 is lost")
    assert "Rule: Worker lost (worker-lost:gpu1@node1)" in firing.body
    gpu_worker("gpu1@node1")
    evaluate_alerts(now=timezone.now())
    assert len(mail.outbox) == 2 and mail.outbox[1].subject.startswith("[fleet] RESOLVED")


def test_only_one_alert_per_subject_can_be_open():
    FleetAlert.objects.create(rule=Rule.WORKER_LOST, key="worker-lost:a", text="x")
    with pytest.raises(IntegrityError):
        FleetAlert.objects.create(rule=Rule.WORKER_LOST, key="worker-lost:a", text="y")


def test_the_beat_runs_the_evaluation_on_the_web_queue():
    entry = django_settings.CELERY_BEAT_SCHEDULE["evaluate-fleet-alerts"]
    assert entry["task"] == "labs.evaluate_fleet_alerts" and entry["options"]["queue"] == "web"
    assert entry["schedule"] == django_settings.FLEET_ALERT_INTERVAL_S
    assert "labs.evaluate_fleet_alerts" in app.tasks


# --- On the page ----------------------------------------------------------------------------


def test_the_page_shows_firing_alerts_first_and_recent_resolved_ones(client, rules):
    client.force_login(User.objects.create_user("operator", password="pw", is_staff=True))
    assert "✓ No alert is firing." in client.get("/fleet/").content.decode()
    now = timezone.now()
    FleetAlert.objects.create(
        rule=Rule.QUEUE_WAIT,
        key="queue-wait:gpu",
        text="Queue gpu: the oldest waited 12 min.",
        started_at=now - timedelta(minutes=3),
        notify_error="webhook: HTTP Error 500: Internal Server Error",
    )
    FleetAlert.objects.create(
        rule=Rule.WORKER_LOST,
        key="worker-lost:gpu1@node1",
        text="Worker gpu1@node1 is lost.",
        started_at=now - timedelta(hours=2),
        resolved_at=now - timedelta(hours=1),
    )
    FleetAlert.objects.create(
        rule=Rule.WORKER_LOST,
        key="worker-lost:old",
        text="Long ago.",
        started_at=now - timedelta(days=3),
        resolved_at=now - timedelta(days=2),
    )
    page = client.get("/fleet/").content.decode()
    assert page.index("data-alerts") < page.index("data-costs") < page.index("fleet-queues")
    assert (
        '<li data-alert="queue-wait:gpu" data-alert-state="firing"><strong class="fleet-alert">'
        "⚠ Firing</strong> for 3\xa0minutes: Queue gpu: the oldest waited 12 min." in page
    )
    assert "Notification failed:</strong> webhook: HTTP Error 500" in page
    assert "✓ Resolved 1\xa0hour ago, after 1\xa0hour: Worker gpu1@node1 is lost." in page
    assert "Long ago." not in page
    assert "Sent to: nobody (set <code>FLEET_ALERT_WEBHOOK_URL</code>" in page


def test_the_page_names_the_webhook_host_but_not_its_secret_path(client, rules):
    rules.FLEET_ALERT_WEBHOOK_URL = "https://hooks.example.org/services/T000/SECRET"
    client.force_login(User.objects.create_user("operator", password="pw", is_staff=True))
    page = client.get("/fleet/").content.decode()
    assert "a webhook at <code>hooks.example.org</code>" in page and "SECRET" not in page
