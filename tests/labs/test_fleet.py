"""The fleet page: staff only, what it shows from recorded heartbeats, a lost worker shown as
lost, the polled fragment, and the server-side sparklines."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from labs.fleet import sparkline
from labs.models import Status, Submission, Worker
from labs.tasks import record_heartbeat
from labs.workers import clean_heartbeat
from runner.heartbeat import HEARTBEAT_SCHEMA
from tests.labs.conftest import LEARNER
from tests.labs.test_workers import heartbeat, silence

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    client.force_login(User.objects.create_user("operator", password="pw", is_staff=True))
    return client


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get("/fleet/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/fleet/")


def test_accounts_without_staff_status_are_refused(client):
    record_heartbeat(heartbeat())
    client.force_login(User.objects.create_user("learner", password="pw"))
    response = client.get("/fleet/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert "Fleet" not in client.get("/labs/").content.decode()


def test_a_poll_after_the_session_ended_stops_polling_and_shows_nothing(client):
    record_heartbeat(heartbeat())
    response = client.get("/fleet/", HTTP_HX_REQUEST="true")
    assert response.status_code == 286
    assert "signed out" in response.content.decode() and "gpu0" not in response.content.decode()


def test_it_rejects_post(staff):
    assert staff.post("/fleet/").status_code == 405


def test_staff_see_nodes_workers_and_gpus_from_the_heartbeats(staff, lab):
    running = Submission.objects.create(
        lab=lab, learner_key=LEARNER, notebook="{}", status=Status.RUNNING
    )
    throttled = heartbeat("gpu1@node2", running=[str(running.pk)])
    throttled["gpus"][0] |= {"clock_event_reasons": ["GpuIdle", "SwPowerCap"], "throttled": True}
    record_heartbeat(heartbeat("gpu0@node1"))
    record_heartbeat(throttled)
    record_heartbeat(heartbeat("cpu@node1") | {"gpus": [], "device_class": "cpu"})

    page = staff.get("/fleet/").content.decode()
    assert 'aria-current="page">Fleet</a>' in page
    assert "Node <code>node1</code>" in page and "Node <code>node2</code>" in page
    assert 'data-worker="gpu0@node1" data-status="alive"' in page and "● alive" in page
    assert "NVIDIA H100 80GB HBM3" in page
    assert "97 %" in page and "61 °C" in page and "351 W" in page
    assert "SM 1980 · mem 2619 MHz" in page
    assert "1.0 / 79.6 GiB" in page
    assert "throttled:</strong> SwPowerCap<br>GpuIdle" in page
    assert f'href="/submissions/{running.pk}/"' in page  # what gpu1 is grading
    assert page.count('<svg class="spark"') == 4  # utilisation and memory, two GPUs
    assert "3 alive · 0 lost · 0 stopped" in page


def test_a_lost_worker_is_shown_as_lost(staff, settings):
    settings.WORKER_LOST_AFTER_S = 60
    record_heartbeat(heartbeat("gpu0@node1"))
    record_heartbeat(heartbeat("gpu1@node1"))
    silence("gpu1@node1", 90)
    page = staff.get("/fleet/").content.decode()
    assert 'data-worker="gpu1@node1" data-status="lost"' in page and "✗ lost" in page
    assert "1 min ago" in page or "90 s ago" in page
    assert "1 alive · 1 lost · 0 stopped" in page


def test_a_stopped_and_an_unhealthy_worker_say_so(staff):
    record_heartbeat(heartbeat("gpu0@node1", stopping=True))
    sick = heartbeat("gpu1@node1")
    sick["health"] = {"ok": False, "problem": "GPU memory did not return to its baseline"}
    record_heartbeat(sick)
    page = staff.get("/fleet/").content.decode()
    assert 'data-worker="gpu0@node1" data-status="stopped"' in page and "■ stopped" in page
    assert "Unhealthy, takes no jobs:</strong> GPU memory did not return" in page


def test_a_health_note_is_shown_beside_a_healthy_worker(staff):
    noted = heartbeat("gpu0@node1")
    noted["health"] = {
        "ok": True,
        "problem": None,
        "notes": ["Xid events cannot be registered on GPU 0: skipped", 7, "bad\x00text"],
    }
    record_heartbeat(noted)
    page = staff.get("/fleet/").content.decode()
    assert "Health: ok · note: Xid events cannot be registered on GPU 0: skipped" in page
    assert "bad" not in page.split("Health: ok", 1)[1].split("</p>", 1)[0]


def test_queue_depths_per_queue_and_jobs_per_hour(staff, lab):
    now = timezone.now()
    make = Submission.objects.create
    make(lab=lab, learner_key=LEARNER, notebook="{}", device_class="cpu")
    make(lab=lab, learner_key=LEARNER, notebook="{}", device_class="cpu")
    make(lab=lab, learner_key=LEARNER, notebook="{}", device_class="gpu")
    make(lab=lab, learner_key=LEARNER, notebook="{}", status=Status.PASSED, finished=now)
    make(
        lab=lab,
        learner_key=LEARNER,
        notebook="{}",
        status=Status.FAILED,
        finished=now - timedelta(hours=2),
    )
    record_heartbeat(heartbeat("gpu0@node1"))  # consumes "gpu"
    page = staff.get("/fleet/").content.decode()
    cpu = page[page.index('data-queue="cpu"') :].split("</tr>")[0]
    gpu = page[page.index('data-queue="gpu"') :].split("</tr>")[0]
    assert "<td>2</td><td>0</td>" in cpu and "no worker takes these jobs" in cpu
    assert "<td>1</td><td>0</td>" in gpu and "no worker" not in gpu
    assert "<dd data-jobs-per-hour>1</dd>" in page


def test_gpu_hours_and_idle_come_from_the_samples(staff, settings):
    settings.WORKER_LOST_AFTER_S = 3600  # heartbeats half an hour apart still count
    start = timezone.now() - timedelta(minutes=61)
    first = heartbeat()
    for seq, (at, running) in enumerate([(0, []), (1800, ["s"]), (3600, [])], start=1):
        beat = heartbeat(running=running) | {"boot": first["boot"], "seq": seq}
        cleaned = clean_heartbeat(beat, schema=HEARTBEAT_SCHEMA)
        Worker.objects.record(cleaned, now=start + timedelta(seconds=at))
    # Half an hour with a job, half an hour without.
    page = staff.get("/fleet/").content.decode()
    assert "<dd data-gpu-hours>0.50 " in page
    assert "<dd data-idle>50 % " in page
    assert "0.50 GPU-h<br>idle 50 %" in page  # the GPU's own row


def test_an_htmx_poll_gets_only_the_fragment_that_polls_again(staff):
    record_heartbeat(heartbeat())
    response = staff.get("/fleet/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="fleet"') and "<html" not in html
    assert 'hx-trigger="every 5s, fleet-prices-changed from:body"' in html
    assert 'hx-get="/fleet/"' in html
    assert "gpu-prices" not in html.replace('href="#gpu-prices"', "")  # a poll keeps the forms


def test_an_empty_fleet_says_where_heartbeats_come_from(staff):
    assert "No worker has sent a heartbeat" in staff.get("/fleet/").content.decode()


def test_a_sparkline_is_numbers_only_breaks_at_gaps_and_escapes_its_label():
    now = timezone.now()
    points = [
        (now - timedelta(minutes=50), 10.0),
        (now - timedelta(minutes=49, seconds=45), 20.0),
        (now - timedelta(minutes=10), 100.0),  # after a 39-minute silence
        (now - timedelta(minutes=5), None),
        (now, 50.0),
    ]
    svg = sparkline(points, now=now, high=100, label='<GPU "0">', unit="%")
    assert svg.count("<polyline") == 3  # 2 points, 1, 1: each gap starts a new line
    assert 'aria-label="&lt;GPU &quot;0&quot;&gt;: now 50 %, min 10, max 100"' in svg
    assert "<script" not in svg and "<GPU" not in svg
    assert "no readings" in sparkline([], now=now, high=100, label="x", unit="%")
