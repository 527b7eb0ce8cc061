"""JSON API v1 (documented in docs/api/openapi.yaml; keep it stable).

No account: a learner is identified by the learner key their browser keeps. The API has no
cookie-based authentication, so it is exempt from CSRF; every error is JSON with a code and
a message written for the learner.
"""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from labs.models import Lab, Submission
from labs.services import LEARNER_KEY, SubmissionRefused, max_upload_bytes, submit_lab
from labs.verification import make_token, read_token


def error(status: int, code: str, message: str, *, retry_after: int | None = None):
    response = JsonResponse({"error": code, "message": message}, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def submit_upload(request: HttpRequest, lab: Lab, upload) -> Submission:
    """Submit the uploaded file with the form fields the page and the API share."""
    return submit_lab(
        lab=lab,
        learner_key=request.POST.get("learner", ""),
        # Read one byte past the cap, so an oversized file is refused without reading it all.
        notebook=upload.read(max_upload_bytes(lab) + 1),
        filename=upload.name or "",
        client_ip=client_ip(request),
        device_class=request.POST.get("device_class") or None,
    )


def submission_json(request: HttpRequest, submission: Submission) -> dict:
    report = submission.report or {}
    url = reverse("submission", args=[submission.pk])
    return {
        "id": str(submission.pk),
        "lab": submission.lab.slug,
        "status": submission.status,
        "stage": submission.stage,
        "progress": submission.progress,
        "queue_position": submission.queue_position(),
        "message": submission.message,
        "criteria": [
            {
                key: c.get(key)
                for key in (
                    "name",
                    "metric",
                    "measured",
                    "threshold",
                    "comparator",
                    "passed",
                    "explanation",
                    "hint",
                    "unit",
                    "evaluated",
                )
            }
            for c in submission.criteria
        ],
        "metrics": report.get("metrics") or {},
        "environment": report.get("environment") or {},
        "device_class": submission.device_class,
        "created": submission.created.isoformat(),
        "started": submission.started.isoformat() if submission.started else None,
        "finished": submission.finished.isoformat() if submission.finished else None,
        "url": request.build_absolute_uri(url),
        "verification": make_token(submission),
    }


def upload_too_large(request: HttpRequest, lab: Lab) -> bool:
    """Check the declared size before Django reads the body."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return False
    # Multipart framing adds a little; the exact check on the file follows in submit_lab.
    return length > max_upload_bytes(lab) + 64 * 1024


@csrf_exempt
@require_POST
def create_submission(request: HttpRequest, slug: str):
    lab = Lab.objects.filter(slug=slug, active=True).first()
    if lab is None:
        return error(404, "unknown_lab", f"There is no lab called {slug!r}.")
    if upload_too_large(request, lab):
        return error(
            413, "too_large", f"The upload is over the {max_upload_bytes(lab):,}-byte limit."
        )
    upload = request.FILES.get("notebook")
    if upload is None:
        return error(400, "bad_request", "Send the notebook as a multipart file field 'notebook'.")
    try:
        submission = submit_upload(request, lab, upload)
    except SubmissionRefused as refused:
        return error(refused.status, refused.code, refused.message, retry_after=refused.retry_after)
    # Sending the job may have failed (broker down): the message then says it waits.
    submission.refresh_from_db(fields=["status", "message"])
    body = {
        "id": str(submission.pk),
        "status": submission.status,
        "message": submission.message,
        "url": request.build_absolute_uri(reverse("submission", args=[submission.pk])),
        "status_url": request.build_absolute_uri(reverse("api-submission", args=[submission.pk])),
    }
    return JsonResponse(body, status=201)


@require_GET
def submission_detail(request: HttpRequest, pk):
    submission = Submission.objects.select_related("lab__milestone").filter(pk=pk).first()
    if submission is None:
        return error(404, "unknown_submission", f"There is no submission {pk}.")
    return JsonResponse(submission_json(request, submission))


@require_GET
def learner_submissions(request: HttpRequest):
    """A learner's own submissions; the key travels in a header, never in the URL."""
    key = request.headers.get("X-Learner-Key", "").strip().lower()
    if not LEARNER_KEY.match(key):
        return error(400, "bad_learner", "Send your learner key in the X-Learner-Key header.")
    rows = Submission.objects.for_learner(key).select_related("lab")[:100]
    return JsonResponse(
        {
            "submissions": [
                {
                    "id": str(s.pk),
                    "lab": s.lab.slug,
                    "status": s.status,
                    "created": s.created.isoformat(),
                    "url": request.build_absolute_uri(reverse("submission", args=[s.pk])),
                }
                for s in rows
            ]
        }
    )


@csrf_exempt
@require_POST
def check_verifications(request: HttpRequest):
    """Which of these milestone tokens are genuine: {"tokens": {slug: token}} -> {"valid": [..]}"""
    try:
        tokens = json.loads(request.body or b"{}").get("tokens", {})
        assert isinstance(tokens, dict)
    except (ValueError, AttributeError, AssertionError):
        return error(400, "bad_request", 'Send JSON like {"tokens": {"milestone-slug": "token"}}.')
    valid = []
    for slug, token in list(tokens.items())[:50]:
        payload = read_token(token) if isinstance(token, str) else None
        if payload and payload["m"] == slug:
            valid.append(slug)
    return JsonResponse({"valid": valid})
