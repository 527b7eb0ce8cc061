"""A logged-in instructor opens a hostile submission: nothing in the executed notebook runs
(no script, event handler, SVG onload, javascript: link, JS output or htmx attribute)."""

from __future__ import annotations

from django.contrib.auth.models import User

from curriculum.models import Milestone
from labs.models import Lab
from tests.labs.test_security import hostile_submission


def test_hostile_outputs_are_inert_for_a_logged_in_instructor(page, site):
    User.objects.create_superuser("teacher", "t@example.org", "a-long-password-1")
    lab = Lab.objects.create(
        slug="pilot",
        title="Pilot",
        summary="s",
        device_classes=["cpu"],
        criteria=[],
        limits={"max_notebook_bytes": 1000, "max_cells": 5},
        starter_filename="p.ipynb",
        starter_notebook="{}",
        milestone=Milestone.objects.first(),
    )
    submission = hostile_submission(lab)

    dialogs, requests = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))

    page.goto(f"{site}/admin/login/")
    page.fill("#id_username", "teacher")
    page.fill("#id_password", "a-long-password-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{site}/admin/")

    page.goto(f"{site}/submissions/{submission.pk}/")
    frame = page.frame_locator("iframe.notebook-frame")
    frame.locator("text=<script>alert(1)</script>").wait_for()
    # A javascript: link or an SVG would be live elements: there are none, only text.
    assert frame.locator("a").count() == 0 and frame.locator("svg").count() == 0
    assert frame.locator("img").count() == 1  # only the well-formed PNG
    page.wait_for_timeout(1000)  # give any payload time to fire

    page.goto(f"{site}/submissions/{submission.pk}/notebook.html")
    page.wait_for_timeout(500)
    assert dialogs == []
    assert not [url for url in requests if "/pwned" in url]
    # The document has an opaque origin: it cannot read the instructor's pages or cookies.
    assert page.evaluate(
        "() => { try { return document.cookie } catch (e) { return 'blocked' } }"
    ) in ("", "blocked")
