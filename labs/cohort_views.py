"""The learner's side of cohorts: join with a code and a display name, see one's cohorts,
leave. Learners have no account; the learner key their browser keeps identifies them, sent
in a hidden form field (as the lab page's upload form does) or an X-Learner-Key header."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from labs.forms import JoinCohortForm
from labs.models import Membership
from labs.services import LEARNER_KEY


def _header_key(request: HttpRequest) -> str:
    key = request.headers.get("X-Learner-Key", "").strip().lower()
    return key if LEARNER_KEY.match(key) else ""


def join(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        form = JoinCohortForm(initial={"code": request.GET.get("code", "")[:40]})
        return render(request, "labs/cohort_join.html", {"form": form})
    form = JoinCohortForm(request.POST)
    if not form.is_valid():
        return render(request, "labs/cohort_join.html", {"form": form}, status=400)
    membership = form.cohort.join(
        learner_key=form.cleaned_data["learner"],
        display_name=form.cleaned_data["display_name"],
    )
    messages.success(
        request, f"You are in {membership.cohort.name} as “{membership.display_name}”."
    )
    return redirect("cohorts")


def my_cohorts(request: HttpRequest) -> HttpResponse:
    if not request.htmx:
        return render(request, "labs/cohorts.html")
    return _cohort_list(request, _header_key(request))


def _cohort_list(request: HttpRequest, key: str, *, left: Membership | None = None):
    memberships = []
    if key:
        memberships = Membership.objects.for_learner(key).current().select_related("cohort")
    ctx = {"memberships": memberships, "left": left}
    return render(request, "labs/cohorts.html#list", ctx)


@require_POST
def leave(request: HttpRequest, pk: int) -> HttpResponse:
    """htmx only (the key lives in the browser); answers with the updated list."""
    key = _header_key(request)
    if not key:
        return HttpResponse("Send your learner key in the X-Learner-Key header.", status=400)
    membership = get_object_or_404(Membership.objects.for_learner(key).current(), pk=pk)
    membership.leave()
    return _cohort_list(request, key, left=membership)
