"""Files a grader hands back for download (a profiler trace): kept as rows beside the
submission, never inside its stored report, replaced by a regrade's report, and served as an
attachment under the submission's own URL only."""

from __future__ import annotations

import base64
import gzip

import pytest
from django.urls import reverse
from django.utils import timezone

from labs.artifacts import MAX_BYTES, SubmissionArtifact
from labs.models import Status, Submission
from labs.tasks import record_report
from tests.labs.conftest import LEARNER, OTHER_LEARNER, make_notebook, report_for

pytestmark = pytest.mark.django_db

TRACE = gzip.compress(b'{"traceEvents": [{"name": "aten::linear", "ph": "X"}]}')


def artifact(name="trace.json.gz", data=TRACE, content_type="application/gzip", **extra):
    return {
        "name": name,
        "content_type": content_type,
        "data_base64": base64.b64encode(data).decode(),
        **extra,
    }


def submission_of(lab, learner=LEARNER):
    return Submission.objects.create(
        lab=lab,
        learner_key=learner,
        notebook=make_notebook().decode(),
        dispatched_at=timezone.now(),
    )


@pytest.fixture
def submission(lab):
    return submission_of(lab)


def download(client, submission, name="trace.json.gz"):
    return client.get(reverse("submission-artifact", args=[submission.pk, name]))


def test_a_reports_files_are_stored_beside_the_submission_not_in_its_report(submission):
    report = report_for(submission, artifacts=[artifact()])
    assert record_report(report) is True
    submission.refresh_from_db()
    assert "artifacts" not in submission.report
    stored = SubmissionArtifact.objects.get(submission=submission)
    assert (stored.name, stored.content_type, bytes(stored.data)) == (
        "trace.json.gz",
        "application/gzip",
        TRACE,
    )
    assert stored.size == len(TRACE)
    assert report["artifacts"]  # the message as received is left as it was


def test_the_owner_downloads_the_trace_as_an_attachment(client, submission):
    record_report(report_for(submission, artifacts=[artifact()]))
    response = download(client, submission)
    assert response.status_code == 200
    assert response.content == TRACE
    assert response["Content-Type"] == "application/gzip"
    assert response["Content-Disposition"] == (
        f'attachment; filename="pilot-{str(submission.pk)[:8]}-trace.json.gz"'
    )
    assert response["X-Content-Type-Options"] == "nosniff"


def test_the_result_page_links_the_download(client, submission):
    record_report(report_for(submission, artifacts=[artifact()]))
    page = client.get(reverse("submission", args=[submission.pk])).content.decode()
    assert reverse("submission-artifact", args=[submission.pk, "trace.json.gz"]) in page
    assert "Perfetto" in page


def test_another_submission_cannot_reach_the_file(client, lab, submission):
    record_report(report_for(submission, artifacts=[artifact()]))
    others = submission_of(lab, learner=OTHER_LEARNER)
    record_report(report_for(others))
    # Another learner's submission id does not open this one's file.
    assert download(client, others).status_code == 404
    # Nor does an id that is no submission at all.
    missing = Submission(pk="00000000-0000-4000-8000-000000000000", lab=lab)
    assert download(client, missing).status_code == 404


def test_a_missing_file_is_404(client, submission):
    record_report(report_for(submission))
    assert download(client, submission).status_code == 404
    assert download(client, submission, name="other.json.gz").status_code == 404


def test_only_get_is_allowed(client, submission):
    record_report(report_for(submission, artifacts=[artifact()]))
    url = reverse("submission-artifact", args=[submission.pk, "trace.json.gz"])
    assert client.post(url).status_code == 405


def test_a_duplicate_or_stale_report_leaves_the_files_alone(submission):
    record_report(report_for(submission, artifacts=[artifact()]))
    late = report_for(submission, status="failed", message="x", artifacts=[artifact(data=b"x")])
    assert record_report(late) is False
    assert bytes(SubmissionArtifact.objects.get(submission=submission).data) == TRACE


def test_a_regrades_report_replaces_the_files_of_the_one_before(submission):
    record_report(report_for(submission, artifacts=[artifact(), artifact(name="other.json.gz")]))
    Submission.objects.filter(pk=submission.pk).update(status=Status.QUEUED, attempt=2)
    newer = gzip.compress(b'{"traceEvents": []}')
    record_report(report_for(submission, attempt=2, artifacts=[artifact(data=newer)]))
    stored = SubmissionArtifact.objects.filter(submission=submission)
    assert [(a.name, bytes(a.data)) for a in stored] == [("trace.json.gz", newer)]


@pytest.mark.parametrize(
    "bad",
    [
        artifact(name="../etc/passwd"),
        artifact(name=""),
        artifact(content_type="text/html"),
        {"name": "trace.json.gz", "content_type": "application/gzip", "data_base64": "not base64!"},
        artifact(data=b""),
        artifact(data=b"\0" * (MAX_BYTES + 1)),
        "a string, not a file",
    ],
)
def test_a_file_that_is_not_what_a_grader_sends_is_dropped_and_the_report_kept(submission, bad):
    report = report_for(submission)
    report["artifacts"] = [bad, artifact()]  # as the message arrives, not as new_report builds
    assert record_report(report) is True
    assert [a.name for a in SubmissionArtifact.objects.filter(submission=submission)] == [
        "trace.json.gz"
    ]
    submission.refresh_from_db()
    assert submission.status == Status.PASSED


def test_a_report_from_a_worker_without_artifacts_is_still_recorded(submission):
    report = report_for(submission)
    del report["artifacts"]
    assert record_report(report) is True
    assert not SubmissionArtifact.objects.filter(submission=submission).exists()
