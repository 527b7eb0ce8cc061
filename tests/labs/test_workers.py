"""Workers as the web side knows them: heartbeats recorded (and bad ones not trusted), a
silent worker counted as lost, and the sweeper re-queueing a lost worker's job, once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from labs.models import Status, Submission, Worker, WorkerSample
from labs.tasks import record_heartbeat, record_progress, retry_or_give_up, sweep_submissions
from labs.workers import clean_heartbeat
from runner.heartbeat import HEARTBEAT_SCHEMA, WorkerState
from tests.labs.conftest import LEARNER, job_of, make_notebook
from tests.runner.test_heartbeat import FakeNvml

pytestmark = pytest.mark.django_db

GIB = 1 << 30


def heartbeat(worker: str = "gpu0@node1", **changes) -> dict:
    """A heartbeat as runner/heartbeat.py builds it (fake NVML: one H100 at 97 %)."""
    running = changes.pop("running", [])
    payload = WorkerState(
        worker=worker,
        node=worker.partition("@")[2] or "node1",
        queues=lambda: ["gpu"],
        jobs=lambda: (running, 3),
        health=lambda: None,
        device_class="gpu",
        gpu_minors=(1,),
        sandbox={"mode": "bwrap", "ok": True, "reason": None, "warnings": []},
        nvml=FakeNvml(),
    ).payload()
    return payload | changes


@pytest.fixture
def running_submission(lab):
    now = timezone.now()
    return Submission.objects.create(
        lab=lab,
        learner_key=LEARNER,
        notebook=make_notebook().decode(),
        status=Status.RUNNING,
        dispatched_at=now,
        started=now,
        heartbeat_at=now,  # its own progress is recent: the lease has long to run
        worker="gpu0@node1",
    )


def silence(name: str, seconds: float) -> None:
    Worker.objects.filter(name=name).update(last_seen=timezone.now() - timedelta(seconds=seconds))


# --- Recording -------------------------------------------------------------------------


def test_a_heartbeat_creates_the_worker_and_a_sample_per_gpu():
    assert record_heartbeat(heartbeat(running=["sub-1"])) == "created"
    worker = Worker.objects.get()
    assert (worker.name, worker.node, worker.device_class) == ("gpu0@node1", "node1", "gpu")
    assert worker.queues == ["gpu"] and worker.stopped is False
    assert worker.status() == "alive"
    assert worker.jobs == {"running": 1, "done": 3, "submissions": ["sub-1"]}
    (gpu,) = worker.gpus
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["index"] == 0  # minor 1 = index 0
    (sample,) = WorkerSample.objects.all()
    assert sample.gpu_index == 0 and sample.gpu_utilization == 97
    assert sample.memory_used == 1000 * (1 << 20) and sample.power == pytest.approx(350.5)
    assert sample.temperature == 61 and sample.jobs_running == 1
    assert sample.throttled is False and sample.interval_s == 0  # nothing before it


def test_a_newer_heartbeat_updates_the_worker_and_an_older_one_changes_nothing():
    first, second = heartbeat(), heartbeat()
    second = second | {"boot": first["boot"], "seq": 2, "jobs": second["jobs"] | {"done": 9}}
    record_heartbeat(first)
    assert record_heartbeat(second) == "updated"
    assert record_heartbeat(first | {"seq": 1}) == "stale"  # delivered late, or twice
    assert record_heartbeat(second) == "stale"
    worker = Worker.objects.get()
    assert worker.seq == 2 and worker.jobs["done"] == 9
    assert WorkerSample.objects.count() == 2


def test_a_restarted_worker_is_recorded_and_its_previous_run_cannot_overwrite_it():
    old = heartbeat(stopping=True)
    new = heartbeat() | {"started_at": old["started_at"] + 60}
    record_heartbeat(old)
    assert record_heartbeat(new) == "updated"
    assert record_heartbeat(old | {"seq": 99, "stopping": False}) == "stale"
    worker = Worker.objects.get()
    assert worker.boot == new["boot"] and worker.stopped is False


def test_a_worker_that_said_it_stops_is_stopped_not_lost_and_a_late_heartbeat_keeps_it_so():
    hello = heartbeat()
    goodbye = hello | {"seq": 5, "stopping": True}
    record_heartbeat(goodbye)
    assert record_heartbeat(hello | {"seq": 4}) == "stale"  # sent before the goodbye
    silence("gpu0@node1", 3600)
    worker = Worker.objects.get()
    assert worker.stopped and worker.status() == "stopped"
    assert not Worker.objects.lost().exists()


def test_bad_fields_are_dropped_not_trusted():
    payload = heartbeat()
    payload["gpus"][0] |= {
        "gpu_utilization_pct": 1e9,
        "temperature_c": "hot",
        "power_w": float("nan"),
        "name": "<script>alert(1)</script>" * 10,
        "clock_event_reasons": ["SwPowerCap", "<b>", 7],
        "throttled": "yes",
    }
    payload |= {
        "queues": ["gpu", "GPU;drop", "x" * 100, 3],
        "device_class": "tpu",
        "health": {"ok": True, "problem": "GPU memory did not return"},
        "jobs": {"running": -1, "done": "many", "submissions": ["ok-1", "../etc", 5]},
        "sandbox": "fine",
        "sent_at": "yesterday",
        "interval_s": 0,
        "stopping": "true",
        "unexpected": {"big": "x" * 1000},
    }
    assert record_heartbeat(payload) == "created"
    worker = Worker.objects.get()
    gpu = worker.gpus[0]
    assert gpu["gpu_utilization_pct"] is None and gpu["temperature_c"] is None
    assert gpu["power_w"] is None and gpu["name"] is None
    assert gpu["clock_event_reasons"] == ["SwPowerCap"] and gpu["throttled"] is False
    assert gpu["sm_clock_mhz"] == 1980  # the good readings stay
    assert worker.queues == ["gpu"] and worker.device_class == ""
    assert worker.health == {"ok": False, "problem": "GPU memory did not return", "notes": []}
    assert worker.jobs == {"running": 1, "done": 0, "submissions": ["ok-1"]}
    assert worker.sandbox == {"mode": None, "ok": False, "reason": None, "warnings": []}
    assert worker.payload["sent_at"] is None and worker.payload["interval_s"] is None
    assert worker.stopped is False and "unexpected" not in worker.payload
    assert WorkerSample.objects.get().gpu_utilization is None


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "a heartbeat",
        [],
        {"schema": "inference-roadmap/heartbeat@0", "worker": "gpu0@node1"},
        {"schema": HEARTBEAT_SCHEMA},
        {"schema": HEARTBEAT_SCHEMA, "worker": "gpu0@node1; DROP TABLE"},
        {"schema": HEARTBEAT_SCHEMA, "worker": "w" * 201},
        {"schema": HEARTBEAT_SCHEMA, "worker": ["gpu0@node1"]},
    ],
)
def test_what_is_not_a_heartbeat_of_a_named_worker_is_dropped(payload):
    assert record_heartbeat(payload) == "malformed"
    assert not Worker.objects.exists() and not WorkerSample.objects.exists()


def test_a_minimal_heartbeat_is_recorded_with_empty_fields():
    cleaned = clean_heartbeat(
        {"schema": HEARTBEAT_SCHEMA, "worker": "cpu@n"}, schema=HEARTBEAT_SCHEMA
    )
    assert cleaned["node"] == "n" and cleaned["gpus"] == [] and cleaned["queues"] == []
    assert record_heartbeat({"schema": HEARTBEAT_SCHEMA, "worker": "cpu@n"}) == "created"
    assert WorkerSample.objects.get().gpu_index is None  # kept for the job count


def test_samples_stand_for_the_time_since_the_previous_heartbeat_and_count_as_gpu_time():
    record = Worker.objects.record
    now = timezone.now()
    beats = [heartbeat(running=[]), heartbeat(running=["s"]), heartbeat(running=["s"])]
    for seq, (beat, at) in enumerate(zip(beats, [0, 15, 30], strict=True), start=1):
        beat |= {"boot": beats[0]["boot"], "seq": seq}
        record(clean_heartbeat(beat, schema=HEARTBEAT_SCHEMA), now=now + timedelta(seconds=at))
    # Silent for longer than WORKER_LOST_AFTER_S (60 s): that stretch is not counted.
    late = heartbeats_after(beats[0], seq=4, running=["s"])
    record(clean_heartbeat(late, schema=HEARTBEAT_SCHEMA), now=now + timedelta(seconds=300))
    assert list(WorkerSample.objects.values_list("interval_s", flat=True)) == [0, 15, 15, 0]
    assert WorkerSample.objects.gpu_time() == {"total": 30.0, "busy": 30.0}


def heartbeats_after(first: dict, *, seq: int, running: list[str]) -> dict:
    return heartbeat(running=running) | {"boot": first["boot"], "seq": seq}


# --- Who runs a job --------------------------------------------------------------------


def test_progress_records_which_worker_runs_the_job_outside_its_progress(lab):
    submission = Submission.objects.create(lab=lab, learner_key=LEARNER, notebook="{}")
    record_progress(str(submission.pk), 1, "running", {"cell": 1, "cells": 2, "worker": "gpu0@n"})
    submission.refresh_from_db()
    assert submission.worker == "gpu0@n" and submission.progress == {"cell": 1, "cells": 2}
    record_progress(str(submission.pk), 1, "grading", {"worker": "not a <name>"})
    submission.refresh_from_db()
    assert submission.worker == "gpu0@n" and submission.stage == "grading"


# --- Loss and re-queue -----------------------------------------------------------------


def test_a_worker_silent_for_longer_than_worker_lost_after_s_is_lost(settings):
    settings.WORKER_LOST_AFTER_S = 60
    record_heartbeat(heartbeat("gpu0@node1"))
    record_heartbeat(heartbeat("gpu1@node1"))
    silence("gpu0@node1", 61)
    silence("gpu1@node1", 59)
    assert list(Worker.objects.lost().values_list("name", flat=True)) == ["gpu0@node1"]
    assert Worker.objects.get(name="gpu1@node1").status() == "alive"
    settings.WORKER_LOST_AFTER_S = 120
    assert not Worker.objects.lost().exists()


def test_the_sweeper_requeues_the_job_of_a_lost_worker_once_without_waiting_for_its_lease(
    running_submission, sent
):
    record_heartbeat(heartbeat(running=[str(running_submission.pk)]))
    silence("gpu0@node1", 61)
    assert sweep_submissions()["retried"] == 1
    assert sweep_submissions()["retried"] == 0
    running_submission.refresh_from_db()
    assert running_submission.status == Status.QUEUED and running_submission.attempt == 2
    assert running_submission.worker == ""  # the next attempt's worker says who it is
    assert sent.call_count == 1 and job_of(sent.call_args)["attempt"] == 2


def test_two_sweepers_that_saw_the_same_lost_job_requeue_it_once(running_submission, sent):
    seen_by_both = Submission.objects.get(pk=running_submission.pk)
    now = timezone.now()
    assert retry_or_give_up(seen_by_both, now=now) == "retried"
    assert retry_or_give_up(seen_by_both, now=now) == ""  # its conditional UPDATE found nothing
    assert Submission.objects.get(pk=running_submission.pk).attempt == 2
    assert sent.call_count == 1


def test_jobs_of_alive_stopped_or_unknown_workers_wait_for_their_lease(running_submission, sent):
    record_heartbeat(heartbeat("gpu0@node1"))
    assert sweep_submissions()["retried"] == 0  # alive
    record_heartbeat(heartbeat("gpu0@node1", stopping=True, seq=99))
    silence("gpu0@node1", 3600)
    assert sweep_submissions()["retried"] == 0  # said it stopped: the lease decides
    Submission.objects.filter(pk=running_submission.pk).update(worker="never-heard-of@x")
    assert sweep_submissions()["retried"] == 0  # no heartbeats at all (an older worker)
    assert Submission.objects.get(pk=running_submission.pk).status == Status.RUNNING


def test_a_lost_workers_job_on_its_last_attempt_ends_in_an_error(running_submission, sent):
    Submission.objects.filter(pk=running_submission.pk).update(attempt=3)
    record_heartbeat(heartbeat())
    silence("gpu0@node1", 61)
    assert sweep_submissions()["gave_up"] == 1
    running_submission.refresh_from_db()
    assert running_submission.status == Status.ERROR
    assert "after 3 attempts" in running_submission.message


def test_the_sweeper_keeps_a_day_of_samples():
    record_heartbeat(heartbeat())
    record_heartbeat(heartbeats_after(heartbeat(), seq=1, running=[]))
    WorkerSample.objects.filter(pk=WorkerSample.objects.first().pk).update(
        at=timezone.now() - timedelta(hours=24, seconds=1)
    )
    sweep_submissions()
    assert WorkerSample.objects.count() == 1


def test_heartbeats_without_a_boot_are_recorded_in_the_order_they_arrive():
    bare = {"schema": HEARTBEAT_SCHEMA, "worker": "cpu@n"}
    assert record_heartbeat(bare) == "created"
    assert record_heartbeat(bare | {"stopping": True}) == "updated"
    assert Worker.objects.get().stopped is True
