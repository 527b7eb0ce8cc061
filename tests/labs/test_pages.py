"""The learner's pages: lab list and page, starter download, upload form, live status."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from labs.models import Submission
from labs.tasks import record_progress, record_report
from runner.schema import CriterionResult
from tests.labs.conftest import LEARNER, make_notebook, report_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_lab_page_shows_the_criteria_per_device_class(client, lab):
    body = client.get("/labs/pilot/").content.decode()
    assert "Graded on CPU workers" in body and "Graded on GPU workers" in body
    assert body.count('<th scope="row">fast</th>') == 1  # only GPU has a speed threshold
    assert 'href="/labs/pilot/starter.ipynb"' in body
    assert 'name="csrfmiddlewaretoken"' in body


def test_a_criterion_graded_nowhere_is_listed_as_shown_only(client, lab):
    lab.criteria = [
        *lab.criteria,
        {
            "name": "int8_speed",
            "metric": "int8_speedup",
            "comparator": ">=",
            "unit": "x",
            "explanation": "Shown beside your result.",
            "hint": "",
            "threshold": {},
        },
    ]
    lab.save()
    body = client.get("/labs/pilot/").content.decode()
    assert "Measured and shown with your result, graded nowhere:" in body
    assert "<strong>int8_speed</strong> (<code>int8_speedup</code>): Shown beside" in body
    assert '<th scope="row">int8_speed</th>' not in body  # in no device class's table


def test_the_phase_page_links_its_labs(client, lab):
    body = client.get("/phases/advanced-optimization/").content.decode()
    assert 'href="/labs/pilot/"' in body
    assert "Labs for this milestone are being built" not in body


def test_the_starter_downloads_as_a_notebook(client, lab):
    response = client.get("/labs/pilot/starter.ipynb")
    assert response["Content-Disposition"] == 'attachment; filename="pilot.ipynb"'
    assert b"NotImplementedError" in response.content


def test_the_form_submits_and_redirects_to_the_status_page(client, lab, sent):
    response = client.post(
        "/labs/pilot/submit/",
        {"notebook": SimpleUploadedFile("mine.ipynb", make_notebook()), "learner": LEARNER},
    )
    submission = Submission.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/submissions/{submission.pk}/"
    assert submission.notebook_name == "mine.ipynb"


def test_a_refused_form_upload_shows_why_on_the_lab_page(client, lab, sent):
    response = client.post(
        "/labs/pilot/submit/", {"notebook": SimpleUploadedFile("x.ipynb", b"{"), "learner": LEARNER}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.content.decode()
    assert Submission.objects.count() == 0


def test_the_status_fragment_polls_until_final_then_stops(client, lab, sent):
    submission = Submission.objects.create(lab=lab, learner_key=LEARNER, notebook="{}")
    record_progress(str(submission.pk), 1, "running", {"cell": 2, "cells": 5})
    fragment = client.get(f"/submissions/{submission.pk}/", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    text = fragment.content.decode()
    assert "Running cell 2 of 5" in text and 'hx-trigger="every 1s"' in text
    assert "<html" not in text

    criterion = CriterionResult(
        name="correct",
        metric="max_abs_error",
        measured=3e-8,
        threshold=1e-6,
        comparator="<=",
        passed=True,
        explanation="Matches.",
        hint="",
        unit="",
        evaluated=True,
    )
    record_report(report_for(submission, criteria=[criterion]))
    final = client.get(f"/submissions/{submission.pk}/", headers={"HX-Request": "true"})
    assert final.status_code == 286 and final["HX-Refresh"] == "true"
    page = client.get(f"/submissions/{submission.pk}/").content.decode()
    assert "✓ passed" in page and "data-verification=" in page
    assert 'data-milestone="advanced-optimization.milestone"' in page


def test_the_executed_notebook_is_embedded_in_a_sandboxed_frame(client, lab):
    submission = Submission.objects.create(lab=lab, learner_key=LEARNER, notebook="{}")
    executed = {"cells": [{"cell_type": "code", "source": "print(1)", "outputs": []}]}
    record_report(
        report_for(submission, status="failed", message="Wrong.", executed_notebook=executed)
    )
    page = client.get(f"/submissions/{submission.pk}/").content.decode()
    assert (
        f'<iframe class="notebook-frame" sandbox src="/submissions/{submission.pk}/notebook.html"'
        in page
    )
    assert "print(1)" not in page  # the notebook's content lives only in the framed document


def test_my_submissions_lists_this_browsers_key_only(client, lab):
    Submission.objects.create(lab=lab, learner_key=LEARNER, notebook="{}")
    Submission.objects.create(lab=lab, learner_key="f" * 32, notebook="{}")
    page = client.get("/my/submissions/")
    assert page.status_code == 200 and 'hx-trigger="load"' in page.content.decode()
    fragment = client.get(
        "/my/submissions/", headers={"HX-Request": "true", "X-Learner-Key": LEARNER}
    ).content.decode()
    assert fragment.count("/submissions/") == 1
    empty = client.get("/my/submissions/", headers={"HX-Request": "true"}).content.decode()
    assert "No submissions from this browser yet." in empty
