from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from labs.api import submit_upload
from labs.models import Lab, Submission
from labs.notebook_view import CSP, render_notebook
from labs.rubric import released_rubric
from labs.services import LEARNER_KEY, SubmissionRefused, max_upload_bytes
from labs.verification import make_token


def lab_list(request: HttpRequest) -> HttpResponse:
    labs = Lab.objects.filter(active=True).select_related("milestone__phase")
    return render(request, "labs/lab_list.html", {"labs": labs})


def _lab_page(request: HttpRequest, lab: Lab, *, error: str = "", status: int = 200):
    ctx = {
        "lab": lab,
        "criteria_by_class": [(dc, lab.criteria_for(dc)) for dc in lab.device_classes],
        "max_bytes": max_upload_bytes(lab),
        "error": error,
    }
    return render(request, "labs/lab.html", ctx, status=status)


def lab_detail(request: HttpRequest, slug: str) -> HttpResponse:
    lab = get_object_or_404(Lab.objects.select_related("milestone__phase"), slug=slug, active=True)
    return _lab_page(request, lab)


@require_GET
def starter_download(request: HttpRequest, slug: str) -> HttpResponse:
    lab = get_object_or_404(Lab, slug=slug, active=True)
    response = HttpResponse(lab.starter_notebook, content_type="application/x-ipynb+json")
    response["Content-Disposition"] = f'attachment; filename="{lab.starter_filename}"'
    return response


@require_POST
def submit(request: HttpRequest, slug: str) -> HttpResponse:
    lab = get_object_or_404(Lab.objects.select_related("milestone__phase"), slug=slug, active=True)
    upload = request.FILES.get("notebook")
    if upload is None:
        return _lab_page(request, lab, error="Choose a notebook file to submit.", status=400)
    try:
        submission = submit_upload(request, lab, upload)
    except SubmissionRefused as refused:
        return _lab_page(request, lab, error=refused.message, status=refused.status)
    return redirect("submission", pk=submission.pk)


def submission_detail(request: HttpRequest, pk) -> HttpResponse:
    submission = get_object_or_404(
        Submission.objects.select_related("lab__milestone__phase", "override", "feedback"), pk=pk
    )
    report = submission.report or {}
    ctx = {
        "submission": submission,
        "lab": submission.lab,
        "report": report,
        "has_notebook": isinstance(report.get("executed_notebook"), dict),
        "verification": make_token(submission),
        # Comments and overrides reach the learner only once released (labs/feedback.py).
        "feedback": submission.released_feedback,
        # Rubric points and comments too (labs/rubric.py).
        **released_rubric(submission),
        "environment_json": json.dumps(report.get("environment") or {}, indent=2),
        # Files the grader handed back (labs/artifacts.py); listed without their bytes.
        "artifacts": submission.artifacts.defer("data") if submission.is_final else [],
    }
    if request.htmx:
        response = render(request, "labs/submission.html#status", ctx)
        if submission.is_final:
            # 286 stops htmx polling; the client then reloads for the full result.
            final = HttpResponseStopPolling(response.content)
            final["HX-Refresh"] = "true"
            return final
        return response
    return render(request, "labs/submission.html", ctx)


@require_GET
@xframe_options_sameorigin
def submission_notebook(request: HttpRequest, pk) -> HttpResponse:
    """The executed notebook, inert: its own document, CSP-sandboxed, shown in an iframe."""
    submission = get_object_or_404(Submission.objects.select_related("lab"), pk=pk)
    executed = (submission.report or {}).get("executed_notebook")
    if not isinstance(executed, dict):
        return HttpResponse(
            "No executed notebook for this submission.", status=404, content_type="text/plain"
        )
    response = HttpResponse(render_notebook(executed, title=f"{submission.lab.title}: notebook"))
    response["Content-Security-Policy"] = CSP
    response["Cross-Origin-Resource-Policy"] = "same-origin"
    return response


def my_submissions(request: HttpRequest) -> HttpResponse:
    if not request.htmx:
        return render(request, "labs/my_submissions.html")
    key = request.headers.get("X-Learner-Key", "").strip().lower()
    rows = []
    if LEARNER_KEY.match(key):
        rows = Submission.objects.for_learner(key).select_related("lab")[:100]
    return render(request, "labs/my_submissions.html#list", {"submissions": rows})
