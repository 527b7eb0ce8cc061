"""The JSON API: submit, read a submission, list a learner's submissions, and every way a
submission can be refused (clear JSON message, right status, nothing stored or queued)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone

from labs.models import Status, Submission
from tests.labs.conftest import LEARNER, OTHER_LEARNER, decode, job_of, make_notebook

# Real commits: submissions are dispatched from transaction.on_commit.
pytestmark = pytest.mark.django_db(transaction=True)


def post(client, content: bytes, *, lab="pilot", learner=LEARNER, name="pilot.ipynb", **extra):
    data = {"notebook": SimpleUploadedFile(name, content), "learner": learner} | extra
    return client.post(f"/api/v1/labs/{lab}/submissions", data)


def test_it_accepts_a_notebook_and_queues_a_job(client, lab, sent):
    response = post(client, make_notebook())
    assert response.status_code == 201
    body = decode(response)
    assert set(body) == {"id", "status", "message", "url", "status_url"}
    assert body["status"] == "queued" and body["message"] == ""
    assert body["status_url"].endswith(f"/api/v1/submissions/{body['id']}")
    submission = Submission.objects.get(pk=body["id"])
    assert submission.dispatched_at is not None
    (call,) = sent.call_args_list
    assert call.args[0] == "runner.grade" and call.kwargs["queue"] == "cpu"
    job = job_of(call)
    assert job["schema"] == "inference-roadmap/job@1"
    assert job["seed"] == submission.seed and len(job["seed"]) == 32
    assert job["lab"] == "pilot" and job["attempt"] == 1
    assert job["notebook"]["cells"][1]["metadata"]["tags"] == ["solution"]
    assert job["limits"] == {
        "cell_timeout_s": 30,
        "total_timeout_s": 120,
        "max_output_bytes": 100_000,
    }


def test_the_seed_never_appears_in_the_api(client, lab, sent):
    body = decode(post(client, make_notebook()))
    submission = Submission.objects.get(pk=body["id"])
    detail = client.get(f"/api/v1/submissions/{submission.pk}").content.decode()
    assert submission.seed not in detail


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\x00\x01\x02binary", "binary"),
        (b"{not json", "not valid JSON"),
        (json.dumps({"hello": "world"}).encode(), "not a Jupyter notebook"),
        (json.dumps({"nbformat": 3, "cells": [], "metadata": {}}).encode(), "nbformat 3"),
        (make_notebook().replace(b'"solution"', b'"scratch"'), "No code cell is tagged"),
        (make_notebook(extra_cells=25), "the limit is 20"),
        (make_notebook().replace(b'"language": "python"', b'"language": "R"'), "labs run Python"),
    ],
)
def test_a_bad_notebook_is_refused_with_a_reason_and_nothing_is_queued(
    client, lab, sent, content, words
):
    response = post(client, content)
    assert response.status_code == 400
    body = decode(response)
    assert body["error"] == "bad_notebook" and words in body["message"]
    assert Submission.objects.count() == 0 and not sent.called


def test_an_unknown_lab_is_404(client, lab, sent):
    response = post(client, make_notebook(), lab="no-such-lab")
    assert response.status_code == 404 and decode(response)["error"] == "unknown_lab"


def test_a_notebook_over_the_size_cap_is_413(client, lab, sent):
    big = make_notebook("# " + "x" * 250_000)
    response = post(client, big)
    assert response.status_code == 413 and "limit" in decode(response)["message"]
    assert Submission.objects.count() == 0


def test_a_missing_or_malformed_learner_key_is_refused(client, lab, sent):
    for key in ("", "not-hex", "ABC"):
        response = post(client, make_notebook(), learner=key)
        assert response.status_code == 400 and decode(response)["error"] == "bad_learner"
    assert not sent.called


def test_a_request_without_a_file_is_refused(client, lab, sent):
    response = client.post("/api/v1/labs/pilot/submissions", {"learner": LEARNER})
    assert response.status_code == 400 and "multipart file field" in decode(response)["message"]


def test_get_is_not_allowed_on_the_submit_url(client, lab):
    assert client.get("/api/v1/labs/pilot/submissions").status_code == 405


def test_a_device_class_the_lab_lacks_is_refused(client, lab, sent):
    lab.device_classes = ["cpu"]
    lab.save()
    response = post(client, make_notebook(), device_class="gpu")
    assert response.status_code == 400 and decode(response)["error"] == "bad_device_class"


@override_settings(SUBMISSIONS_ACTIVE_PER_LEARNER=2)
def test_too_many_active_submissions_are_429_with_retry_after(client, lab, sent):
    assert post(client, make_notebook()).status_code == 201
    assert post(client, make_notebook()).status_code == 201
    response = post(client, make_notebook())
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert Submission.objects.count() == 2
    # Another learner is not held back by this one.
    assert post(client, make_notebook(), learner=OTHER_LEARNER).status_code == 201


@override_settings(SUBMISSIONS_PER_LEARNER_PER_HOUR=3)
def test_the_hourly_cap_says_when_to_come_back(client, lab, sent):
    for _ in range(3):
        assert post(client, make_notebook()).status_code == 201
    Submission.objects.update(status=Status.FAILED)
    response = post(client, make_notebook())
    assert response.status_code == 429
    assert 3500 < int(response["Retry-After"]) <= 3601


@override_settings(SUBMISSIONS_PER_IP_PER_HOUR=2, SUBMISSIONS_ACTIVE_PER_LEARNER=10)
def test_submissions_are_capped_per_ip_too(client, lab, sent):
    assert post(client, make_notebook()).status_code == 201
    assert post(client, make_notebook(), learner=OTHER_LEARNER).status_code == 201
    response = post(client, make_notebook(), learner="a" * 32)
    assert response.status_code == 429 and "network" in decode(response)["message"]


def test_when_the_broker_is_down_the_submission_waits_and_is_sent_later(client, lab, sent):
    sent.side_effect = ConnectionRefusedError("broker down")
    response = post(client, make_notebook())
    assert response.status_code == 201
    # The answer itself says so, for a terminal that shows only this response.
    assert decode(response)["status"] == "queued"
    assert "sent automatically" in decode(response)["message"]
    submission = Submission.objects.get()
    assert submission.status == Status.QUEUED and submission.dispatched_at is None
    assert "unreachable" in decode(client.get(f"/api/v1/submissions/{submission.pk}"))["message"]

    from labs.tasks import sweep_submissions

    sent.side_effect = None
    assert sweep_submissions()["sent"] == 1
    submission.refresh_from_db()
    assert submission.dispatched_at is not None and submission.message == ""


def test_a_submission_reads_back_as_the_documented_json(client, lab, sent):
    body = decode(post(client, make_notebook()))
    detail = decode(client.get(f"/api/v1/submissions/{body['id']}"))
    for key in (
        "id",
        "lab",
        "status",
        "message",
        "criteria",
        "metrics",
        "environment",
        "created",
        "started",
        "finished",
    ):
        assert key in detail
    assert detail["lab"] == "pilot" and detail["status"] == "queued"
    assert detail["queue_position"] == 1


def test_an_unknown_submission_is_404_json(client, lab):
    response = client.get("/api/v1/submissions/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and decode(response)["error"] == "unknown_submission"


def test_a_learner_lists_only_their_own_submissions(client, lab, sent):
    mine = decode(post(client, make_notebook()))["id"]
    post(client, make_notebook(), learner=OTHER_LEARNER)
    listed = decode(client.get("/api/v1/submissions", headers={"X-Learner-Key": LEARNER}))
    assert [s["id"] for s in listed["submissions"]] == [mine]
    assert client.get("/api/v1/submissions").status_code == 400


def test_queue_position_counts_earlier_submissions_on_the_same_workers(client, lab, sent):
    ids = [decode(post(client, make_notebook(), learner=k))["id"] for k in ("a" * 32, "b" * 32)]
    Submission.objects.filter(pk=ids[0]).update(created=timezone.now() - timedelta(seconds=5))
    assert decode(client.get(f"/api/v1/submissions/{ids[1]}"))["queue_position"] == 2
