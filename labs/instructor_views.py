"""Instructor pages: cohorts and their members, the gradebook and its CSV exports, the
analytics charts, the submission review, overrides, regrades, and comments and their
release to learners.

Every page needs a staff account that teaches the cohort: an anonymous visitor is sent to
the login page, a signed-in account without staff status gets 403, and a staff user who does
not teach the cohort gets 404 (whether it exists is not theirs to know). A submission is
reached only through a cohort its learner is a current member of.
"""

from __future__ import annotations

import json
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from labs import export, services
from labs.analytics import build_analytics
from labs.forms import REASON_MAX, AddInstructorForm, CohortForm, FeedbackForm, OverrideForm
from labs.gradebook import SORTS, STATUS_FILTERS, build_gradebook
from labs.models import Cohort, Feedback, Lab, Submission
from labs.regrades import regrade_history
from labs.services import GRADER_VERDICT, OverrideRefused, RegradeRefused, override_grade

POLL_SECONDS = 5
BATCHES_SHOWN = 5


def instructor_required(view):
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            login = redirect_to_login(request.get_full_path(), reverse("instructor-login"))
            if request.htmx:
                # A poll after the session expired: load the login page, not swap it in.
                return HttpResponseClientRedirect(login.url)
            return login
        if not request.user.is_staff:
            raise PermissionDenied("Instructor pages need a staff account.")
        return view(request, *args, **kwargs)

    return wrapper


def _cohort(request: HttpRequest, pk: int) -> Cohort:
    return get_object_or_404(Cohort.objects.taught_by(request.user), pk=pk)


@instructor_required
def home(request: HttpRequest) -> HttpResponse:
    form = CohortForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        cohort = form.save()
        cohort.instructors.add(request.user)
        messages.success(request, f"Created {cohort.name}. Its join code is {cohort.join_code}.")
        return redirect("instructor-cohort", pk=cohort.pk)
    cohorts = Cohort.objects.taught_by(request.user).annotate(
        member_count=Count("memberships", filter=Q(memberships__left__isnull=True))
    )
    ctx = {"cohorts": cohorts, "form": form}
    return render(request, "labs/instructor/home.html", ctx, status=400 if form.errors else 200)


def _regrade_batches(cohort: Cohort) -> tuple[list, bool]:
    """The latest regrades of whole labs, each with how many of its submissions finished."""
    batches = list(cohort.regrades.select_related("lab", "by").with_progress()[:BATCHES_SHOWN])
    return batches, any(batch.running for batch in batches)


def _cohort_page(request: HttpRequest, cohort: Cohort, *, add_form=None, status: int = 200):
    join_path = f"{reverse('cohort-join')}?code={cohort.join_code}"
    batches, regrading = _regrade_batches(cohort)
    ctx = {
        "cohort": cohort,
        "members": cohort.members(),
        "instructors": cohort.instructors.order_by("username"),
        "add_form": add_form or AddInstructorForm(),
        "join_url": request.build_absolute_uri(join_path),
        "labs": Lab.objects.filter(active=True),
        "batches": batches,
        "regrading": regrading,
        "poll_seconds": POLL_SECONDS,
    }
    if request.htmx:
        response = render(request, "labs/instructor/cohort.html#regrades", ctx)
        return response if regrading else HttpResponseStopPolling(response.content)
    return render(request, "labs/instructor/cohort.html", ctx, status=status)


@instructor_required
def cohort_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _cohort_page(request, _cohort(request, pk))


@instructor_required
@require_POST
def member_remove(request: HttpRequest, pk: int, member: int) -> HttpResponse:
    cohort = _cohort(request, pk)
    membership = get_object_or_404(cohort.memberships.current(), pk=member)
    membership.remove(by=request.user)
    messages.success(
        request,
        f"Removed {membership.display_name} ({membership.learner_id}). They no longer appear "
        "in the gradebook. Removal is not a ban: to keep them out, give the cohort a new code.",
    )
    return redirect("instructor-cohort", pk=cohort.pk)


@instructor_required
@require_POST
def new_join_code(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = _cohort(request, pk)
    code = cohort.new_join_code()
    messages.success(request, f"The join code is now {code}; the old one no longer works.")
    return redirect("instructor-cohort", pk=cohort.pk)


@instructor_required
@require_POST
def instructor_add(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = _cohort(request, pk)
    form = AddInstructorForm(request.POST)
    if not form.is_valid():
        return _cohort_page(request, cohort, add_form=form, status=400)
    cohort.instructors.add(form.user)
    messages.success(request, f"{form.user.get_username()} now teaches {cohort.name}.")
    return redirect("instructor-cohort", pk=cohort.pk)


# --- Gradebook -------------------------------------------------------------------------------


@instructor_required
def gradebook(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = _cohort(request, pk)
    filters = {key: request.GET.get(key, "") for key in ("lab", "status", "sort")}
    book = build_gradebook(cohort, **filters)
    ctx = {
        "cohort": cohort,
        "book": book,
        "filters": filters,
        "all_labs": Lab.objects.filter(active=True),
        "status_filters": STATUS_FILTERS,
        "sorts": SORTS,
        "poll_seconds": POLL_SECONDS,
    }
    if request.htmx:
        response = render(request, "labs/instructor/gradebook.html#table", ctx)
        if not book.active:
            return HttpResponseStopPolling(response.content)
        return response
    return render(request, "labs/instructor/gradebook.html", ctx)


@instructor_required
def analytics(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = _cohort(request, pk)
    ctx = {"cohort": cohort, "analytics": build_analytics(cohort, now=timezone.now())}
    return render(request, "labs/instructor/analytics.html", ctx)


def _csv(body: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _export_name(cohort: Cohort, what: str) -> str:
    today = timezone.now().date().isoformat()
    return f"{slugify(cohort.name) or 'cohort'}-{what}-{today}.csv"


@instructor_required
def gradebook_csv(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = _cohort(request, pk)
    return _csv(export.gradebook_csv(build_gradebook(cohort)), _export_name(cohort, "gradebook"))


@instructor_required
def lab_csv(request: HttpRequest, pk: int, slug: str) -> HttpResponse:
    cohort = _cohort(request, pk)
    lab = get_object_or_404(Lab, slug=slug)
    base_url = request.build_absolute_uri("/").rstrip("/")
    body = export.lab_detail_csv(cohort, lab, base_url=base_url)
    return _csv(body, _export_name(cohort, lab.slug))


# --- Submission review -----------------------------------------------------------------------


def _reviewable(cohort: Cohort, pk) -> Submission:
    queryset = cohort.submissions().select_related("lab", "override__by")
    return get_object_or_404(queryset, pk=pk)


def _telemetry(metrics: dict) -> dict[str, Any] | None:
    """GPU telemetry summary: per field min / median / max, and what throttled the clocks."""
    telemetry = metrics.get("telemetry")
    if not isinstance(telemetry, dict):
        return None
    fields = [
        (name, value)
        for name, value in telemetry.items()
        if isinstance(value, dict) and {"min", "median", "max"} <= set(value)
    ]
    return telemetry | {"fields": fields}


def _review_page(
    request, cohort: Cohort, submission: Submission, *, form=None, feedback_form=None, status=200
):
    member = cohort.memberships.current().get(learner_key=submission.learner_key)
    attempts = list(submission.attempts().light())
    history = [
        (attempt, attempt.changes_since(previous))
        for previous, attempt in zip([None, *attempts], attempts, strict=False)
    ]
    report = submission.report or {}
    metrics = submission.metrics
    ctx = {
        "cohort": cohort,
        "member": member,
        "submission": submission,
        "lab": submission.lab,
        "report": report,
        "timing": submission.timing,
        "roofline": metrics.get("roofline") if isinstance(metrics.get("roofline"), dict) else None,
        "telemetry": _telemetry(metrics),
        "metrics_json": json.dumps(metrics, indent=2, sort_keys=True, default=str),
        "environment_json": json.dumps(report.get("environment") or {}, indent=2),
        "has_notebook": isinstance(report.get("executed_notebook"), dict),
        "history": list(reversed(history)),  # newest first
        "audit": submission.audit.all(),
        "form": form or OverrideForm(submission=submission),
        "grader_verdict": GRADER_VERDICT,
        "regrades": regrade_history(submission),
        "feedback": Feedback.objects.filter(submission=submission).first(),
        "feedback_form": feedback_form or FeedbackForm(submission=submission),
    }
    return render(request, "labs/instructor/review.html", ctx, status=status)


@instructor_required
def review(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = _cohort(request, pk)
    return _review_page(request, cohort, _reviewable(cohort, submission))


@instructor_required
@require_POST
def override(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = _cohort(request, pk)
    target = _reviewable(cohort, submission)
    form = OverrideForm(request.POST, submission=target)
    if form.is_valid():
        try:
            entry = override_grade(
                submission=target,
                status=form.cleaned_data["status"],
                reason=form.cleaned_data["reason"],
                by=request.user,
                cohort=cohort,
            )
        except OverrideRefused as refused:
            form.add_error(None, refused.message)
        else:
            messages.success(
                request, f"Status changed from {entry.before} to {entry.after}; recorded below."
            )
            url = reverse("instructor-review", args=[cohort.pk, target.pk])
            return redirect(f"{url}#audit")
    return _review_page(request, cohort, target, form=form, status=400)


# --- Regrades --------------------------------------------------------------------------------


def _reason(request: HttpRequest) -> str:
    return request.POST.get("reason", "").strip()[:REASON_MAX]


@instructor_required
@require_POST
def regrade(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = _cohort(request, pk)
    target = _reviewable(cohort, submission)
    try:
        services.regrade_submission(
            submission=target, by=request.user, cohort=cohort, reason=_reason(request)
        )
    except RegradeRefused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(
            request, "Sent to the grader again; the report it replaces is kept under Regrades."
        )
    url = reverse("instructor-review", args=[cohort.pk, target.pk])
    return redirect(f"{url}#regrades")


@instructor_required
@require_POST
def regrade_lab(request: HttpRequest, pk: int, slug: str) -> HttpResponse:
    cohort = _cohort(request, pk)
    lab = get_object_or_404(Lab, slug=slug, active=True)
    try:
        batch = services.regrade_lab(
            cohort=cohort, lab=lab, by=request.user, reason=_reason(request)
        )
    except RegradeRefused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(
            request,
            f"Regrading {batch.count} submission{'s' if batch.count != 1 else ''} of "
            f"{lab.title} (any still queued or running were left alone).",
        )
    return redirect(f"{reverse('instructor-cohort', args=[cohort.pk])}#regrades")


# --- Feedback --------------------------------------------------------------------------------


@instructor_required
@require_POST
def feedback(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = _cohort(request, pk)
    target = _reviewable(cohort, submission)
    form = FeedbackForm(request.POST, submission=target)
    if not form.is_valid():
        return _review_page(request, cohort, target, feedback_form=form, status=400)
    saved = services.save_feedback(
        submission=target,
        comment=form.cleaned_data["comment"],
        by=request.user,
        save_as_template=form.cleaned_data["save_as_template"],
    )
    if saved.released:
        messages.success(request, "Comment saved. Its feedback is released: the learner sees it.")
    else:
        messages.success(request, "Comment saved. The learner sees it once you release it.")
    url = reverse("instructor-review", args=[cohort.pk, target.pk])
    return redirect(f"{url}#feedback")


@instructor_required
@require_POST
def release(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = _cohort(request, pk)
    target = _reviewable(cohort, submission)
    released = services.release_feedback(
        submissions=cohort.submissions().filter(pk=target.pk), by=request.user, cohort=cohort
    )
    if released:
        messages.success(request, "Released: the learner now sees the comment and any override.")
    else:
        messages.error(request, "Nothing to release: write a comment or override first.")
    url = reverse("instructor-review", args=[cohort.pk, target.pk])
    return redirect(f"{url}#feedback")


@instructor_required
@require_POST
def release_lab(request: HttpRequest, pk: int, slug: str) -> HttpResponse:
    cohort = _cohort(request, pk)
    lab = get_object_or_404(Lab, slug=slug, active=True)
    released = services.release_feedback(
        submissions=cohort.submissions().filter(lab=lab), by=request.user, cohort=cohort
    )
    messages.success(
        request,
        f"Released feedback on {released} submission{'s' if released != 1 else ''} of {lab.title}."
        if released
        else f"Nothing to release in {lab.title}: no submission "
        "has an unreleased comment or override.",
    )
    return redirect(f"{reverse('instructor-cohort', args=[cohort.pk])}#labs")
