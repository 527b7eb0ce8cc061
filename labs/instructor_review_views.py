"""The submission review and what an instructor does there: override the final status,
regrade, write a comment, score the rubric, release feedback to the learner. Access rules:
labs/instructor_access.py.

Rubric scores save in place with htmx (the item's form, the total and the audit trail are
swapped; the learner's answer beside them is not, it never travels through htmx) and fall
back to a plain form POST that returns to the page.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_POST

from labs import services
from labs.forms import REASON_MAX, FeedbackForm, OverrideForm, RubricScoreForm
from labs.instructor_access import instructor_required, taught_cohort
from labs.models import Cohort, Feedback, Submission
from labs.regrades import regrade_history
from labs.rubric import (
    RubricRefused,
    RubricRow,
    RubricScore,
    rubric_rows,
    score_rubric_item,
    total_of,
)
from labs.services import GRADER_VERDICT, OverrideRefused, RegradeRefused, override_grade

REVIEW = "labs/instructor/review.html"


def _reviewable(cohort: Cohort, pk) -> Submission:
    queryset = cohort.submissions().select_related("lab", "override__by")
    return get_object_or_404(queryset, pk=pk)


def _review_url(cohort: Cohort, submission: Submission, anchor: str) -> str:
    return f"{reverse('instructor-review', args=[cohort.pk, submission.pk])}#{anchor}"


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


def _rubric(submission: Submission, forms: dict[str, RubricScoreForm]) -> list[RubricRow]:
    """The rubric rows with a form each: a bound form that failed keeps what was typed."""
    rows = rubric_rows(submission, with_answers=True)
    for row in rows:
        row.form = forms.get(row.name) or RubricScoreForm(
            item=row.item, submission=submission, score=row.score
        )
    return rows


def _review_page(
    request,
    cohort: Cohort,
    submission: Submission,
    *,
    form=None,
    feedback_form=None,
    rubric_forms=None,
    status=200,
):
    member = cohort.memberships.current().get(learner_key=submission.learner_key)
    attempts = list(submission.attempts().light())
    history = [
        (attempt, attempt.changes_since(previous))
        for previous, attempt in zip([None, *attempts], attempts, strict=False)
    ]
    report = submission.report or {}
    metrics = submission.metrics
    rubric = _rubric(submission, rubric_forms or {})
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
        "rubric": rubric,
        "rubric_total": total_of(rubric, submission.lab),
    }
    return render(request, REVIEW, ctx, status=status)


@instructor_required
def review(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    return _review_page(request, cohort, _reviewable(cohort, submission))


@instructor_required
@require_POST
def override(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = taught_cohort(request, pk)
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
            return redirect(_review_url(cohort, target, "audit"))
    return _review_page(request, cohort, target, form=form, status=400)


@instructor_required
@require_POST
def regrade(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    target = _reviewable(cohort, submission)
    reason = request.POST.get("reason", "").strip()[:REASON_MAX]
    try:
        services.regrade_submission(
            submission=target, by=request.user, cohort=cohort, reason=reason
        )
    except RegradeRefused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(
            request,
            "Sent to the grader again; the report it replaces is kept under Regrades. "
            "Overrides, comments and rubric scores stay.",
        )
    return redirect(_review_url(cohort, target, "regrades"))


# --- Feedback: comments, rubric scores, release ------------------------------------------


@instructor_required
@require_POST
def feedback(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    target = _reviewable(cohort, submission)
    form = FeedbackForm(request.POST, submission=target)
    if not form.is_valid():
        return _review_page(request, cohort, target, feedback_form=form, status=400)
    saved = services.save_feedback(
        submission=target,
        comment=form.cleaned_data["comment"],
        by=request.user,
        save_as_template=form.cleaned_data["save_as_template"],
        cohort=cohort,
    )
    if saved.released:
        messages.success(
            request,
            "Comment saved. Its feedback is released: the learner sees it (the change is in "
            "the audit trail).",
        )
    else:
        messages.success(request, "Comment saved. The learner sees it once you release it.")
    return redirect(_review_url(cohort, target, "feedback"))


def _rubric_fragment(request, cohort: Cohort, submission: Submission, form, *, saved: str):
    """What htmx swaps after a save: the item's form, and out of band the total and the audit
    trail. 200 even when the form has errors, so that htmx swaps them in (it leaves 4xx
    responses unswapped); the fragment says what went wrong beside the field."""
    rows = _rubric(submission, {form.item["name"]: form})
    row = next(row for row in rows if row.name == form.item["name"])
    ctx = {
        "cohort": cohort,
        "submission": submission,
        "row": row,
        "saved": saved,
        "rubric_total": total_of(rows, submission.lab),
        "audit": submission.audit.all(),
        "oob": True,
    }
    body = "".join(
        render_to_string(f"{REVIEW}#{part}", ctx, request=request)
        for part in ("rubric-score", "rubric-total", "audit")
    )
    return HttpResponse(body)


@instructor_required
@require_POST
def rubric_score(request: HttpRequest, pk: int, submission, item: str) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    target = _reviewable(cohort, submission)
    declared = target.lab.rubric_item(item)
    if declared is None:
        raise Http404("No such rubric item.")
    score = RubricScore.objects.filter(submission=target, item=item).first()
    form = RubricScoreForm(request.POST, item=declared, submission=target, score=score)
    saved = ""
    if form.is_valid():
        data = form.cleaned_data
        try:
            entries = score_rubric_item(
                submission=target, item=item, points=data["points"], comment=data["comment"],
                by=request.user, cohort=cohort,
            )  # fmt: skip
        except RubricRefused as refused:
            form.add_error(None, refused.message)
        else:
            if data["save_as_template"] and data["comment"]:
                target.lab.comment_templates.get_or_create(
                    rubric_item=item, text=data["comment"], defaults={"by": request.user}
                )
            saved = "Saved." if entries else "Nothing changed."
            form = None  # show the stored score, not the request's
    if request.htmx:
        if form is None:
            score = RubricScore.objects.filter(submission=target, item=item).first()
            form = RubricScoreForm(item=declared, submission=target, score=score)
        return _rubric_fragment(request, cohort, target, form, saved=saved)
    if saved:
        messages.success(request, f"{declared['title']}: {saved}")
        return redirect(_review_url(cohort, target, f"rubric-{item}"))
    return _review_page(request, cohort, target, rubric_forms={item: form}, status=400)


@instructor_required
@require_POST
def release(request: HttpRequest, pk: int, submission) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    target = _reviewable(cohort, submission)
    released = services.release_feedback(
        submissions=cohort.submissions().filter(pk=target.pk), by=request.user, cohort=cohort
    )
    if released:
        messages.success(
            request,
            "Released: the learner now sees the comment, the rubric scores and any override.",
        )
    else:
        messages.error(
            request, "Nothing to release: write a comment, score the rubric or override first."
        )
    return redirect(_review_url(cohort, target, "feedback"))
