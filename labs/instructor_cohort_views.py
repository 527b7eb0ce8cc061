"""Instructor pages that manage a cohort: the instructor's cohorts, a cohort's page (join code,
members, instructors) and the actions on a whole lab of the cohort (regrade all, which asks
for confirmation first, and release all feedback). Access rules: labs/instructor_access.py."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from labs import services
from labs.forms import REASON_MAX, AddInstructorForm, CohortForm
from labs.instructor_access import POLL_SECONDS, instructor_required, taught_cohort
from labs.models import ACTIVE, FINAL, Cohort, Lab
from labs.services import RegradeRefused

BATCHES_SHOWN = 5
# The value of the confirmation page's hidden field: without it a POST regrades nothing.
CONFIRMED = "yes"


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
    return _cohort_page(request, taught_cohort(request, pk))


@instructor_required
@require_POST
def member_remove(request: HttpRequest, pk: int, member: int) -> HttpResponse:
    cohort = taught_cohort(request, pk)
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
    cohort = taught_cohort(request, pk)
    code = cohort.new_join_code()
    messages.success(request, f"The join code is now {code}; the old one no longer works.")
    return redirect("instructor-cohort", pk=cohort.pk)


@instructor_required
@require_POST
def instructor_add(request: HttpRequest, pk: int) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    form = AddInstructorForm(request.POST)
    if not form.is_valid():
        return _cohort_page(request, cohort, add_form=form, status=400)
    cohort.instructors.add(form.user)
    messages.success(request, f"{form.user.get_username()} now teaches {cohort.name}.")
    return redirect("instructor-cohort", pk=cohort.pk)


# --- Actions on a whole lab of the cohort ------------------------------------------------


@instructor_required
@require_http_methods(["GET", "POST"])
def regrade_lab(request: HttpRequest, pk: int, slug: str) -> HttpResponse:
    """GET: the confirmation page (how many submissions it would send, and what stays).
    POST with the confirmation field: regrade. A POST without it (a stray or replayed form)
    regrades nothing and shows the confirmation page."""
    cohort = taught_cohort(request, pk)
    lab = get_object_or_404(Lab, slug=slug, active=True)
    if request.method == "POST" and request.POST.get("confirm") == CONFIRMED:
        reason = request.POST.get("reason", "").strip()[:REASON_MAX]
        try:
            batch = services.regrade_lab(cohort=cohort, lab=lab, by=request.user, reason=reason)
        except RegradeRefused as refused:
            messages.error(request, refused.message)
        else:
            messages.success(
                request,
                f"Regrading {batch.count} submission{'s' if batch.count != 1 else ''} of "
                f"{lab.title} (any still queued or running were left alone).",
            )
        return redirect(f"{reverse('instructor-cohort', args=[cohort.pk])}#regrades")
    submissions = cohort.submissions().filter(lab=lab)
    ctx = {
        "cohort": cohort,
        "lab": lab,
        "finished": submissions.filter(status__in=FINAL).count(),
        "active": submissions.filter(status__in=ACTIVE).count(),
        "confirmed": CONFIRMED,
        "unconfirmed_post": request.method == "POST",
    }
    return render(request, "labs/instructor/regrade_confirm.html", ctx)


@instructor_required
@require_POST
def release_lab(request: HttpRequest, pk: int, slug: str) -> HttpResponse:
    cohort = taught_cohort(request, pk)
    lab = get_object_or_404(Lab, slug=slug, active=True)
    released = services.release_feedback(
        submissions=cohort.submissions().filter(lab=lab), by=request.user, cohort=cohort
    )
    messages.success(
        request,
        f"Released feedback on {released} submission{'s' if released != 1 else ''} of {lab.title}."
        if released
        else f"Nothing to release in {lab.title}: no submission "
        "has an unreleased comment, rubric score or override.",
    )
    return redirect(f"{reverse('instructor-cohort', args=[cohort.pk])}#labs")
