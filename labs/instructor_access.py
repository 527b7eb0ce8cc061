"""Who may use the instructor pages, shared by every instructor view module:
labs/instructor_cohort_views.py (cohorts, members, per-lab regrades and releases),
labs/instructor_gradebook_views.py (gradebook, analytics, CSV exports) and
labs/instructor_review_views.py (the submission review: overrides, regrades, comments,
rubric scores, release).

Every page needs a staff account that teaches the cohort: an anonymous visitor is sent to
the login page, a signed-in account without staff status gets 403, and a staff user who does
not teach the cohort gets 404 (whether it exists is not theirs to know). A submission is
reached only through a cohort its learner is a current member of.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django_htmx.http import HttpResponseClientRedirect

from labs.models import Cohort

# How often the live fragments (gradebook, regrade progress) refresh themselves.
POLL_SECONDS = 5


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


def taught_cohort(request: HttpRequest, pk: int) -> Cohort:
    """The cohort, if the signed-in instructor teaches it; 404 otherwise."""
    return get_object_or_404(Cohort.objects.taught_by(request.user), pk=pk)
