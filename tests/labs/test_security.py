"""Web security: the executed notebook is inert, forms need CSRF, staff pages refuse
learners, and unsandboxed grading is loudly marked and refused in production."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from django.contrib.auth.models import User
from django.test import Client

from labs.models import Submission
from labs.notebook_view import notebook_cells
from labs.tasks import record_report
from tests.labs.conftest import LEARNER, make_notebook, report_for
from tests.test_settings import REPO, production_env

pytestmark = pytest.mark.django_db

PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()

HOSTILE_OUTPUTS = [
    {
        "output_type": "display_data",
        "data": {
            "text/html": "<script>alert('html')</script>",
            "text/plain": "<script>alert(1)</script>",
        },
    },
    {"output_type": "display_data", "data": {"text/plain": '<img src=x onerror="alert(2)">'}},
    {
        "output_type": "display_data",
        "data": {
            "image/svg+xml": '<svg onload="alert(3)"></svg>',
            "text/plain": "<svg onload=alert(3)>",
        },
    },
    {"output_type": "display_data", "data": {"application/javascript": "alert(4)"}},
    {
        "output_type": "stream",
        "name": "stdout",
        "text": '<a href="javascript:alert(5)">x</a><div hx-get="/pwned" hx-trigger="load"></div>',
    },
    {
        "output_type": "error",
        "ename": "E",
        "evalue": "<b>x</b>",
        "traceback": ["\x1b[31m<script>alert(6)</script>\x1b[0m"],
    },
    {"output_type": "display_data", "data": {"image/png": PNG, "text/plain": "fig"}},
    {
        "output_type": "display_data",
        "data": {"image/png": "not base64 <script>", "text/plain": "t"},
    },
]


def hostile_submission(lab) -> Submission:
    submission = Submission.objects.create(lab=lab, learner_key=LEARNER, notebook="{}")
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": "<script>alert('md')</script>"},
            {"cell_type": "code", "source": "x", "execution_count": 1, "outputs": HOSTILE_OUTPUTS},
        ]
    }
    record_report(
        report_for(submission, status="failed", message="Wrong.", executed_notebook=notebook)
    )
    return submission


def test_the_notebook_document_is_served_with_a_sandboxing_csp(client, lab):
    submission = hostile_submission(lab)
    response = client.get(f"/submissions/{submission.pk}/notebook.html")
    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    assert csp.startswith("sandbox;") and "default-src 'none'" in csp
    assert "script-src" not in csp
    assert response["X-Frame-Options"] == "SAMEORIGIN"


def test_no_output_is_ever_inserted_as_markup(client, lab):
    submission = hostile_submission(lab)
    body = client.get(f"/submissions/{submission.pk}/notebook.html").content.decode()
    for dangerous in (
        "<script",
        "onerror=",
        "<svg",
        "javascript:alert",
        "hx-get=",
        "alert(4)",
        "<b>x</b>",
    ):
        # Present only escaped (as text), never as live markup.
        assert dangerous not in body.replace("&lt;", "<").split("<pre")[0]
    assert "<script>" not in body and "<svg" not in body and ' hx-get="' not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in body
    assert "<b>x</b>" not in body and "alert(4)" not in body
    assert "[application/javascript output not shown]" in body


def test_only_well_formed_raster_images_become_images():
    cells = notebook_cells(
        {"cells": [{"cell_type": "code", "source": "", "outputs": HOSTILE_OUTPUTS}]}
    )
    kinds = [o["kind"] for o in cells[0]["outputs"]]
    images = [o for o in cells[0]["outputs"] if o["kind"] == "image"]
    assert len(images) == 1 and images[0]["src"].startswith("data:image/png;base64,")
    assert kinds.count("image") == 1  # the SVG and the malformed PNG fell back to text


def test_an_unknown_or_pending_notebook_is_404(client, lab):
    submission = Submission.objects.create(lab=lab, learner_key=LEARNER, notebook="{}")
    assert client.get(f"/submissions/{submission.pk}/notebook.html").status_code == 404


def test_the_upload_form_needs_its_csrf_token(lab):
    strict = Client(enforce_csrf_checks=True)
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = strict.post(
        "/labs/pilot/submit/",
        {"notebook": SimpleUploadedFile("x.ipynb", make_notebook()), "learner": LEARNER},
    )
    assert response.status_code == 403
    assert Submission.objects.count() == 0


def test_staff_pages_refuse_anonymous_visitors_and_learners(client, lab):
    response = client.get("/admin/labs/submission/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    learner = User.objects.create_user("learner", password="pw")
    client.force_login(learner)
    response = client.get("/admin/labs/submission/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_every_page_warns_when_grading_is_unsandboxed(client, settings, curriculum):
    assert "without a sandbox" not in client.get("/").content.decode()
    settings.RUNNER_ALLOW_UNSANDBOXED = True
    for path in ("/", "/projects/", "/labs/"):
        assert "runs learner code without a sandbox" in client.get(path).content.decode()


def test_the_deploy_check_refuses_unsandboxed_grading(tmp_path):
    env = production_env(tmp_path) | {"RUNNER_ALLOW_UNSANDBOXED": "1"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings"} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "labs.E001" in result.stderr
